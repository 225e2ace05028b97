"""Building the next index in the background while the current one serves.

A rebuild trains on the first `at` indexed items (a fixed, seeded sample of them), adds them, then
keeps adding the rows indexed meanwhile until it is asked to finish. Rows are read from the serving
index under the owner's lock, so the serving index is never read while it is written. Everything
the result depends on -- which rows, which sample, which order -- is fixed by `at`, so a restart
that rebuilds from the same snapshot gets the same index.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import faiss
import numpy as np

import curator.index.kinds as kinds
from curator.config import IndexConfig

log = logging.getLogger(__name__)

CHUNK = 65_536


def training_rows(at: int, nlist: int) -> np.ndarray:
    """The rows (of the first `at`) an IVF with `nlist` lists is trained on: all, or a sample seeded by
    `at` -- about 64 per list, as FAISS would subsample, but chosen here so a rebuild is reproducible."""
    m = min(at, max(nlist * 64, 10_000))
    return np.arange(at) if m == at else np.sort(np.random.default_rng(at).choice(at, m, replace=False))


class Rebuild(threading.Thread):
    def __init__(self, spec: kinds.Spec, at: int, dim: int, cfg: IndexConfig,
                 read: Callable[[np.ndarray], np.ndarray], size: Callable[[], int]) -> None:
        super().__init__(name=f"curator-index-rebuild-{spec.kind}", daemon=True)
        self.spec, self.at, self.dim, self.cfg = spec, at, dim, cfg
        self._read, self._size = read, size
        self._cond = threading.Condition()
        self._target: int | None = None  # set by finish(): add exactly this many rows, then stop
        self.index: faiss.Index | None = None
        self.error: BaseException | None = None
        self.added = 0
        self.seconds = 0.0

    def run(self) -> None:
        t0 = time.perf_counter()
        try:
            idx = kinds.build(self.spec, self.dim, self.cfg)
            if self.spec.trainable:
                idx.train(self._read(training_rows(self.at, self.spec.nlist)))
            while True:
                with self._cond:
                    limit = self._target if self._target is not None else self._size()
                    if self.added >= limit:
                        if self._target is not None:
                            break
                        self._cond.wait(0.5)
                        continue
                end = min(limit, self.added + CHUNK)
                idx.add(self._read(np.arange(self.added, end)))
                self.added = end
            self.index = idx
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits for the result
            self.error = exc
        self.seconds = time.perf_counter() - t0

    def poke(self) -> None:
        """New rows were indexed: wake the builder."""
        with self._cond:
            self._cond.notify()

    def finish_now(self, n: int) -> None:
        """Build in the calling thread, over rows up to `n` (a bulk load)."""
        self._target = n
        self.run()
        if self.error is not None:
            raise RuntimeError(f"building the index as {self.spec.kind} failed: {self.error}") from self.error

    def finish(self, n: int) -> faiss.Index:
        """Add rows up to `n`, then hand over the index (waits: the switch point has come)."""
        with self._cond:
            self._target = n
            self._cond.notify()
        t0 = time.perf_counter()
        self.join()
        waited = time.perf_counter() - t0
        if self.error is not None:
            raise RuntimeError(f"rebuilding the index as {self.spec.kind} failed: {self.error}") from self.error
        assert self.index is not None
        log.info("index rebuilt as %s (nlist %d) over %d items in %.1fs (the stream waited %.2fs for it)",
                 self.spec.kind, self.spec.nlist, n, self.seconds, waited)
        return self.index
