"""Feeding the Ray executor from an iterator of batches, and the bootstrap that does so once per run.

The loops a driver with nothing else to do runs (the bootstrap of `curator serve`, the Ray Data
engine's stream): submit in stream order while the executor has room, handle results as they come
back, drain at the end. Drivers that poll a source (`pipelines.drivers`) run their own loops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from curator.batch import EmbeddedBatch, RawBatch
from pipelines.executors.ray import RayExecutor

Batch = RawBatch | EmbeddedBatch


def items_of(batch: Batch) -> int:
    """The input items a batch covers (each ends as exactly one decision)."""
    return batch.items if isinstance(batch, EmbeddedBatch) else len(batch)


def feed(ex: RayExecutor, batches: Iterable[Batch], stop: threading.Event | None = None) -> int:
    """Submit every batch within the executor's bounds, then drain; returns the items submitted, or
    -1 when `stop` was set first (nothing is drained then: a restart replays from the last commit)."""
    n = 0
    for b in batches:
        while not ex.room():
            ex.pump(0.05)
        if stop is not None and stop.is_set():
            return -1
        ex.submit(b)
        n += items_of(b)
        ex.pump()
    ex.drain()
    return n


def bootstrap(ex: RayExecutor, batches: Iterable[Batch], stop: threading.Event | None = None) -> int:
    """Trusted items through the same graph, then the bootstrap commit (once per run directory);
    returns the items inserted, or -1 when `stop` was set first."""
    n = feed(ex, _trusted(batches), stop)
    if n >= 0:
        ex.commit_now(bootstrapped=True)
    return n


def _trusted(batches: Iterable[Batch]) -> Iterator[Batch]:
    for b in batches:
        b.trusted = True
        yield b
