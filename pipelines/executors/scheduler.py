"""Bounded in-flight work, leaving in stream order: the Ray executor's only scheduling decision.

Batches are submitted in stream order; each goes to the least-loaded embedder actor and straight on
to the selector/writer actor (an actor runs its calls in submission order, so the selector sees the
stream's order whatever the embedders' timing). What is in flight is bounded by batches and by
bytes; results are handed back strictly in submission order.

Readiness is read from each reference's future (`ObjectRef.future()`: Ray sets it when the object
arrives), not by asking Ray with `ray.wait(..., timeout=0)` twice on every turn of the driver's loop:
each such call costs ~30 us of CPU and ~90 us of wall time (a round trip to Ray's core worker thread),
a look at eight futures ~6 us.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import ray


@dataclass
class Flight:
    """One call in flight: a batch through the graph, or a commit queued behind the batches."""

    ref: ray.ObjectRef  # the select-and-write actor's result
    kind: str  # "batch" | "commit"
    items: int = 0
    nbytes: int = 0
    trusted: bool = False
    t0: float = 0.0
    worker: int = -1  # the embedder actor it went to
    report_ref: ray.ObjectRef | None = None  # the pool's report on it (`StageActor.process_reported`), until handled
    done: Future[Any] = field(init=False, repr=False)
    report_done: Future[Any] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.done = self.ref.future()
        self.report_done = self.report_ref.future() if self.report_ref is not None else None

    def result(self) -> Any:
        """The call's result (it is done): the value its future already holds; a failure raises as
        `ray.get` raises it (the remote error as an instance of its cause's class)."""
        return _value(self.done, self.ref)

    def take_report(self) -> Any:
        """The pool's report on the batch (its embedder is done), once: the flight then has none."""
        assert self.report_ref is not None and self.report_done is not None
        try:
            return _value(self.report_done, self.report_ref)
        finally:
            self.report_ref = self.report_done = None


def _value(fut: Future[Any], ref: ray.ObjectRef) -> Any:
    if fut.exception() is None:
        return fut.result()
    return ray.get(ref)  # raises the way the callers' handlers expect


class Scheduler:
    def __init__(self, workers: int, max_batches: int, max_bytes: int = 0) -> None:
        self.max_batches = max(1, max_batches)
        self.max_bytes = max_bytes
        self.queue: deque[Flight] = deque()
        self.load = [0] * workers  # batches each embedder still has to embed
        self._rr = 0
        self.batches = 0
        self.nbytes = 0

    def room(self) -> bool:
        if self.batches >= self.max_batches:
            return False
        return not self.max_bytes or self.nbytes < self.max_bytes or self.batches == 0

    def idle(self) -> bool:
        return not self.queue

    def pick(self) -> int:
        """The least-loaded embedder (round robin among equals)."""
        n = len(self.load)
        i = min(range(n), key=lambda j: (self.load[j], (j - self._rr) % n))
        self._rr = (i + 1) % n
        return i

    def add(self, f: Flight) -> None:
        f.t0 = f.t0 or time.perf_counter()
        if f.kind == "batch":
            self.batches += 1
            self.nbytes += f.nbytes
            if f.worker >= 0:
                self.load[f.worker] += 1
        self.queue.append(f)

    def embedded(self) -> list[Flight]:
        """Batches whose embedder has just finished (in any order): their reports can be read now."""
        out = [f for f in self.queue if f.report_done is not None and f.report_done.done()]
        for f in out:
            self.load[f.worker] -= 1
        return out

    def pop_ready(self) -> Flight | None:
        """The oldest call, if its result is ready (results leave in submission order); read the
        reports of `embedded()` first."""
        if not self.queue or not self.queue[0].done.done():
            return None
        f = self.queue.popleft()
        if f.kind == "batch":
            self.batches -= 1
            self.nbytes -= f.nbytes
            if f.report_ref is not None:  # done, but not seen by `embedded()` yet: the caller reads it now
                self.load[f.worker] -= 1
        return f

    def wait(self, timeout_s: float) -> None:
        """Block until the oldest call (or an embedder) finishes, or `timeout_s`."""
        futs = [self.queue[0].done] if self.queue else []
        futs += [f.report_done for f in self.queue if f.report_done is not None]
        if futs:
            wait_futures(futs, timeout=timeout_s, return_when=FIRST_COMPLETED)

    def items(self, kind: str = "batch", trusted: bool | None = None) -> int:
        return sum(f.items for f in self.queue if f.kind == kind and (trusted is None or f.trusted == trusted))
