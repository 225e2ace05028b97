"""The rule steps of the compiled loop, one small function each, over the loop's records
(`curator.select.loop_data`): gather an item's neighbours, then the hash copy, caption, label,
gain, duplicate, insert and budget steps. Each step reads the scores it needs, asks the verdict of
`curator.select.rules` (the same compiled functions the plain-Python oracle in the tests calls), and
writes its results and evidence; `curator.select.kernel` only orders them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

import curator.select.rules as rules
from curator.select.codes import (
    AGR_BINS,
    ALIGN_ADAPTIVE,
    ALIGN_BOOTSTRAP,
    CLEAN_ALIGN,
    CLEAN_ALIGN2,
    CLEAN_PAIRS,
    DROPPED_DUPLICATE,
    DROPPED_NOISY,
    DUP_HASHED,
    KEPT,
    RECAP_ACCEPTED,
    RECAP_UNKNOWN,
    RECAPTIONED,
    RELABELLED,
    RULE_NEAR,
    STREAM_ALIGN,
    STREAM_LOW,
    STREAM_PAIRS,
    STREAM_VOTES,
    UNJUDGED_CALIBRATING,
    WHY_HASH,
)
from curator.select.loop_data import (
    G_COUNT,
    G_SUM,
    USED,
    LoopBatch,
    LoopSettings,
    LoopState,
    Neighbours,
    Scores,
)
from curator.select.sketch import CUR_N, cursor_add, cursor_edge, nn_add, nn_bin, sketch_bin

#: caption_step's answer when the recaption hook must be asked first
WAIT = -1


@njit(cache=True, inline="always")
def merge(b: LoopBatch, run: LoopState, nb: Neighbours, m: int, i: int) -> int:
    """Item i's k nearest accepted items in modality m: the index's (nearest first, as searched),
    then the batch's earlier accepted ones inserted after every equal or nearer one -- a stable sort
    of the two lists. Returns how many."""
    k, out_s, out_l, out_src, out_row = b.k, nb.sims[m], nb.labels[m], nb.src[m], nb.row[m]
    isims, ilab, irow, gram, acc, vote_label = b.isims[m, i], b.ilab[m, i], b.irow[m, i], b.gram[m, i], run.acc[m], \
        run.vote_label  # (locals: a record's field read inside the loops costs a reference count each time)
    cnt = 0
    for j in range(isims.shape[0]):
        if irow[j] >= 0 and cnt < k:
            out_s[cnt], out_l[cnt], out_src[cnt], out_row[cnt] = isims[j], ilab[j], 0, irow[j]
            cnt += 1
    for t in range(run.n_acc[m]):
        a = acc[t]
        s = gram[a]
        if not s > -np.inf or (cnt == k and not s > out_s[k - 1]):
            continue  # (-inf: on a shard this item does not probe)
        p = cnt if cnt < k else k - 1
        while p > 0 and out_s[p - 1] < s:
            p -= 1
        last = cnt if cnt < k else k - 1
        for q in range(last, p, -1):
            out_s[q], out_l[q], out_src[q], out_row[q] = out_s[q - 1], out_l[q - 1], out_src[q - 1], out_row[q - 1]
        out_s[p], out_l[p], out_src[p], out_row[p] = s, vote_label[a], 1, a
        if cnt < k:
            cnt += 1
    return cnt


@njit(cache=True, inline="always")
def gather(i: int, b: LoopBatch, run: LoopState, nb: Neighbours) -> None:
    """Item i's neighbour lists, per modality it has (cnt -1: it lacks the modality)."""
    for m in range(2):
        nb.cnt[m] = -1
        if b.present[m] and b.has[m, i]:
            nb.cnt[m] = merge(b, run, nb, m, i)


@njit(cache=True, inline="always")
def hash_match(i: int, b: LoopBatch, inserted: np.ndarray) -> tuple[int, int, int, int]:
    """Item i's match under the hash rules (`curator.select.hashdup`): (rule, distance, dup_src,
    dup_row) of the table's match or of an earlier row of the batch that was accepted; exact before
    near, then the nearest, then the earliest (rule 0: none)."""
    rule, dist, src, row = b.h_rule[i], b.h_dist[i], DUP_HASHED, b.h_row[i]
    for c in range(b.cptr[i], b.cptr[i + 1]):
        j = b.crow[c]
        if not inserted[j]:
            continue
        r, d = b.crule[c], b.cdist[c]
        if rule == 0 or (rule == RULE_NEAR and (r != RULE_NEAR or d < dist)):
            rule, dist, src, row = r, d, 1, j
    return rule, dist, src, row


@njit(cache=True, inline="always")
def hash_step(i: int, b: LoopBatch, st: LoopSettings, run: LoopState, out: Scores) -> bool:
    """0) A copy of an accepted item by its hashes is dropped before any other rule sees it."""
    r, d, src, row = hash_match(i, b, run.inserted)
    if r == RULE_NEAR and not st.near_ok:
        return False  # distinct pictures crowd the perceptual cut in these data (InfoGrowthSelector.near_ok)
    if r == 0:
        return False
    out.decision[i], out.why[i] = DROPPED_DUPLICATE, WHY_HASH
    out.dup_src[i], out.dup_row[i], out.hash_rule[i], out.hash_dist[i] = src, row, r, d
    return True


@njit(cache=True, inline="always")
def caption_threshold(st: LoopSettings, align_cur: np.ndarray, judged: bool, bins: int) -> float:
    """The caption threshold in force: configured or calibrated, the bootstrap's quantile, or the
    stream's adaptive quantile once judged and warmed up."""
    if st.align_mode == ALIGN_BOOTSTRAP and st.boot_threshold == st.boot_threshold:  # (NaN: no trusted pair)
        return st.boot_threshold
    n = align_cur[CUR_N]
    if st.align_mode == ALIGN_ADAPTIVE and judged and n >= st.align_warmup and n > 0:
        return cursor_edge(align_cur, st.align_lo, st.align_hi, bins)
    return st.align_threshold


@njit(cache=True, inline="always")
def caption_step(i: int, b: LoopBatch, st: LoopSettings, run: LoopState, out: Scores, align_cur: np.ndarray,
                 judged: bool) -> int:
    """1) Caption alignment of a stream pair: KEPT, RECAPTIONED, DROPPED_NOISY, or WAIT to ask the hook."""
    bins = run.align_counts.shape[0]
    thr = caption_threshold(st, align_cur, judged, bins)
    dec = KEPT
    if rules.misaligned(b.align[i], thr):
        if st.has_hook and out.recap[i] == RECAP_UNKNOWN:
            out.thr[i] = thr
            return WAIT  # nothing of item i was touched: the loop comes back to it
        if out.recap[i] == RECAP_ACCEPTED:
            dec = RECAPTIONED
            out.recap_note[i] = True
        else:
            dec = DROPPED_NOISY
    out.thr[i] = thr
    run.ev_sums[STREAM_ALIGN] += b.align[i]  # evidence: the stream's mean alignment (before any recaption)
    run.ev_sums[STREAM_PAIRS] += 1.0
    cursor_add(run.align_counts, st.align_drop_quantile, align_cur, sketch_bin(b.align[i], st.align_lo,
                                                                              st.align_hi, bins))
    return dec


@njit(cache=True, inline="always")
def caption_evidence(i: int, b: LoopBatch, run: LoopState) -> None:
    """What a right caption scores (a pair taken as right: trusted, not judged yet, or collected),
    and what the previous item's caption scores against this image (a mismatched pair)."""
    a = b.align[i]
    run.ev_sums[CLEAN_ALIGN] += a
    run.ev_sums[CLEAN_ALIGN2] += a * a
    run.ev_sums[CLEAN_PAIRS] += 1.0
    if b.cross_ok[i]:
        run.ev_cross[0] += b.cross[i]
        run.ev_cross[1] += b.cross[i] * b.cross[i]
        run.ev_cross[2] += 1.0


@njit(cache=True, inline="always")
def label_step(i: int, b: LoopBatch, st: LoopSettings, run: LoopState, out: Scores, nb: Neighbours,
               judged: bool, dec: int) -> int:
    """1b) The label against its neighbours' vote: the decision after the label rule (DROPPED_NOISY
    from a kept item: dropped for its label)."""
    p = b.prim
    voted, agr, bst, shr = rules.label_vote(nb.sims[p], nb.labels[p], min(st.k_label, nb.cnt[p]), b.labels_in[i],
                                            st.temperature)
    if not voted:
        return dec
    out.agreement[i], out.best[i], out.share[i] = agr, bst, shr
    if not judged or b.trusted:
        return dec
    if math.isnan(st.tau_noise):  # the label thresholds are not calibrated yet
        out.unjudged[i] = True
        out.n_trusted[i] = UNJUDGED_CALIBRATING
        return dec
    if dec == DROPPED_NOISY:
        return dec
    if sketch_bin(agr, 0.0, 1.0, AGR_BINS) == 0:  # evidence: how often labels find no support
        run.ev_sums[STREAM_LOW] += 1.0
    run.ev_sums[STREAM_VOTES] += 1.0
    out.nn_dist[i] = 1.0 - nb.sims[p, 0]
    verdict = rules.label_rule(agr, bst, shr, b.labels_in[i], st.tau_noise, st.tau_relabel, st.relabel,
                               out.nn_dist[i], st.relabel_radius)
    out.label_noisy[i] = 0 if verdict == rules.LABEL_OK else 1
    if verdict == rules.LABEL_RELABEL:
        run.label_out[i] = bst
        run.vote_label[i] = -1  # a corrected label never votes
        out.relabel_note[i] = True
        return RELABELLED if dec == KEPT else dec
    if verdict == rules.LABEL_ABSTAIN and agr >= st.tau_drop:  # weak: kept, flagged
        run.vote_label[i] = -1  # a doubted label never votes either
        out.abstain_note[i] = True
        return dec
    if verdict != rules.LABEL_OK:
        out.abstain_note[i] = verdict == rules.LABEL_ABSTAIN
        return DROPPED_NOISY
    return dec


@njit(cache=True, inline="always")
def gain_step(i: int, st: LoopSettings, out: Scores, nb: Neighbours) -> bool:
    """2) Gain per modality the item has, averaged; False when it has none."""
    total, cnt_m = 0.0, 0
    for m in range(2):
        if nb.cnt[m] >= 0:
            out.gain_m[m, i] = rules.gain_of(nb.sims[m], nb.cnt[m], st.k_gain)
            total += out.gain_m[m, i]
            cnt_m += 1
    if cnt_m:
        out.gain[i] = total / cnt_m
    return cnt_m > 0


@njit(cache=True, inline="always")
def duplicate_step(i: int, b: LoopBatch, st: LoopSettings, out: Scores, nb: Neighbours) -> bool:
    """3) A near-duplicate of its nearest accepted item in the dedup modality."""
    d = b.dmod
    if d < 0 or nb.cnt[d] <= 0:
        return False
    out.max_sim[i] = nb.sims[d, 0]
    if not rules.duplicate(out.max_sim[i], st.eps_dup):
        return False
    out.dup_src[i], out.dup_row[i] = nb.src[d, 0], nb.row[d, 0]
    return True


@njit(cache=True, inline="always")
def insert_step(i: int, b: LoopBatch, st: LoopSettings, run: LoopState, out: Scores, nb: Neighbours,
                gain_cur: np.ndarray) -> None:
    """4) Every clean, non-duplicate item is accepted: its normalised gain, the sketches and
    evidence, and its row among the batch's accepted ones (what later items see as neighbours)."""
    if b.dmod >= 0 and nb.cnt[b.dmod] > 0:  # evidence: how far distinct items sit from their nearest
        nn_add(run.ev_nn, run.ev_nn_meta, nn_bin(out.max_sim[i], st.nn_lo, st.nn_hi, run.ev_nn.shape[1]),
               st.nn_window)
    bins = run.gain_counts.shape[0]
    q = cursor_edge(gain_cur, st.gain_lo, st.gain_hi, bins)
    out.gain_norm[i] = rules.normalised_gain(out.gain[i], gain_cur[CUR_N] > 0, q)
    cursor_add(run.gain_counts, st.gain_quantile, gain_cur, sketch_bin(out.gain[i], st.gain_lo, st.gain_hi, bins))
    run.tally[G_SUM] += out.gain_norm[i]
    run.tally[G_COUNT] += 1
    run.inserted[i] = True
    for m in range(2):
        if b.present[m] and b.has[m, i]:
            run.acc[m, run.n_acc[m]] = i
            run.n_acc[m] += 1


@njit(cache=True, inline="always")
def budget_step(i: int, st: LoopSettings, run: LoopState, out: Scores) -> bool:
    """5) Under a storage budget, an accepted stream item is kept with a probability that grows with
    its gain against the mean; True when it is dropped."""
    out.keep_prob[i] = rules.keep_probability(out.gain_norm[i], run.tally[G_SUM] / run.tally[G_COUNT], st.keep_rate)
    used = int(run.tally[USED])
    run.tally[USED] = used + 1
    return run.uniforms[used] >= out.keep_prob[i]

