"""Each sample's score (its latest raw loss), recorded every step and applied once per epoch.

Scores are read only when the next epoch's pruning is drawn, so a training step needs to
do no more than remember its ``(indices, losses)``: no conversion, no finiteness check,
no GPU synchronisation and, under torch.distributed, no collective. At the epoch boundary
the records are applied in bulk -- or, across ranks, exchanged in one all-gather and then
applied -- with the result a per-step all-gather gives: records in step order, ranks in
rank order within a step, the last finite loss of a sample wins, non-finite losses are
skipped (the sample keeps its score) and counted.

Across ranks the exchange leaves the training thread: the caller only takes its records (a
copy, so its tensors are free again); a background thread packs and all-gathers them on a
group of their own, applies them and runs whatever the caller wants done with the new
scores (the sampler: the next epoch's draw); the next read of the table lands the result.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from curator.train.dist import Background, all_gather_fixed, all_gather_varlen, exchange_group

__all__ = ["Exchange", "ScoreTable"]

T = TypeVar("T")

#: Pending records, taken: (int64 CPU indices, float32 CPU losses, records per step).
Records = tuple[torch.Tensor, torch.Tensor, list[int]]

#: Steps whose records are kept as separate tensors; past it they are concatenated, so a
#: long epoch holds a few large tensors rather than many small ones.
MAX_CHUNKS = 512


def _cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on the first chunk's device (without a copy for a single chunk)."""
    if len(chunks) == 1:
        return chunks[0]
    try:
        return torch.cat(chunks)  # one device, as nearly always: no per-chunk device check
    except RuntimeError:
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

    def _take(self) -> Records | None:
        """The pending records, then forget them: (indices, float32 CPU losses, records per step).

        Copies the caller can no longer touch: a device's losses come to the CPU here, on the
        caller's thread and stream.
        """
        self._merge()
        if self._merged is None:
            return None
        (idx, vals), sizes = self._merged, self._merged_sizes
        one = len(sizes) == 1  # a single step's tensors pass through _merge uncopied
        records = (idx.clone() if one else idx, vals.to("cpu", torch.float32, copy=one), sizes)
        self.discard()
        return records

    def discard(self) -> None:
        """Forget the pending records (a loaded state replaces them)."""
        self._records, self._merged, self._merged_sizes = [], None, []

    def flush(self) -> None:
        """Apply this process's pending records (one process: nothing to exchange)."""
        if self.pending:
            idx, vals, _ = _arrays(self._take())
            self._warn(self._apply(idx, vals))

    def crc(self) -> int:
        crc = zlib.crc32(self.scores.tobytes())
        return zlib.crc32(self.seen.tobytes(), crc)

    def start_exchange(self, check: Sequence[int], capacity: int,
                       then: Callable[[], T] | None = None) -> Exchange[T]:
        """Collective, but it does not wait: apply every rank's pending records to every rank's table.

        One all-gather carries a header (record count, table checksum, ``check``) and up to
        ``capacity`` records per rank -- a bound every rank computes alike, e.g. its share of
        the epoch; only when a rank has more does a second all-gather follow. Here the records
        are only taken (copied); on a background thread they are packed, the all-gathers run,
        the records are applied and ``then()`` runs on the updated table. Until :meth:`land`
        the table is the thread's: read nothing from it. Every rank must start its exchanges
        in the same order.
        """
        group = exchange_group()  # made here, on the calling thread: creating it is itself collective
        return Exchange(self, self._take(), [int(c) for c in check], capacity, group, then)

    def land(self, exchange: Exchange[T]) -> tuple[bool, T | None]:
        """Wait for an exchange: (False, None) when the ranks' tables or ``check`` values differ,
        so they would not draw the same pruning (nothing was applied), else (True, ``then()``)."""
        ok, skipped, after = exchange.job.result()
        self._warn(skipped)
        return ok, after

    def _warn(self, skipped: int) -> None:
        """Warn once about skipped losses (on the caller's thread, where warnings filters apply)."""
        if skipped and not self._warned:
            warnings.warn("InfoBatchSampler got non-finite losses; those samples keep their previous score",
                          UserWarning, stacklevel=5)
            self._warned = True

    def _apply(self, idx: np.ndarray, vals: np.ndarray) -> int:
        """Apply records in order; returns how many were skipped as non-finite."""
        ok = np.isfinite(vals)
        skipped = 0
        if not ok.all():
            skipped = int(ok.size - np.count_nonzero(ok))
            self.nonfinite += skipped
            idx, vals = idx[ok], vals[ok]
        if idx.size == 0:
            return skipped
        if np.bincount(idx, minlength=self.scores.size).max() > 1:
            # a sample recorded more than once: its last record wins (numpy leaves the order of
            # repeated-index assignment unspecified)
            last = np.full(self.scores.size, -1, dtype=np.int64)
            np.maximum.at(last, idx, np.arange(idx.size))
            take = last[idx] == np.arange(idx.size)
            idx, vals = idx[take], vals[take]
        self.scores[idx] = vals
        self.seen[idx] = True
        return skipped

    def load(self, scores: np.ndarray, seen: np.ndarray, nonfinite: int) -> None:
        self.discard()
        self.scores = scores.astype(np.float32, copy=True)
        self.seen = seen.astype(bool, copy=True)
        self.nonfinite = int(nonfinite)


def _arrays(records: Records | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records as numpy: (int64 indices, float32 losses, step number of each)."""
    if records is None:
        return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    idx, vals, sizes = records
    return idx.numpy(), vals.numpy(), np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)


class Exchange(Generic[T]):
    """An exchange in flight: packing, collectives, the records' application and ``then`` on a background thread."""

    def __init__(self, table: ScoreTable, records: Records | None, check: list[int], capacity: int, group: Any,
                 then: Callable[[], T] | None) -> None:
        self.table, self.records, self.check, self.capacity, self.group, self.then = (
            table, records, check, capacity, group, then)
        self.job: Background[tuple[bool, int, T | None]] = Background(self._arrive)

    def _arrive(self) -> tuple[bool, int, T | None]:
        every = self._gather()
        if every is None:
            return False, 0, None
        skipped = self.table._apply(every[0], every[1].astype(np.int32).view(np.float32))
        return True, skipped, None if self.then is None else self.then()

    def _gather(self) -> np.ndarray | None:
        """Every rank's (index, loss bits, step) rows ordered as a per-step all-gather would have
        applied them -- step, then rank, then position -- or None when the headers disagree."""
        idx, vals, steps = _arrays(self.records)
        cap, n = self.capacity, idx.size
        head = np.array([n, self.table.crc(), *self.check], dtype=np.int64)
        payload = np.zeros(head.size + 3 * cap, dtype=np.int64)
        payload[: head.size] = head
        body = payload[head.size:].reshape(3, cap)
        bits = vals.view(np.int32)  # the float32 bits, exact in an int64 payload
        if n <= cap:
            body[0, :n], body[1, :n], body[2, :n] = idx, bits, steps
        rows = all_gather_fixed(torch.from_numpy(payload), self.group).numpy()
        heads, world = rows[:, : head.size], rows.shape[0]
        if (heads[:, 1:] != heads[0, 1:]).any():
            return None
        counts = heads[:, 0].tolist()
        if max(counts) <= cap:
            bodies = rows[:, head.size:].reshape(world, 3, cap)
            every = np.concatenate([bodies[r, :, :c] for r, c in enumerate(counts)], axis=1)
        else:
            mine = torch.from_numpy(np.stack([idx, bits.astype(np.int64), steps]))
            every = all_gather_varlen(mine, counts, self.group).numpy()
        ranks = np.repeat(np.arange(world, dtype=np.int64), counts)
        return every[:, np.argsort(every[2] * world + ranks, kind="stable")]
