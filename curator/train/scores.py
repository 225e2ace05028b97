"""Each sample's score (its latest raw loss), recorded every step and applied once per epoch.

Scores are read only when the next epoch's pruning is drawn, so a training step needs to
do no more than remember its ``(indices, losses)``: no conversion, no finiteness check,
no GPU synchronisation and, under torch.distributed, no collective. At the epoch boundary
the records are applied in bulk -- or, across ranks, exchanged in one all-gather and then
applied -- with the result a per-step all-gather gives: records in step order, ranks in
rank order within a step, the last finite loss of a sample wins, non-finite losses are
skipped (the sample keeps its score) and counted.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from curator.train.dist import all_gather_fixed, all_gather_varlen

__all__ = ["ScoreTable"]

#: Steps whose records are kept as separate tensors; past it they are concatenated, so a
#: long epoch holds a few large tensors rather than many small ones.
MAX_CHUNKS = 512


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on the first chunk's device (without a copy for a single chunk)."""
    if len(chunks) == 1:
        return chunks[0]
    dev = chunks[0].device
    return torch.cat([c if c.device == dev else c.to(dev) for c in chunks])


class ScoreTable:
    """The sampler's score table plus the records not yet applied to it.

    Records hold references to the caller's tensors until they are applied; their
    version counters tell whether one was modified in place in the meantime, which would
    silently attribute wrong losses, so that is an error rather than a copy per step.
    """

    def __init__(self, num_samples: int) -> None:
        self.scores = np.zeros(num_samples, dtype=np.float32)  # latest raw loss of each sample
        self.seen = np.zeros(num_samples, dtype=bool)  # has a finite loss been recorded?
        self.nonfinite = 0  # losses skipped because they were NaN or infinite
        self._warned = False
        # one (int64 CPU indices, detached losses, their two version counters) per step
        self._records: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        self._merged: tuple[torch.Tensor, torch.Tensor] | None = None  # earlier records, concatenated (copies)
        self._merged_sizes: list[int] = []  # records per step in _merged: the step order survives merging

    @property
    def pending(self) -> int:
        """Steps recorded since the table was last brought up to date."""
        return len(self._merged_sizes) + len(self._records)

    def record(self, idx: torch.Tensor, losses: torch.Tensor) -> None:
        """Remember one step: ``idx`` int64 on the CPU, ``losses`` detached, same length."""
        self._records.append((idx, losses, idx._version, losses._version))
        if len(self._records) >= MAX_CHUNKS:
            self._merge()

    def _merge(self) -> None:
        """Concatenate the records into ``_merged`` (checking that none was modified in place)."""
        if not self._records:
            return
        for step, (idx, loss, v_idx, v_loss) in enumerate(self._records, start=len(self._merged_sizes)):
            if idx._version != v_idx or loss._version != v_loss:
                self.discard()
                raise RuntimeError(
                    f"the indices or losses given to InfoBatch step {step} since the last epoch boundary were "
                    "modified in place afterwards: the sampler reads them at the epoch boundary, so pass tensors "
                    "that are not reused (e.g. indices.clone()); this epoch's losses were dropped")
        head = [] if self._merged is None else [self._merged]
        self._merged = (_cat([m[0] for m in head] + [r[0] for r in self._records]),
                        _cat([m[1] for m in head] + [r[1] for r in self._records]))
        self._merged_sizes += [r[0].shape[0] for r in self._records]
        self._records = []

    def _take(self, steps: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The pending records as (indices, float32 losses, step number of each), then forget them."""
        self._merge()
        if self._merged is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64) if steps else None
        idx = self._merged[0].numpy()
        vals = self._merged[1].to("cpu", torch.float32).numpy()
        step_of = np.repeat(np.arange(len(self._merged_sizes), dtype=np.int64), self._merged_sizes) if steps else None
        self.discard()
        return idx, vals, step_of

    def discard(self) -> None:
        """Forget the pending records (a loaded state replaces them)."""
        self._records, self._merged, self._merged_sizes = [], None, []

    def flush(self) -> None:
        """Apply this process's pending records (one process: nothing to exchange)."""
        if self.pending:
            idx, vals, _ = self._take(steps=False)
            self._apply(idx, vals)

    def crc(self) -> int:
        crc = zlib.crc32(self.scores.tobytes())
        return zlib.crc32(self.seen.tobytes(), crc)

    def exchange(self, check: Sequence[int], device: torch.device, capacity: int) -> bool:
        """Collective: apply every rank's pending records to every rank's table.

        One all-gather carries a header (record count, table checksum, ``check``) and up to
        ``capacity`` records per rank -- a bound every rank computes alike, e.g. its share of
        the epoch; only when a rank has more does a second all-gather follow. Returns False
        (the records are dropped) when the ranks' tables or ``check`` values differ: they
        would not draw the same pruning.
        """
        idx, vals, steps = self._take(steps=True)
        assert steps is not None
        bits = vals.view(np.int32).astype(np.int64)  # the float32 bits, exact in an int64 payload
        head = np.array([idx.size, self.crc(), *check], dtype=np.int64)
        body = np.zeros((3, capacity), dtype=np.int64)
        if idx.size <= capacity:
            body[:, : idx.size] = (idx, bits, steps)
        rows = all_gather_fixed(torch.from_numpy(np.concatenate([head, body.ravel()])), device).numpy()
        heads, world = rows[:, : head.size], rows.shape[0]
        if (heads[:, 1:] != heads[0, 1:]).any():
            return False
        counts = heads[:, 0].tolist()
        if max(counts) <= capacity:
            bodies = rows[:, head.size:].reshape(world, 3, capacity)
            every = np.concatenate([bodies[r, :, :c] for r, c in enumerate(counts)], axis=1)
        else:
            every = all_gather_varlen(torch.from_numpy(np.stack([idx, bits, steps])), counts, device).numpy()
        if every.shape[1] == 0:
            return True
        ranks = np.repeat(np.arange(world, dtype=np.int64), counts)
        order = np.argsort(every[2] * world + ranks, kind="stable")  # step, then rank, then position
        every = every[:, order]
        self._apply(every[0], every[1].astype(np.int32).view(np.float32))
        return True

    def _apply(self, idx: np.ndarray, vals: np.ndarray) -> None:
        ok = np.isfinite(vals)
        if not ok.all():
            self.nonfinite += int(ok.size - np.count_nonzero(ok))
            if not self._warned:
                warnings.warn("InfoBatchSampler got non-finite losses; those samples keep their previous score",
                              UserWarning, stacklevel=5)
                self._warned = True
            idx, vals = idx[ok], vals[ok]
        if idx.size == 0:
            return
        if np.bincount(idx, minlength=self.scores.size).max() > 1:
            # a sample recorded more than once: its last record wins (numpy leaves the order of
            # repeated-index assignment unspecified)
            last = np.full(self.scores.size, -1, dtype=np.int64)
            np.maximum.at(last, idx, np.arange(idx.size))
            take = last[idx] == np.arange(idx.size)
            idx, vals = idx[take], vals[take]
        self.scores[idx] = vals
        self.seen[idx] = True

    def load(self, scores: np.ndarray, seen: np.ndarray, nonfinite: int) -> None:
        self.discard()
        self.scores = scores.astype(np.float32, copy=True)
        self.seen = seen.astype(bool, copy=True)
        self.nonfinite = int(nonfinite)
