"""The recently accepted items, searched exactly beside an approximate index.

With an approximate index, whether an earlier item is found could depend on whether it arrived in
an earlier batch (then it is in the index, found approximately) or in the same one (then it is
compared exactly): decisions would depend on batch boundaries. So an item at stream position s is
split at a bound b(s) -- `window` positions back, rounded down to a multiple of `BLOCK` -- that
depends on s alone: the approximate index answers for the items accepted before b(s) (a filtered
search), and it compares exactly with those accepted from b(s) on (here, and the batch's own earlier
items). Both halves are then the same whatever the batching. It also finds every near-duplicate
that arrives within the window of its original exactly.
"""

from __future__ import annotations

import numpy as np

from curator.index.exact import nearest

#: bounds are multiples of this, so a batch of queries needs only a few filtered searches
BLOCK = 128


def bounds(seqs: np.ndarray, window: int) -> np.ndarray:
    """b(s): the first stream position an item at position s compares with exactly."""
    return np.maximum((seqs - window) // BLOCK * BLOCK, 0)


class RecentWindow:
    """The window's vectors, rows and stream positions, held in one buffer that is appended to and
    evicted from in place: a batch used to copy the whole window into new arrays three times over (timed
    around `add` in selector_speed's steady state at 10k: 1.3 -> 1.0 us per item)."""

    def __init__(self, dim: int, window: int) -> None:
        self.dim = dim
        self.window = int(window)
        self._vecs = np.zeros((0, dim), np.float32)
        self._rows = np.zeros(0, np.int64)
        self._seqs = np.zeros(0, np.int64)
        self._lo = self._hi = 0  # the live part of the buffers

    @property
    def vecs(self) -> np.ndarray:
        return self._vecs[self._lo:self._hi]

    @property
    def rows(self) -> np.ndarray:
        return self._rows[self._lo:self._hi]

    @property
    def seqs(self) -> np.ndarray:
        return self._seqs[self._lo:self._hi]

    def add(self, x: np.ndarray, rows: np.ndarray, seqs: np.ndarray) -> None:
        if len(seqs) == 0:
            return
        bound = int(bounds(np.array([seqs[-1] + 1]), self.window)[0])  # what a later query can need
        keep = seqs >= bound
        m = int(keep.sum())
        if self._hi + m > len(self._seqs):
            self._room(m)
        lo, hi = self._hi, self._hi + m
        self._vecs[lo:hi], self._rows[lo:hi], self._seqs[lo:hi] = x[keep], rows[keep], seqs[keep]
        self._hi = hi
        self.evict(bound)

    def _room(self, m: int) -> None:
        """Room for `m` more at the end: the live part moved to the front, into buffers of twice what
        will be held when these are too small (so moves are rare, and reallocations rarer)."""
        live = self._hi - self._lo
        if live + m > len(self._seqs):
            cap = max(2 * (live + m), 256)
            vecs, rows, seqs = np.zeros((cap, self.dim), np.float32), np.zeros(cap, np.int64), np.zeros(cap, np.int64)
        else:
            vecs, rows, seqs = self._vecs, self._rows, self._seqs  # numpy copies overlapping ranges safely
        vecs[:live], rows[:live], seqs[:live] = self.vecs, self.rows, self.seqs
        self._vecs, self._rows, self._seqs, self._lo, self._hi = vecs, rows, seqs, 0, live

    def evict(self, before_seq: int) -> None:
        """Forget items before `before_seq`: queries only move forward in the stream."""
        keep = self.seqs >= before_seq
        if keep.all():
            return
        first = int(np.argmax(keep)) if keep.any() else len(keep)
        if keep[first:].all():  # the usual case: positions ascend, the oldest go
            self._lo += first
            return
        n = int(keep.sum())
        lo = self._lo
        self._vecs[lo:lo + n], self._rows[lo:lo + n], self._seqs[lo:lo + n] = self.vecs[keep], self.rows[keep], self.seqs[keep]
        self._hi = lo + n

    def search(self, q: np.ndarray, k: int, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of the items accepted at or after each query's bound `lower`, as the flat
        search of just those items would find them (`exact.nearest`: the same similarities to the last
        bit, ties by row, whatever else the window holds and however the queries are batched)."""
        n = len(q)
        if len(self.rows) == 0 or n == 0:
            return np.full((n, 0), -np.inf, np.float32), np.full((n, 0), -1, np.int64)
        kk = min(k, len(self.rows))
        s, local = nearest(q, self.vecs, kk, self.seqs[None, :] < lower[:, None])
        return s, np.where(local < 0, -1, self.rows[local])


def merge(a_sims: np.ndarray, a_rows: np.ndarray, b_sims: np.ndarray, b_rows: np.ndarray,
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k best of two result lists (rows found in both keep b's similarity), ordered by
    similarity, then row: the same neighbours in the same order however they were found."""
    sims = np.concatenate([b_sims, a_sims], axis=1)
    rows = np.concatenate([b_rows, a_rows], axis=1)
    src = np.concatenate([np.zeros(b_rows.shape, np.int8), np.ones(a_rows.shape, np.int8)], axis=1)
    sims = np.where(rows < 0, -np.inf, sims)
    # duplicates: sort by (row, source) and blank every repeat of a row (b's copy comes first)
    order = np.lexsort((src, rows), axis=1)
    r_sorted = np.take_along_axis(rows, order, axis=1)
    dup = np.zeros_like(r_sorted, dtype=bool)
    dup[:, 1:] = (r_sorted[:, 1:] == r_sorted[:, :-1]) & (r_sorted[:, 1:] >= 0)
    s_sorted = np.where(dup, -np.inf, np.take_along_axis(sims, order, axis=1))
    r_sorted = np.where(dup, -1, r_sorted)
    # best first; among equal similarities the smaller row (the sort by row above is stable under this)
    best = np.argsort(-s_sorted, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(s_sorted, best, axis=1)
    r = np.take_along_axis(r_sorted, best, axis=1)
    r = np.where(np.isneginf(s), -1, r)
    if s.shape[1] < k:
        s = np.pad(s, ((0, 0), (0, k - s.shape[1])), constant_values=-np.inf)
        r = np.pad(r, ((0, 0), (0, k - r.shape[1])), constant_values=-1)
    return s.astype(np.float32), r.astype(np.int64)
