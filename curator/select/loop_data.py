"""The compiled loop's data model: four typed records of arrays, by who owns them and how long.

- `LoopBatch`: one batch as the loop reads it (searched neighbours, in-batch similarities, labels,
  alignments, hash matches) -- fixed for the batch, except where a recaption rewrites a caption.
- `LoopSettings`: the values in force (configured or calibrated) -- rebuilt at each calibration point.
- `LoopState`: what moves item by item and outlives the item (quantile sketches, the batch's accepted
  rows, the gain tally, the calibration evidence) -- updated in place.
- `Scores`: the per-item results -- written in place, and read by `curator.select.outcome` to build
  the decisions table.

They are NamedTuples because the compiled code (numba) takes them as typed structs, with field
access by name; the builders fix each field's type, so one compiled version serves every batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from curator.select.codes import RECAP_UNKNOWN

#: `LoopState.tally`'s slots: the normalised gains' running sum and count (the budget's mean), and the
#: budget's uniform draws used so far
G_SUM, G_COUNT, USED = range(3)


class LoopBatch(NamedTuple):
    """One batch as the loop reads it (modality m: 0 image, 1 text)."""

    trusted: bool  # a bootstrap batch: accepted unjudged, the evidence calibration starts from
    k: int  # neighbours gathered per item
    prim: int  # the modality whose neighbours vote on labels (-1: none)
    dmod: int  # the modality compared for near-duplicates (-1: none)
    present: np.ndarray  # bool[2]
    has: np.ndarray  # bool[2, n]
    isims: np.ndarray  # float32[2, n, k]: the index's nearest accepted items, nearest first
    ilab: np.ndarray  # int64[2, n, k]: their vote labels (-1: none)
    irow: np.ndarray  # int64[2, n, k]: their index rows (-1: padding)
    gram: np.ndarray  # float32[2, n, n]: in-batch similarities (-inf: on a shard the item does not probe)
    n_index: np.ndarray  # int64[2]: items in each index
    labels_in: np.ndarray  # int64[n] (-1: none)
    pair: np.ndarray  # bool[n]: has both an image and a caption
    align: np.ndarray  # float64[n]: cos(image, caption) of pairs
    cross: np.ndarray  # float64[n]: cos(image i, caption of item i - 1): what a mismatched caption scores
    cross_ok: np.ndarray  # bool[n]
    h_rule: np.ndarray  # int8[n]: the hash rule of the item's best match in the hash table (0: none)
    h_dist: np.ndarray  # int64[n]: its Hamming distance
    h_row: np.ndarray  # int64[n]: its item number in the table
    cptr: np.ndarray  # int64[n + 1]: item i's candidate matches earlier in the batch: cptr[i]..cptr[i + 1]
    crow: np.ndarray  # int64: their rows
    crule: np.ndarray  # int8: their rules
    cdist: np.ndarray  # int64: their distances


class LoopSettings(NamedTuple):
    """The values in force. A NaN tau_noise leaves labels unjudged, a NaN align_threshold captions."""

    k_gain: int
    k_label: int
    min_trusted: int  # items in the primary index before labels are judged
    align_mode: int  # curator.select.codes.ALIGN_*
    align_warmup: int  # pairs seen before the adaptive threshold applies
    relabel: bool  # label_action = relabel: a confident correction replaces the label
    has_hook: bool  # a recaption hook: a misaligned caption stops the loop to ask it
    collect_pairs: bool  # accepted pairs still count as right-caption evidence (selector.collecting)
    nn_window: int  # accepted items per bucket of the nearest-neighbour distance sketch
    near_ok: bool  # the perceptual hash rule is on (selector.near_ok)
    tau_noise: float
    tau_relabel: float
    tau_drop: float  # a flagged label without a confident correction is dropped below this, kept above
    relabel_radius: float
    temperature: float
    eps_dup: float
    gain_quantile: float
    keep_rate: float  # > 0: sample under a storage budget
    align_threshold: float
    align_drop_quantile: float
    boot_threshold: float  # the bootstrap's alignment quantile (NaN: no trusted pair yet)
    gain_lo: float  # the sketches' ranges
    gain_hi: float
    align_lo: float
    align_hi: float
    nn_lo: float
    nn_hi: float


class LoopState(NamedTuple):
    """What the loop moves item by item; every array is updated in place."""

    gain_counts: np.ndarray  # the gain quantile sketch's bins
    align_counts: np.ndarray  # the stream's alignment sketch
    boot_counts: np.ndarray  # the trusted pairs' alignment sketch
    acc: np.ndarray  # int64[2, n]: the batch's accepted rows per modality, in insertion order
    n_acc: np.ndarray  # int64[2]
    vote_label: np.ndarray  # int64[n]: labels that may vote (a corrected or doubted label never does)
    label_out: np.ndarray  # int64[n]: the label after correction
    inserted: np.ndarray  # bool[n]: accepted into the index so far
    tally: np.ndarray  # float64[3]: G_SUM, G_COUNT, USED
    uniforms: np.ndarray  # the budget's draws, taken in order (compiled code must not hold a Generator)
    ev_nn: np.ndarray  # calibration evidence (curator.select.calibrate.Evidence): the nn-distance sketch,
    ev_nn_meta: np.ndarray  # its bucket state,
    ev_sums: np.ndarray  # the sums (curator.select.codes: CLEAN_AGR, ...),
    ev_cross: np.ndarray  # and the mismatched pairs' (sum, sum of squares, count)


class Scores(NamedTuple):
    """Per-item results of one batch (NaN or -1 where not computed)."""

    decision: np.ndarray  # int8: curator.select.codes.KEPT, ...
    why: np.ndarray  # int8: WHY_*
    label_noisy: np.ndarray  # int8: -1 not judged, 0 agrees, 1 noisy
    agreement: np.ndarray
    best: np.ndarray  # int64: the neighbours' best label
    share: np.ndarray
    thr: np.ndarray  # the caption threshold applied
    recap: np.ndarray  # int8: RECAP_* (the hook's answer, read by the loop)
    align_out: np.ndarray  # a recaption's alignment
    gain_m: np.ndarray  # float64[2, n]
    gain: np.ndarray
    gain_norm: np.ndarray
    max_sim: np.ndarray
    dup_src: np.ndarray  # int8: -1 none, 0 an index item, 1 an earlier item of the batch, DUP_HASHED
    dup_row: np.ndarray  # int64
    keep_prob: np.ndarray
    unjudged: np.ndarray  # bool
    n_trusted: np.ndarray  # int64: trusted items when left unjudged (UNJUDGED_CALIBRATING: calibrating)
    relabel_note: np.ndarray  # bool
    recap_note: np.ndarray  # bool
    abstain_note: np.ndarray  # bool: a flagged label with no confident correction
    nn_dist: np.ndarray  # distance to the nearest voting neighbour, where a label was judged
    hash_rule: np.ndarray  # int8: the hash rule that found the item a copy
    hash_dist: np.ndarray  # int64: perceptual bits apart from its original (0: exact; -1: none fired)
    cal_idx: np.ndarray  # int64: which of the batch's calibrations (`BatchView.cals`) was in force

    @classmethod
    def empty(cls, n: int) -> Scores:
        def nan(*shape: int) -> np.ndarray:
            return np.full(shape or (n,), np.nan)

        return cls(
            decision=np.zeros(n, np.int8), why=np.zeros(n, np.int8), label_noisy=np.full(n, -1, np.int8),
            agreement=nan(), best=np.full(n, -1, np.int64), share=nan(), thr=nan(),
            recap=np.full(n, RECAP_UNKNOWN, np.int8), align_out=nan(), gain_m=nan(2, n), gain=nan(), gain_norm=nan(), max_sim=nan(),
            dup_src=np.full(n, -1, np.int8), dup_row=np.full(n, -1, np.int64), keep_prob=nan(),
            unjudged=np.zeros(n, bool), n_trusted=np.zeros(n, np.int64), relabel_note=np.zeros(n, bool),
            recap_note=np.zeros(n, bool), abstain_note=np.zeros(n, bool), nn_dist=nan(),
            hash_rule=np.zeros(n, np.int8), hash_dist=np.full(n, -1, np.int64), cal_idx=np.zeros(n, np.int64),
        )


class Neighbours(NamedTuple):
    """One item's k nearest accepted items per modality (the index's and the batch's, merged)."""

    sims: np.ndarray  # float32[2, k], nearest first
    labels: np.ndarray  # int64[2, k]: their vote labels
    src: np.ndarray  # int8[2, k]: 0 the index, 1 an earlier item of the batch
    row: np.ndarray  # int64[2, k]: index row or batch row
    cnt: np.ndarray  # int64[2]: how many (-1: the item lacks the modality)


@njit(cache=True)
def empty_neighbours(k: int) -> Neighbours:
    return Neighbours(np.empty((2, k), np.float32), np.empty((2, k), np.int64), np.empty((2, k), np.int8),
                      np.empty((2, k), np.int64), np.zeros(2, np.int64))
