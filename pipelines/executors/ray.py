"""The Ray executor: the same stages as the in-process loop, in actors (`placement`), fed in stream order.

::

    driver: submit(batch)  ->  pool (StageActor[validate, embed, ...]) x service.embed_actors
                           ->  SelectWriteActor[select]: one, owns the index and the run directory
                           <-  BatchOutcome per batch, Committed per commit, in submission order

The driver never sees the embedded batches: each pool actor's result goes straight to the
select-and-write actor, which runs its calls in submission order, so decisions follow the stream's
order whatever the pool's timing (`scheduler`). A batch embedded elsewhere (Ray Data) goes straight
to the select-and-write actor. Commits are queued behind the batches they cover and finish the
commit protocol (`curator.commit`) when they come back; observers (`observers`: metrics, the status
page, a progress bar) hear about each batch and commit.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

import ray

from curator.batch import BatchOutcome, EmbeddedBatch, RawBatch
from curator.commit import Committed, DeadLetters, Offsets, commit
from curator.records import Rejection
from curator.select.shard import ShardStats
from curator.stages import Resume
from pipelines.config import ServeConfig
from pipelines.executors.actors import ActorInfo, StageReport
from pipelines.executors.observers import Observer
from pipelines.executors.placement import Graph, start_graph
from pipelines.executors.scheduler import Flight, Scheduler

log = logging.getLogger("curator.service")


class DeadLetterSink(DeadLetters, Protocol):
    """Where rejected input goes as it is found (flushed before the offsets of the commit covering it)."""

    def send(self, rejects: list[Rejection]) -> object: ...


class RayExecutor:
    """Starts the actors and moves batches through them in stream order, within the bounds.

    Single-threaded: call it from the driver loop only. ``dead_letters`` receives each batch's
    rejections as soon as the pool is done with it, and is flushed before offsets are committed;
    ``offsets`` (the source) gets exactly the positions of each durable manifest. ``embed_actors``:
    the pool's size (default `service.embed_actors`; 0 when batches come embedded, `submit` then
    takes only embedded batches). ``extra_cpus``: what the caller's own tasks (readers) reserve.
    """

    def __init__(self, scfg: ServeConfig, dead_letters: DeadLetterSink | None = None,
                 offsets: Offsets | None = None, observers: Iterable[Observer] = (),
                 embed_actors: int | None = None, extra_cpus: float = 0.0) -> None:
        self.scfg = scfg
        self.cfg = scfg.run
        self.dead_letters = dead_letters
        self.offsets = offsets
        self.observers: list[Observer] = list(observers)
        self.embed_actors = scfg.service.embed_actors if embed_actors is None else embed_actors
        self.extra_cpus = extra_cpus
        self.graph: Graph | None = None
        self.sched: Scheduler | None = None
        self.dim: int | None = None  # precomputed embeddings: the stream's dimension, once known
        self.dirty = 0  # stream items sent after the last commit was requested
        self.last_commit = time.monotonic()
        self.heartbeat = time.monotonic()
        self.t_first: float | None = None  # first stream batch submitted ...
        self.t_last: float | None = None  # ... and last stream batch decided: the throughput window
        self.items_done = 0
        self.counts: Counter[str] = Counter()
        self.index_size = 0

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> Resume:
        """Place the actors (`placement.start_graph`); returns where the run resumes from."""
        s = self.scfg.service
        self.graph = start_graph(self.scfg, self.embed_actors, self.extra_cpus)
        resume = self.graph.resume
        self.index_size = resume.index_size
        if self.cfg.embedder.kind == "precomputed":
            self.dim = s.embedding_dim or resume.index_dim
        self.sched = Scheduler(self.embed_actors, self.scfg.inflight() + s.max_selector_queue,
                               s.max_inflight_mb * 2**20)
        return resume

    def shutdown(self) -> None:
        """Kill the actors (what they reported when they started stays readable)."""
        if self.graph is not None:
            self.graph.shutdown()

    @property
    def selector_info(self) -> ActorInfo:
        assert self.graph is not None, "call start() first"
        return self.graph.selector_info

    @property
    def embed_info(self) -> list[ActorInfo]:
        return self.graph.embed_info if self.graph is not None else []

    @property
    def shard_info(self) -> list[ShardStats]:
        return self.graph.shard_info if self.graph is not None else []

    def actor_pids(self) -> dict[str, int]:
        """Local actor processes (same node as the driver), for the memory bound and metrics."""
        return self.graph.actor_pids() if self.graph is not None else {}

    # --- what a driver tells the executor ---------------------------------------------------------
    def fix_dimension(self, dim: int | None) -> None:
        """The stream's precomputed-embedding dimension, found by the caller before the first batch."""
        self.dim = dim

    def commit_offsets_to(self, offsets: Offsets) -> None:
        """Step 5 of the commit protocol: each durable manifest's positions go to `offsets` (a Kafka
        stream made after the executor, since it commits through it on a revoke)."""
        self.offsets = offsets

    def add_observer(self, o: Observer) -> None:
        self.observers.append(o)

    def beat(self) -> None:
        """The driver loop is alive (`/healthz`)."""
        self.heartbeat = time.monotonic()

    # --- flow -----------------------------------------------------------------------
    def room(self) -> bool:
        assert self.sched is not None
        if self.cfg.embedder.kind == "precomputed" and self.dim is None and not self.sched.idle():
            return False  # the first batch fixes the stream's dimension; the pool must agree on it
        return self.sched.room()

    def idle(self) -> bool:
        return self.sched is None or self.sched.idle()

    def queued_items(self) -> tuple[int, int]:
        """(items waiting for or in an embedder, items embedded and waiting for the selector)."""
        assert self.sched is not None
        emb = sum(f.items for f in self.sched.queue if f.kind == "batch" and f.report_ref is not None)
        return emb, self.sched.items() - emb

    def submit(self, batch: RawBatch | EmbeddedBatch) -> None:
        """Send one batch, in stream order: a raw one to the least-loaded pool actor and on to the
        select-and-write actor, an embedded one straight there (its rejections are handled now)."""
        if isinstance(batch, EmbeddedBatch):
            self._submit_embedded(batch)
            return
        assert self.sched is not None and self.graph is not None, "call start() first"
        if not self.graph.embedders:
            raise RuntimeError("this executor has no pool (embed_actors = 0): submit embedded batches")
        batch.embedding_dim = self.dim
        i = self.sched.pick()
        embedded: ray.ObjectRef
        report: ray.ObjectRef
        embedded, report = self.graph.embedders[i].process_reported.options(num_returns=2).remote(batch)
        ref = self.graph.selector.process.remote(embedded)
        self.sched.add(Flight(ref, "batch", len(batch), batch.nbytes(), batch.trusted, worker=i, report_ref=report))
        self._sent(len(batch), batch.trusted)

    def _submit_embedded(self, batch: EmbeddedBatch) -> None:
        assert self.sched is not None and self.graph is not None, "call start() first"
        self._note_report(StageReport(batch.items, batch.rejects, dict(batch.seconds)))
        nbytes = batch.samples.nbytes + sum(a.nbytes for a in (batch.emb.image, batch.emb.text) if a is not None) \
            if batch.emb is not None else batch.samples.nbytes
        self.sched.add(Flight(self.graph.selector.process.remote(batch), "batch", batch.items, nbytes, batch.trusted))
        self._sent(batch.items, batch.trusted)

    def _sent(self, items: int, trusted: bool) -> None:
        if not trusted:
            self.dirty += items
            if self.t_first is None:
                self.t_first = time.monotonic()
            if self.dirty >= self.cfg.store.commit_every:
                self.request_commit()

    def request_commit(self, bootstrapped: bool = False) -> None:
        """Commit what the selector has been sent so far (the commit queues behind it on the actor)."""
        assert self.sched is not None and self.graph is not None, "call start() first"
        self.dirty = 0
        self.sched.add(Flight(self.graph.selector.commit.remote(bootstrapped), "commit"))

    def pump(self, timeout_s: float = 0.0) -> bool:
        """Handle whatever is ready; if nothing was and something is in flight, wait up to `timeout_s`."""
        assert self.sched is not None
        self.beat()
        moved = self._advance()
        if not moved and timeout_s > 0 and not self.sched.idle():
            self.sched.wait(timeout_s)
            moved = self._advance()
        return moved

    def _advance(self) -> bool:
        assert self.sched is not None
        moved = False
        for f in self.sched.embedded():
            self._on_report(f)
            moved = True
        while (ready := self.sched.pop_ready()) is not None:
            moved = True
            if ready.report_ref is not None:  # before anything after it: a commit flushes its dead letters
                self._on_report(ready)
            result = ready.result()
            if ready.kind == "commit":
                self._on_commit(result)
            else:
                self._on_outcome(result, ready)
        return moved

    def _on_report(self, f: Flight) -> None:
        """A batch left the pool: its rejections go to the dead-letter sink now (flushed before the
        offsets of the commit that covers them)."""
        r: StageReport = f.take_report()
        self._note_report(r)

    def _note_report(self, r: StageReport) -> None:
        if r.rejects and self.dead_letters is not None:
            self.dead_letters.send(r.rejects)
        for o in self.observers:
            o.note_rejections(r.rejects)
            o.note_upstream(r.seconds)

    def _on_outcome(self, out: BatchOutcome, f: Flight) -> None:
        if not f.trusted:
            self.items_done += out.items
            self.t_last = time.monotonic()
        if self.dim is None and self.cfg.embedder.kind == "precomputed" and out.index_dim:
            self.dim = out.index_dim
        self.counts.update(out.counts)
        self.index_size = out.index_size
        for o in self.observers:
            o.note_outcome(out, f.trusted, time.perf_counter() - f.t0)

    def _on_commit(self, done: Committed) -> None:
        commit(lambda: done, self.dead_letters, self.offsets)  # steps 4-5 of the protocol
        self.last_commit = time.monotonic()
        for o in self.observers:
            o.note_commit(done)
        log.info("commit %s durable (%d items decided by this run)", done.commit, sum(self.counts.values()))

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted has been decided (and its commits handled)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.idle():
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.pump(0.2)
        return True

    def commit_now(self, bootstrapped: bool = False) -> None:
        """Drain, then commit if anything is uncommitted (a final or revoke-time commit), or always when
        this is the bootstrap's commit."""
        self.drain()
        if self.dirty or bootstrapped:
            self.request_commit(bootstrapped)
            self.drain()

    def maybe_commit_by_time(self) -> None:
        assert self.sched is not None
        every = self.scfg.service.commit_interval_s
        if every > 0 and self.dirty and time.monotonic() - self.last_commit >= every \
                and not any(f.kind == "commit" for f in self.sched.queue):
            self.request_commit()

    def throughput(self) -> tuple[int, float]:
        """(stream items decided, seconds from the first one sent to the last one decided)."""
        if self.t_first is None or self.t_last is None:
            return self.items_done, 0.0
        return self.items_done, self.t_last - self.t_first
