"""What one batch's selection produces: the per-item scores, the view of the batch the loop works on,
and the decisions table (with its reasons) built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

import curator.select.reasons as reasons
from curator.records import DECISION_SCHEMA, filter_scores
from curator.select.calibrate import Calibration
from curator.select.codes import (
    DUP_HASHED,
    RECAP_ACCEPTED,
    RECAP_REJECTED,
    UNJUDGED_CALIBRATING,
    WHY_BUDGET,
    WHY_DUPLICATE,
    WHY_HASH,
    WHY_LABEL,
    WHY_MISALIGNED,
)
from curator.select.hashdup import RULE_CONTENT, RULE_NAMES, RULE_NEAR, RULE_PIXELS, BatchHashes
from curator.select.loop_data import Scores

MODALITIES = ("image", "text")
NO_NOTE = UNJUDGED_CALIBRATING - 1  # below every item's n_trusted: reason_texts keys unjudged items from 1 up


@dataclass
class Selection:
    """Outcome of one batch: one decision per input row, and what the kept rows become."""

    decisions: pa.Table
    kept_rows: np.ndarray  # row numbers (into the batch) of kept items, in order
    label_out: np.ndarray  # per row, the label after correction (-1 none)
    text_out: list[str | None]  # per row, the caption after a recaption (None = unchanged)
    text_emb_out: np.ndarray | None  # per row, text embedding after a recaption
    gain: np.ndarray
    gain_norm: np.ndarray
    homes: np.ndarray | None = None  # per row, the shard whose rows it belongs to (its primary index's home)


@dataclass
class BatchView:
    """One batch as the per-item loop sees it (modality m: 0 image, 1 text)."""

    samples: pa.Table
    ids: list[str]
    mods: dict[str, np.ndarray]  # vectors per modality present (text rows change on a recaption)
    present: np.ndarray  # bool[2]
    has: np.ndarray  # bool[2, n]
    isims: np.ndarray  # float32[2, n, k]: the index's nearest accepted items, nearest first
    ilab: np.ndarray  # int64[2, n, k]: their vote labels (-1: none)
    irow: np.ndarray  # int64[2, n, k]: their index rows (-1: padding)
    gram: np.ndarray  # float32[2, n, n]: in-batch similarities
    n_index: np.ndarray  # int64[2]: items in each index
    labels_in: np.ndarray
    label_out: np.ndarray
    vote_label: np.ndarray  # labels that may vote: a corrected label never does
    pair: np.ndarray  # bool[n]: has both an image and a caption
    align: np.ndarray  # float64[n]: cos(image, text) of pairs (NaN otherwise)
    text_out: list[str | None]
    acc: np.ndarray  # int64[2, n]: the batch's accepted rows per modality, in insertion order
    n_acc: np.ndarray  # int64[2]
    prim: int  # the modality whose neighbours vote on labels (-1: none)
    dmod: int  # the modality compared for near-duplicates (-1: none)
    cross: np.ndarray  # float64[n]: cos(image i, caption of item i - 1): what a mismatched caption scores
    cross_ok: np.ndarray  # bool[n]
    hashes: BatchHashes | None  # the items' content hashes and the hash rules' matches (None: no dedup modality)
    inserted: np.ndarray  # bool[n]: accepted (into the index) so far
    cals: list[Calibration] = field(default_factory=list)  # the calibrations in force (Scores.cal_idx)


def concat_selections(a: Selection, b: Selection) -> Selection:
    """Two consecutive parts of one batch as one Selection (rows of b after a's)."""
    te = None if a.text_emb_out is None or b.text_emb_out is None else np.concatenate([a.text_emb_out, b.text_emb_out])
    return Selection(pa.concat_tables([a.decisions, b.decisions]),
                     np.concatenate([a.kept_rows, b.kept_rows + a.decisions.num_rows]),
                     np.concatenate([a.label_out, b.label_out]), a.text_out + b.text_out, te,
                     np.concatenate([a.gain, b.gain]), np.concatenate([a.gain_norm, b.gain_norm]),
                     None if a.homes is None or b.homes is None else np.concatenate([a.homes, b.homes]))


def dup_ids(sel: Any, v: BatchView, s: Scores) -> list[str | None]:
    out: list[str | None] = [None] * len(v.ids)
    rows = np.flatnonzero(s.dup_src == 0)
    if len(rows) and v.dmod >= 0:
        for r, name in zip(rows, sel.indexes[MODALITIES[v.dmod]].ids_of(s.dup_row[rows]), strict=True):
            out[r] = name
    for r in np.flatnonzero(s.dup_src == 1):
        out[r] = v.ids[s.dup_row[r]]
    for r in np.flatnonzero(s.dup_src == DUP_HASHED):
        out[r] = sel.hashes.ids[s.dup_row[r]]
    return out

def status_word(status: str) -> str:
    """What a reason says of a threshold in force: its status's first word ("" for a configured number)."""
    return "" if status == "config" else status.split(" ", 1)[0].rstrip(":")


def _unjudged_note(sel: Any, v: BatchView, n_trusted: int, cal_idx: int) -> str:
    cal = v.cals[cal_idx] if v.cals else sel.cal
    return reasons.unjudged(n_trusted, sel.cfg.min_trusted, cal.origin.get("tau_noise", ""))


def reason_texts(sel: Any, v: BatchView, s: Scores, dup_of: list[str | None], trusted: bool) -> list[str]:
    c = sel.cfg
    relabel = c.label_action == "relabel"
    caption_unjudged = v.pair & np.isnan(s.thr) & (not trusted) & (c.align_mode != "off") & (s.why != WHY_HASH)
    flagged = (s.recap_note.astype(bool) | (s.label_noisy == 1) | s.abstain_note.astype(bool)
               | s.relabel_note.astype(bool) | (s.why != 0) | caption_unjudged)
    # most items are accepted with no note, or with only the label rule's "not judged" (no bootstrap
    # yet): their reason is a head shared by many, formatted once per batch, and the gain
    unjudged = ~flagged & s.unjudged.astype(bool)
    # one int key per distinct head: 0 for no note, else (n_trusted, calibration) packed into one number
    ncal = max(len(v.cals), 1)
    kinds, which = np.unique(np.where(unjudged, (s.n_trusted - NO_NOTE) * ncal + s.cal_idx, 0), return_inverse=True)
    heads = np.array([reasons.accepted_head(trusted, [_unjudged_note(sel, v, k // ncal + NO_NOTE, k % ncal)] if k else [])
                      for k in kinds.tolist()], dtype=object)
    out = [reasons.with_gain(h, g) for h, g in zip(heads[which].tolist(), s.gain.tolist(), strict=True)]
    autos: dict[int, dict[str, str]] = {}
    for i in np.flatnonzero(flagged).tolist():
        cal = v.cals[s.cal_idx[i]] if v.cals else sel.cal
        val = cal.values
        auto = autos.get(id(cal)) or autos.setdefault(id(cal), {k: status_word(o) for k, o in cal.origin.items()})
        notes = []
        if s.recap_note[i]:
            notes.append(reasons.recaptioned(v.align[i], s.thr[i], s.align_out[i]))
        base = reasons.label_base(int(v.labels_in[i]), s.agreement[i], val["tau_noise"], auto["tau_noise"]) \
            if s.label_noisy[i] == 1 else ""
        weak = reasons.weak_evidence(s.share[i], val["tau_relabel"], s.nn_dist[i], val["relabel_radius"]) \
            if s.abstain_note[i] else ""
        if s.relabel_note[i]:
            notes.append(reasons.relabelled(base, int(s.best[i]), s.share[i]))
        elif s.abstain_note[i] and s.why[i] != WHY_LABEL:
            notes.append(reasons.kept_flagged(base, weak, s.agreement[i], val["tau_drop"]))
        if s.unjudged[i]:
            notes.append(_unjudged_note(sel, v, int(s.n_trusted[i]), int(s.cal_idx[i])))
        if caption_unjudged[i] and not (s.unjudged[i] and s.n_trusted[i] >= 0):
            notes.append(reasons.captions_unjudged(
                f"align_threshold {cal.origin.get('align_threshold', '')}" if c.align_mode == "fixed" else
                f"align_mode {c.align_mode}: too few pairs yet"))
        w = s.why[i]
        drop = ""
        if w == WHY_MISALIGNED:
            drop = reasons.misaligned(v.align[i], s.thr[i], reasons.not_recaptioned(
                sel.recaption is not None, s.recap[i] in (RECAP_ACCEPTED, RECAP_REJECTED),
                s.align_out[i]), auto["align_threshold"] if c.align_mode == "fixed" else "")
        elif w == WHY_LABEL:
            drop = reasons.label_dropped(base, s.share[i], val["tau_relabel"], relabel, weak)
        elif w == WHY_DUPLICATE:
            drop = reasons.duplicate(str(dup_of[i]), s.max_sim[i], val["eps_dup"], auto["eps_dup"])
        elif w == WHY_BUDGET:
            drop = reasons.budget(s.keep_prob[i], c.keep_rate, s.gain_norm[i])
        elif w == WHY_HASH:
            r = int(s.hash_rule[i])
            drop = reasons.near_copy(str(dup_of[i]), int(s.hash_dist[i]), c.phash_max_dist) if r == RULE_NEAR else \
                reasons.exact_copy(str(dup_of[i]), "decoded pixels" if r == RULE_PIXELS else
                                   v.hashes.what[i] if v.hashes is not None else "content")
        out[i] = reasons.compose(notes, drop, trusted, None if np.isnan(s.gain[i]) else float(s.gain[i]))
    return out

def decisions_table(sel: Any, v: BatchView, s: Scores, seqs: np.ndarray, values: np.ndarray,
                    trusted: bool) -> pa.Table:
    n = len(v.ids)
    samples = v.samples

    def f32(x: np.ndarray) -> pa.Array:
        return pa.array(x.astype(np.float32), pa.float32(), mask=np.isnan(x))

    def label(x: np.ndarray) -> pa.Array:
        return pa.array(x, pa.int64(), mask=x < 0)

    shown_align = v.pair & (trusted or sel.cfg.align_mode != "off")
    align = np.where(shown_align, v.align, np.nan)
    dup_of = dup_ids(sel, v, s)
    h = v.hashes

    def key(x: np.ndarray | None, valid: np.ndarray | None = None) -> pa.Array:
        if x is None:
            return pa.nulls(n, pa.int64())
        return pa.array(x, pa.int64(), mask=(x == 0) if valid is None else ~valid)

    names = np.array([None] + [RULE_NAMES[r] for r in (RULE_CONTENT, RULE_PIXELS, RULE_NEAR)], dtype=object)
    rule = names[s.hash_rule]
    rule[s.why == WHY_DUPLICATE] = "embedding"
    cols: dict[str, Any] = {
        "id": samples.column("id"),
        "source": samples.column("source"),
        "partition": samples.column("partition"),
        "offset": samples.column("offset"),
        "seq": pa.array(seqs, pa.int64()),
        "decision": pa.array(values.tolist(), pa.string()),
        "reason": pa.array(reason_texts(sel, v, s, dup_of, trusted), pa.string()),
        "code": pa.nulls(n, pa.string()),  # only rejected input has one
        "label_in": label(v.labels_in),
        "label_out": label(v.label_out),
        "label_noisy": pa.array(s.label_noisy == 1, pa.bool_(), mask=s.label_noisy < 0),
        "label_agreement": f32(s.agreement),
        "align": f32(align),
        "align_out": f32(s.align_out),
        "text_out": pa.array(v.text_out, pa.string()),
        "gain": f32(s.gain),
        "gain_image": f32(s.gain_m[0]),
        "gain_text": f32(s.gain_m[1]),
        "gain_norm": f32(s.gain_norm),
        "max_sim": f32(s.max_sim),
        "dup_of": pa.array(dup_of, pa.string()),
        "dup_rule": pa.array(rule.tolist(), pa.string()),
        "hash_dist": pa.array(s.hash_dist, pa.int32(), mask=s.hash_dist < 0),
        "content_hash": key(None if h is None else h.content),
        "pixel_hash": key(None if h is None else h.pixels),
        "phash": key(None if h is None else h.phash, None if h is None else h.phash_ok),
        "keep_prob": f32(s.keep_prob),
        "model": pa.array([sel.model_id] * n, pa.string()),
        "config_fingerprint": pa.array([sel.fingerprint] * n, pa.string()),
        "filters": filter_scores(samples),
    }
    return pa.table(cols, schema=DECISION_SCHEMA)
