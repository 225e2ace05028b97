"""Streaming quantiles over a bounded range, with state that checkpoints exactly.

Cosine similarities and gains live in known, bounded ranges ([-1, 1], [0, 2]), so a
fixed-bin histogram answers any quantile to within one bin width, is deterministic,
order-independent, and serialises as a list of counts: what a crash-safe checkpoint needs.
Randomised sketches (KLL, t-digest) would make decisions depend on their internal RNG.

The compiled loop updates the same counts item by item (`sketch_bin`, and a `cursor` that follows
the quantile's bin in O(1) amortised per value), so both read the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

#: a cursor's slots: values counted, the quantile's bin, the cumulative count through that bin
CUR_N, CUR_BIN, CUR_CUM = range(3)


class StreamingQuantile:
    def __init__(self, lo: float, hi: float, bins: int = 8192) -> None:
        if not hi > lo:
            raise ValueError(f"StreamingQuantile needs hi > lo, got [{lo}, {hi}]")
        self.lo, self.hi, self.bins = float(lo), float(hi), int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def update(self, values: np.ndarray | list[float] | float) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        idx = np.floor((v - self.lo) / (self.hi - self.lo) * self.bins).astype(np.int64)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.bins)

    def quantile(self, q: float, lower: bool = False) -> float | None:
        """Upper (or lower) edge of the bin holding the q-quantile (None before any value)."""
        n = self.n
        if n == 0:
            return None
        rank = max(1, int(np.ceil(q * n)))
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        return self.lo + (b + (0 if lower else 1)) * (self.hi - self.lo) / self.bins

    def state_dict(self) -> dict[str, Any]:
        nz = np.nonzero(self.counts)[0]
        return {"lo": self.lo, "hi": self.hi, "bins": self.bins,
                "idx": nz.tolist(), "counts": self.counts[nz].tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["lo"], state["hi"], state["bins"])  # type: ignore[misc]
        self.counts[np.asarray(state["idx"], dtype=np.int64)] = np.asarray(state["counts"], dtype=np.int64)


@njit(cache=True, inline="always")
def sketch_bin(v: float, lo: float, hi: float, bins: int) -> int:
    """The bin of `v` in a `StreamingQuantile` (same arithmetic)."""
    b = int(math.floor((v - lo) / (hi - lo) * bins))
    return min(max(b, 0), bins - 1)


@njit(cache=True, inline="always")
def cursor_start(counts: np.ndarray, q: float, cur: np.ndarray) -> None:
    """Point `cur` at the q-quantile of `counts`: the first bin whose cumulative count reaches
    max(1, ceil(q * n))."""
    n = int(counts.sum())
    rank = max(1, int(math.ceil(q * n)))
    c = 0
    b = counts.shape[0] - 1
    for j in range(counts.shape[0]):
        c += counts[j]
        if c >= rank:
            b = j
            break
    cur[CUR_N], cur[CUR_BIN], cur[CUR_CUM] = n, b, c


@njit(cache=True, inline="always")
def cursor_add(counts: np.ndarray, q: float, cur: np.ndarray, j: int) -> None:
    """Count one value in bin j and move the cursor: the rank moved by at most one bin's worth."""
    counts[j] += 1
    cur[CUR_N] += 1
    if cur[CUR_N] == 1:
        cursor_start(counts, q, cur)
        return
    b, cum = cur[CUR_BIN], cur[CUR_CUM] + (1 if j <= cur[CUR_BIN] else 0)
    rank = max(1, int(math.ceil(q * cur[CUR_N])))
    while b > 0 and cum - counts[b] >= rank:
        cum -= counts[b]
        b -= 1
    while cum < rank and b < counts.shape[0] - 1:
        b += 1
        cum += counts[b]
    cur[CUR_BIN], cur[CUR_CUM] = b, cum


@njit(cache=True, inline="always")
def cursor_edge(cur: np.ndarray, lo: float, hi: float, bins: int) -> float:
    """The upper edge of the cursor's bin: the quantile's value."""
    return lo + (cur[CUR_BIN] + 1) * (hi - lo) / bins


@njit(cache=True, inline="always")
def nn_bin(max_sim: float, lo: float, hi: float, bins: int) -> int:
    """The bin of log10(1 - max_sim) in the nearest-neighbour distance sketch (distance 0: bin 0)."""
    d = 1.0 - max_sim
    if not d > 0.0:
        return 0
    return sketch_bin(math.log10(d), lo, hi, bins)


@njit(cache=True, inline="always")
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
