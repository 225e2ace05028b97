"""The per-item loop of the selector, compiled: what depends on the earlier items of the batch.

Everything that does not depend on earlier items of the batch is array work done once per batch
(`curator.select.selector`): the index search, the in-batch similarities, the alignments. What is
left is sequential by nature -- an item's neighbours include the batch's earlier *accepted* items,
and the quantile sketches, the budget's mean and its RNG move item by item -- and runs here, over
the records of `curator.select.loop_data`, calling the steps of `curator.select.steps` in the order
the spec gives (docs/concepts.md).

The loop stops before an item whose caption needs a recaption (a Python hook): the selector asks
the hook, fills in `Scores.recap`, and calls it again from that item; nothing of that item was
touched. It also stops at `stop`, where the selector recalibrates its 'auto' thresholds
(`curator.select.calibrate`) from the evidence this loop fills in item by item.
"""

from __future__ import annotations

import numpy as np
from numba import njit

import curator.select.steps as steps
from curator.select.codes import (
    ALIGN_OFF,
    DROPPED_BY_BUDGET,
    DROPPED_DUPLICATE,
    DROPPED_NOISY,
    KEPT,
    WHY_BUDGET,
    WHY_DUPLICATE,
    WHY_LABEL,
    WHY_MISALIGNED,
    WHY_NONE,
)
from curator.select.loop_data import LoopBatch, LoopSettings, LoopState, Scores, empty_neighbours
from curator.select.sketch import cursor_start, sketch_bin


@njit(cache=True)
def resolve(b: LoopBatch, st: LoopSettings, run: LoopState, out: Scores, start: int, stop: int) -> int:
    """Decide items start..stop-1 in order; returns stop, or the item that waits for a recaption."""
    nb = empty_neighbours(b.k)
    gain_cur, align_cur = np.zeros(3, np.int64), np.zeros(3, np.int64)  # the quantiles' bins, followed
    cursor_start(run.gain_counts, st.gain_quantile, gain_cur)
    cursor_start(run.align_counts, st.align_drop_quantile, align_cur)
    p, trusted, pair, labels_in, cnt = b.prim, b.trusted, b.pair, b.labels_in, nb.cnt  # (locals: a record's
    for i in range(start, stop):                                  # field read costs a reference count)
        steps.gather(i, b, run, nb)
        if steps.hash_step(i, b, st, run, out):
            continue
        n_trusted = b.n_index[p] + run.n_acc[p] if p >= 0 and b.present[p] else 0
        judged = trusted or n_trusted >= st.min_trusted
        dec, w = KEPT, WHY_NONE
        if pair[i] and trusted:
            run.boot_counts[sketch_bin(b.align[i], st.align_lo, st.align_hi, run.boot_counts.shape[0])] += 1
        if pair[i] and not trusted and st.align_mode != ALIGN_OFF:
            dec = steps.caption_step(i, b, st, run, out, align_cur, judged)
            if dec == steps.WAIT:
                return i  # the hook is Python: ask it, then come back to this item
            w = WHY_MISALIGNED if dec == DROPPED_NOISY else WHY_NONE
        if pair[i] and (trusted or not judged or st.collect_pairs):
            steps.caption_evidence(i, b, run)
        if labels_in[i] >= 0 and p >= 0 and cnt[p] >= 0:
            labelled = steps.label_step(i, b, st, run, out, nb, judged, dec)
            if labelled == DROPPED_NOISY and dec != DROPPED_NOISY:
                w = WHY_LABEL
            dec = labelled
        if not judged and not trusted:
            out.unjudged[i] = True
            out.n_trusted[i] = n_trusted
        if dec != DROPPED_NOISY and steps.gain_step(i, st, out, nb):
            if steps.duplicate_step(i, b, st, out, nb):
                dec, w = DROPPED_DUPLICATE, WHY_DUPLICATE
            else:
                steps.insert_step(i, b, st, run, out, nb, gain_cur)
                if st.keep_rate > 0 and not trusted and steps.budget_step(i, st, run, out):
                    dec, w = DROPPED_BY_BUDGET, WHY_BUDGET
        out.decision[i], out.why[i] = dec, w
    return stop
