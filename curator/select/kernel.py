"""The per-item loop of the selector, compiled: what depends on the earlier items of the batch.

Everything that does not depend on earlier items of the batch is array work done once per batch
(`curator.select.selector`): the index search, the in-batch similarities, the alignments. What is
left is sequential by nature -- an item's neighbours include the batch's earlier *accepted* items,
and the quantile sketches, the budget's mean and its RNG move item by item -- and runs here, over
plain arrays, calling the rules of `curator.select.rules` in the order the spec gives.

The loop stops before an item whose caption needs a recaption (a Python hook): the selector asks
the hook, fills in `recap`, and calls it again from that item; nothing of that item was touched.
It also stops at `stop`, where the selector recalibrates its 'auto' thresholds
(`curator.select.calibrate`) from the evidence arrays this loop fills in item by item.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

import curator.select.rules as rules
from curator.select.codes import (  # noqa: F401 - the codes are the kernel's vocabulary (kern.KEPT, ...)
    AGR_BINS,
    ALIGN_ADAPTIVE,
    ALIGN_BOOTSTRAP,
    ALIGN_FIXED,
    ALIGN_OFF,
    CLEAN_AGR,
    CLEAN_ALIGN,
    CLEAN_ALIGN2,
    CLEAN_PAIRS,
    CLEAN_VOTES,
    DROPPED_BY_BUDGET,
    DROPPED_DUPLICATE,
    DROPPED_NOISY,
    DUP_HASHED,
    KEPT,
    RECAP_ACCEPTED,
    RECAP_NONE,
    RECAP_REJECTED,
    RECAP_UNKNOWN,
    RECAPTIONED,
    RELABELLED,
    RULE_NEAR,
    STREAM_ALIGN,
    STREAM_LOW,
    STREAM_PAIRS,
    STREAM_VOTES,
    UNJUDGED_CALIBRATING,
    WHY_BUDGET,
    WHY_DUPLICATE,
    WHY_HASH,
    WHY_LABEL,
    WHY_MISALIGNED,
    WHY_NONE,
)


@njit(cache=True)
def nn_bin(max_sim: float, lo: float, hi: float, bins: int) -> int:
    """The bin of log10(1 - max_sim) in the nearest-neighbour distance sketch (distance 0: bin 0)."""
    d = 1.0 - max_sim
    if not d > 0.0:
        return 0
    return sketch_bin(math.log10(d), lo, hi, bins)


@njit(cache=True)
def nn_add(nn: np.ndarray, meta: np.ndarray, b: int, window: int) -> None:
    """One accepted item's distance into the windowed sketch: two buckets, the older cleared and
    reused when the newer holds `window` items (so it covers the last window..2*window items)."""
    cur = meta[0]
    nn[cur, b] += 1
    meta[1] += 1
    if meta[1] >= window:
        cur = 1 - cur
        nn[cur, :] = 0
        meta[0], meta[1] = cur, 0


@njit(cache=True)
def sketch_bin(v: float, lo: float, hi: float, bins: int) -> int:
    """The bin of `v` in a `curator.select.sketch.StreamingQuantile` (same arithmetic)."""
    b = int(math.floor((v - lo) / (hi - lo) * bins))
    return min(max(b, 0), bins - 1)


@njit(cache=True)
def _locate(counts: np.ndarray, n: int, q: float) -> tuple[int, int]:
    """(bin, cumulative count through it) of the q-quantile's rank: the first bin whose cumulative
    count reaches max(1, ceil(q * n))."""
    rank = max(1, int(math.ceil(q * n)))
    c = 0
    for b in range(counts.shape[0]):
        c += counts[b]
        if c >= rank:
            return b, c
    return counts.shape[0] - 1, c


@njit(cache=True)
def _relocate(counts: np.ndarray, n: int, q: float, b: int, cum: int) -> tuple[int, int]:
    """`_locate` after one more value, in O(1) amortised: the rank moved by at most one bin's worth."""
    rank = max(1, int(math.ceil(q * n)))
    while b > 0 and cum - counts[b] >= rank:
        cum -= counts[b]
        b -= 1
    while cum < rank and b < counts.shape[0] - 1:
        b += 1
        cum += counts[b]
    return b, cum


@njit(cache=True)
def _merge(isims: np.ndarray, ilab: np.ndarray, irow: np.ndarray, i: int, k: int, gram: np.ndarray,
           acc: np.ndarray, n_acc: int, vote_label: np.ndarray, out_s: np.ndarray, out_l: np.ndarray,
           out_src: np.ndarray, out_row: np.ndarray) -> int:
    """Item i's k nearest accepted items: the index's (nearest first, as searched), then the batch's
    earlier accepted ones inserted after every equal or nearer one -- a stable sort of the two lists."""
    cnt = 0
    for j in range(isims.shape[1]):
        if irow[i, j] >= 0 and cnt < k:
            out_s[cnt], out_l[cnt], out_src[cnt], out_row[cnt] = isims[i, j], ilab[i, j], 0, irow[i, j]
            cnt += 1
    for t in range(n_acc):
        a = acc[t]
        s = gram[i, a]
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


@njit(cache=True)
def hash_match(i: int, h_rule: np.ndarray, h_dist: np.ndarray, h_row: np.ndarray, cptr: np.ndarray,
               crow: np.ndarray, crule: np.ndarray, cdist: np.ndarray, inserted: np.ndarray) -> tuple[int, int, int, int]:
    """Item i's match under the hash rules (`curator.select.hashdup`): (rule, distance, dup_src, dup_row) of
    the table's match or of an earlier row of the batch that was accepted; exact before near, then the
    nearest, then the earliest (rule 0: none)."""
    rule, dist, src, row = h_rule[i], h_dist[i], DUP_HASHED, h_row[i]
    for c in range(cptr[i], cptr[i + 1]):
        j = crow[c]
        if not inserted[j]:
            continue
        r, d = crule[c], cdist[c]
        if rule == 0 or (rule == RULE_NEAR and (r != RULE_NEAR or d < dist)):
            rule, dist, src, row = r, d, 1, j
    return rule, dist, src, row


@njit(cache=True)
def resolve(start: int, trusted: bool, k: int, prim: int, dmod: int, present: np.ndarray, has: np.ndarray,
            isims: np.ndarray, ilab: np.ndarray, irow: np.ndarray, gram: np.ndarray, n_index: np.ndarray,
            labels_in: np.ndarray, vote_label: np.ndarray, label_out: np.ndarray, pair: np.ndarray,
            align: np.ndarray, recap: np.ndarray, align_out: np.ndarray, has_hook: bool,
            ip: np.ndarray, fp: np.ndarray, gain_counts: np.ndarray, align_counts: np.ndarray,
            boot_counts: np.ndarray, acc: np.ndarray, n_acc: np.ndarray, state: np.ndarray, uniforms: np.ndarray,
            decision: np.ndarray, why: np.ndarray, label_noisy: np.ndarray, agreement: np.ndarray,
            best: np.ndarray, share: np.ndarray, thr_out: np.ndarray, gain_m: np.ndarray, gain: np.ndarray,
            gain_norm: np.ndarray, max_sim: np.ndarray, dup_src: np.ndarray, dup_row: np.ndarray,
            keep_prob: np.ndarray, unjudged: np.ndarray, n_trusted_out: np.ndarray, relabel_note: np.ndarray,
            recap_note: np.ndarray, stop: int, ev_nn: np.ndarray, ev_nn_meta: np.ndarray, ev_sums: np.ndarray,
            abstain_note: np.ndarray, cross: np.ndarray, cross_ok: np.ndarray, ev_cross: np.ndarray,
            nn_dist: np.ndarray, h_rule: np.ndarray, h_dist: np.ndarray, h_row: np.ndarray, cptr: np.ndarray,
            crow: np.ndarray, crule: np.ndarray, cdist: np.ndarray, inserted: np.ndarray, hash_rule: np.ndarray,
            hash_dist: np.ndarray) -> int:
    """Decide items start..stop-1 in order; returns stop, or the item that waits for a recaption.

    ip = (k_gain, k_label, min_trusted, align_mode, align_warmup, relabel, keep_rate > 0, nn window,
          collect pairs) -- the last: accepted pairs still count as right-caption evidence
          (`InfoGrowthSelector.collecting`; right-label evidence is the selector's leave-one-out votes)
    fp = (tau_noise, tau_relabel, temperature, eps_dup, gain_quantile, keep_rate, align_threshold,
          align_drop_quantile, bootstrap threshold, gain lo, gain hi, align lo, align hi, relabel radius,
          nn lo, nn hi, tau_drop, perceptual rule on) -- a NaN tau_noise leaves labels unjudged, a NaN align_threshold captions;
          a flagged label without a confident correction is dropped below tau_drop, kept flagged above.
    ev_* = the calibration evidence (curator.select.calibrate.Evidence), updated in place; cross[i] is
    item i's image against the previous item's caption (valid where cross_ok): a mismatched pair.
    state = (g_sum, g_count, uniforms used) -- updated in place. `uniforms` are the budget's draws,
    taken in order (a numpy Generator is not passed in: cached compiled code must not hold its address).
    h_* and c* = the batch's hash matches (`curator.select.hashdup.BatchHashes`); `inserted` marks the
    batch's accepted rows (updated in place); hash_rule, hash_dist = the rule that fired, per item.
    """
    k_gain, k_label, min_trusted, align_mode, warmup, relabel, budget = ip[0], ip[1], ip[2], ip[3], ip[4], \
        ip[5] != 0, ip[6] != 0
    tau_noise, tau_relabel, temp, eps_dup, gq, keep_rate = fp[0], fp[1], fp[2], fp[3], fp[4], fp[5]
    align_fixed, align_dq, boot_thr, g_lo, g_hi, a_lo, a_hi = fp[6], fp[7], fp[8], fp[9], fp[10], fp[11], fp[12]
    radius, nn_lo, nn_hi, tau_drop, near_ok = fp[13], fp[14], fp[15], fp[16], fp[17] != 0.0
    window = ip[7]
    collect_pairs = ip[8] != 0
    label_ready = tau_noise == tau_noise
    gbins, abins = gain_counts.shape[0], align_counts.shape[0]
    nbins, agbins = ev_nn.shape[1], AGR_BINS
    g_n, a_n = int(gain_counts.sum()), int(align_counts.sum())
    gb, gcum = _locate(gain_counts, g_n, gq)
    ab, acum = _locate(align_counts, a_n, align_dq)
    g_sum, g_count, used = state[0], state[1], int(state[2])
    nb_s = np.empty((2, k), np.float32)
    nb_l = np.empty((2, k), np.int64)
    nb_src = np.empty((2, k), np.int8)
    nb_row = np.empty((2, k), np.int64)
    nb_cnt = np.zeros(2, np.int64)
    for i in range(start, stop):
        for m in range(2):
            nb_cnt[m] = -1  # no neighbour list: the item lacks the modality
            if present[m] and has[m, i]:
                nb_cnt[m] = _merge(isims[m], ilab[m], irow[m], i, k, gram[m], acc[m], n_acc[m], vote_label,
                                   nb_s[m], nb_l[m], nb_src[m], nb_row[m])
        r, hd, hsrc, hrow = hash_match(i, h_rule, h_dist, h_row, cptr, crow, crule, cdist, inserted)
        if r == RULE_NEAR and not near_ok:
            r = 0  # distinct pictures crowd the perceptual cut in these data (InfoGrowthSelector._near_ok)
        if r != 0:  # 0) a copy of an accepted item by its hashes: dropped before any other rule sees it
            decision[i], why[i] = DROPPED_DUPLICATE, WHY_HASH
            dup_src[i], dup_row[i], hash_rule[i], hash_dist[i] = hsrc, hrow, r, hd
            continue
        n_trusted = n_index[prim] + n_acc[prim] if prim >= 0 and present[prim] else 0
        judged = trusted or n_trusted >= min_trusted
        dec, w = KEPT, WHY_NONE
        if pair[i] and trusted:
            boot_counts[sketch_bin(align[i], a_lo, a_hi, abins)] += 1
        if pair[i] and not trusted and align_mode != ALIGN_OFF:  # 1) caption alignment
            thr = align_fixed
            if align_mode == ALIGN_BOOTSTRAP and boot_thr == boot_thr:  # (NaN: no trusted pair yet)
                thr = boot_thr
            elif align_mode == ALIGN_ADAPTIVE and judged and a_n >= warmup and a_n > 0:
                thr = a_lo + (ab + 1) * (a_hi - a_lo) / abins
            if rules.misaligned(align[i], thr):
                if has_hook and recap[i] == RECAP_UNKNOWN:
                    state[0], state[1], state[2] = g_sum, g_count, used
                    thr_out[i] = thr
                    return i  # the hook is Python: ask it, then come back to this item
                if recap[i] == RECAP_ACCEPTED:
                    dec = RECAPTIONED
                    recap_note[i] = True
                else:
                    dec, w = DROPPED_NOISY, WHY_MISALIGNED
            thr_out[i] = thr
            ev_sums[STREAM_ALIGN] += align[i]  # evidence: the stream's mean alignment (before any recaption)
            ev_sums[STREAM_PAIRS] += 1.0
            j = sketch_bin(align[i], a_lo, a_hi, abins)
            align_counts[j] += 1
            a_n += 1
            if a_n == 1:
                ab, acum = _locate(align_counts, a_n, align_dq)
            else:
                if j <= ab:
                    acum += 1
                ab, acum = _relocate(align_counts, a_n, align_dq, ab, acum)
        if pair[i] and (trusted or not judged or collect_pairs):  # evidence: what a right caption scores
            ev_sums[CLEAN_ALIGN] += align[i]
            ev_sums[CLEAN_ALIGN2] += align[i] * align[i]
            ev_sums[CLEAN_PAIRS] += 1.0
            if cross_ok[i]:
                ev_cross[0] += cross[i]
                ev_cross[1] += cross[i] * cross[i]
                ev_cross[2] += 1.0
        label = labels_in[i]
        if label >= 0 and prim >= 0 and nb_cnt[prim] >= 0:  # 1b) label agreement with the neighbours
            voted, agr, bst, shr = rules.label_vote(nb_s[prim], nb_l[prim], min(k_label, nb_cnt[prim]), label, temp)
            if voted:
                agreement[i], best[i], share[i] = agr, bst, shr
                if judged and not trusted and not label_ready:
                    unjudged[i] = True
                    n_trusted_out[i] = UNJUDGED_CALIBRATING
                elif judged and not trusted and dec != DROPPED_NOISY:
                    if sketch_bin(agr, 0.0, 1.0, agbins) == 0:  # evidence: how often labels find no support
                        ev_sums[STREAM_LOW] += 1.0
                    ev_sums[STREAM_VOTES] += 1.0
                    nn_dist[i] = 1.0 - nb_s[prim, 0]
                    verdict = rules.label_rule(agr, bst, shr, label, tau_noise, tau_relabel, relabel, nn_dist[i],
                                               radius)
                    label_noisy[i] = 0 if verdict == rules.LABEL_OK else 1
                    if verdict == rules.LABEL_RELABEL:
                        label_out[i] = bst
                        vote_label[i] = -1  # a corrected label never votes
                        relabel_note[i] = True
                        if dec == KEPT:
                            dec = RELABELLED
                    elif verdict == rules.LABEL_ABSTAIN and agr >= tau_drop:  # weak: kept, flagged
                        vote_label[i] = -1  # a doubted label never votes either
                        abstain_note[i] = True
                    elif verdict != rules.LABEL_OK:
                        dec, w = DROPPED_NOISY, WHY_LABEL
                        abstain_note[i] = verdict == rules.LABEL_ABSTAIN
        if not judged and not trusted:
            unjudged[i] = True
            n_trusted_out[i] = n_trusted
        if dec != DROPPED_NOISY:
            total, cnt_m = 0.0, 0  # 2) gain per modality, averaged
            for m in range(2):
                if nb_cnt[m] >= 0:
                    gain_m[m, i] = rules.gain_of(nb_s[m], nb_cnt[m], k_gain)
                    total += gain_m[m, i]
                    cnt_m += 1
            if cnt_m:
                gain[i] = total / cnt_m
            if dmod >= 0 and nb_cnt[dmod] > 0:  # 3) near-duplicates
                max_sim[i] = nb_s[dmod, 0]
                if rules.duplicate(max_sim[i], eps_dup):
                    dec, w = DROPPED_DUPLICATE, WHY_DUPLICATE
                    dup_src[i], dup_row[i] = nb_src[dmod, 0], nb_row[dmod, 0]
            if dec != DROPPED_DUPLICATE and cnt_m:  # 4) insert every clean, non-duplicate item
                if dmod >= 0 and nb_cnt[dmod] > 0:  # evidence: how far distinct items sit from their nearest
                    nn_add(ev_nn, ev_nn_meta, nn_bin(max_sim[i], nn_lo, nn_hi, nbins), window)
                has_q = g_n > 0
                q = g_lo + (gb + 1) * (g_hi - g_lo) / gbins
                gain_norm[i] = rules.normalised_gain(gain[i], has_q, q)
                j = sketch_bin(gain[i], g_lo, g_hi, gbins)
                gain_counts[j] += 1
                g_n += 1
                if g_n == 1:
                    gb, gcum = _locate(gain_counts, g_n, gq)
                else:
                    if j <= gb:
                        gcum += 1
                    gb, gcum = _relocate(gain_counts, g_n, gq, gb, gcum)
                g_sum += gain_norm[i]
                g_count += 1
                inserted[i] = True
                for m in range(2):
                    if present[m] and has[m, i]:
                        acc[m, n_acc[m]] = i
                        n_acc[m] += 1
                if budget and not trusted:  # 5) sample under a storage budget
                    keep_prob[i] = rules.keep_probability(gain_norm[i], g_sum / g_count, keep_rate)
                    used += 1
                    if uniforms[used - 1] >= keep_prob[i]:
                        dec, w = DROPPED_BY_BUDGET, WHY_BUDGET
        decision[i], why[i] = dec, w
    state[0], state[1], state[2] = g_sum, g_count, used
    return stop
