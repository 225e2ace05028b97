"""Streaming quantiles over a bounded range, with state that checkpoints exactly.

Cosine similarities and gains live in known, bounded ranges ([-1, 1], [0, 2]), so a
fixed-bin histogram answers any quantile to within one bin width, is deterministic,
order-independent, and serialises as a list of counts: what a crash-safe checkpoint needs.
Randomised sketches (KLL, t-digest) would make decisions depend on their internal RNG.
"""

from __future__ import annotations

from typing import Any

import numpy as np


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
