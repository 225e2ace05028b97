"""The Ray executor: the same stages as the in-process loop, in actors.

::

    driver: submit(batch)  ->  embedder pool (StageActor[validate, embed, ...]) x service.embed_actors
                           ->  selector/writer (SelectWriteActor[select]): one, owns the index and the run
                           <-  BatchOutcome per batch, Committed per commit, in submission order

`StageActor` runs every stage upstream of the checkpointed one, whatever they are, as one chain on
each batch; `SelectWriteActor` runs the checkpointed select-and-write stage and its commits. The
driver never sees the embedded batches: each embedder's result goes straight to the selector/writer
actor, which runs its calls in submission order, so decisions follow the stream's order whatever the
embedders' timing (`scheduler`). Commits are queued behind the batches they cover and finish the
commit protocol (`curator.commit`) when they come back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray

from curator.batch import BatchOutcome, EmbeddedBatch, RawBatch, ValidBatch
from curator.commit import Committed, DeadLetters, Offsets, commit
from curator.config import ConfigError
from curator.records import Rejection
from curator.stages import EmbedInfo, Resources, Resume, SelectWriteStage, Stage, build_stages, run_chain
from pipelines.config import ServeConfig
from pipelines.executors.scheduler import Flight, Scheduler
from pipelines.executors.shards import start_shards
from pipelines.memory import rss_bytes

log = logging.getLogger("curator.service")


def graph_cpus(scfg: ServeConfig) -> float:
    """CPUs the actor graph reserves: the embedder pool, the selector/writer, the selector shards."""
    s, n = scfg.service, scfg.run.selector.shards
    return s.embed_actors * s.embed_num_cpus + s.selector_num_cpus + (n * s.shard_num_cpus if n > 1 else 0)


def init_ray(scfg: ServeConfig, extra_cpus: float = 0.0) -> tuple[Any, bool]:
    """Join or start Ray; returns (ray, whether this call initialised it and so must shut it down).
    A local instance gets at least the CPUs the graph reserves (plus `extra_cpus`), so it can start."""
    if ray.is_initialized():  # embedded in a process that already runs Ray (tests, notebooks)
        return ray, False
    s = scfg.service
    address = s.ray_address.strip() or os.environ.get("RAY_ADDRESS", "").strip()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        need = graph_cpus(scfg) + extra_cpus
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), include_dashboard=False,
                 object_store_memory=s.object_store_mb * 1024 * 1024, log_to_driver=True)
        log.info("started a local Ray instance (set service.ray_address or $RAY_ADDRESS to join a cluster)")
    return ray, True


@dataclass(frozen=True)
class ActorInfo:
    pid: int
    node_id: str
    node_ip: str
    setup: dict[str, Any]  # what each stage's setup() returned, by role


@dataclass(frozen=True)
class StageReport:
    """What the driver learns of a batch as soon as the embedders are done with it."""

    items: int
    rejects: list[Rejection]
    seconds: dict[str, float]


def actor_info(stages: list[Stage]) -> ActorInfo:
    """Set the stages up in this actor; where it runs and what each setup returned, by role."""
    infos = {s.name: s.setup() for s in stages}
    return ActorInfo(os.getpid(), ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), infos)


class StageActor:
    """A chain of stages in one process (any stages upstream of the checkpointed one, in order): set
    up once, then one batch at a time."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    def setup(self) -> ActorInfo:
        return actor_info(self.stages)

    def process(self, batch: RawBatch | ValidBatch) -> EmbeddedBatch:
        return run_chain(self.stages, batch)

    def process_reported(self, batch: RawBatch | ValidBatch) -> tuple[EmbeddedBatch, StageReport]:
        """`process`, plus a small report for the driver (two results: the batch goes on to the next
        actor without passing through the driver)."""
        out = run_chain(self.stages, batch)
        return out, StageReport(out.items, out.rejects, dict(out.seconds))

    def rss(self) -> int:
        return rss_bytes()


class SelectWriteActor:
    """The checkpointed select-and-write stage in its own process: batches in stream order, commits
    queued behind them."""

    def __init__(self, stage: SelectWriteStage) -> None:
        self.stage = stage

    def setup(self) -> ActorInfo:
        return actor_info([self.stage])

    def process(self, batch: EmbeddedBatch) -> BatchOutcome:
        return run_chain([self.stage], batch)

    def commit(self, bootstrapped: bool = False) -> Committed:
        """Everything processed so far made durable (steps 1-3 of `curator.commit`)."""
        return self.stage.commit(bootstrapped)

    def rss(self) -> int:
        return rss_bytes()


def reserved(stages: list[Stage]) -> Resources:
    """What an actor running these stages reserves: the sum of their declarations."""
    return sum((s.resources for s in stages), Resources())


class RayExecutor:
    """Creates the actors and moves batches through them in stream order, within the bounds.

    Single-threaded: call it from the driver loop only. ``dead_letters`` receives each batch's
    rejections as its outcome comes back (`send`), and is flushed before offsets are committed;
    ``offsets`` (the source) gets exactly the positions of each durable manifest.
    """

    def __init__(self, scfg: ServeConfig, metrics: Any = None, dead_letters: Any = None,
                 offsets: Offsets | None = None) -> None:
        self.scfg = scfg
        self.cfg = scfg.run
        self.metrics = metrics
        self.dead_letters: DeadLetters | Any = dead_letters
        self.offsets = offsets
        self.embedders: list[Any] = []
        self.shard_actors: list[Any] = []
        self.selector: Any = None
        self.sched: Scheduler | None = None
        self.resume: Resume | None = None
        self.embed_info: list[ActorInfo] = []
        self.selector_info: ActorInfo | None = None
        self.dim: int | None = None  # precomputed embeddings: the stream's dimension, once known
        self.dirty = 0  # stream items sent after the last commit was requested
        self.last_commit = time.monotonic()
        self.heartbeat = time.monotonic()
        self.t_first: float | None = None  # first stream batch submitted ...
        self.t_last: float | None = None  # ... and last stream batch decided: the throughput window
        self.items_done = 0
        self.counts: Counter[str] = Counter()
        self.index_size = 0
        self.observers: list[Any] = []  # note_rejections(rejects), note_commit(Committed): e.g. the status page

    # --- lifecycle ------------------------------------------------------------------
    def start(self, pool: bool = True, extra_cpus: float = 0.0) -> Resume:
        """Start the pool and the selector/writer actor; returns where the run resumes from.
        ``pool=False``: no embedder actors -- embedded batches come from elsewhere (`submit_embedded`) that
        needs the same resources, plus `extra_cpus` (its readers)."""
        s = self.scfg.service
        self._check_resources(extra_cpus)
        clients = None
        if self.cfg.selector.shards > 1:  # the shards' actors, spread over the nodes; the selector talks to them
            self.shard_actors, clients = start_shards(self.cfg, s.shard_num_cpus)
        stages = build_stages(self.cfg, {"embed": Resources(s.embed_num_cpus, s.embed_num_gpus),
                                         "select": Resources(s.selector_num_cpus)},
                              lock_timeout_s=max(30.0, 2 * self.scfg.kafka.session_timeout_ms / 1000), shards=clients)
        pool_stages = stages.upstream
        r = reserved(pool_stages)
        emb_cls = ray.remote(StageActor).options(num_cpus=r.cpus, num_gpus=r.gpus, max_restarts=3,
                                                 max_task_retries=3, scheduling_strategy="SPREAD")
        self.embedders = [emb_cls.remote(pool_stages) for _ in range(s.embed_actors if pool else 0)]
        self.embed_info = ray.get([a.setup.remote() for a in self.embedders])
        if self.embed_info:
            e0: EmbedInfo = self.embed_info[0].setup["embed"]
            log.info("embedder pool: %d x %s (%s CPU, %s GPU each), on nodes %s", len(self.embedders), e0.model_id,
                     r.cpus, r.gpus, sorted({i.node_id[:8] for i in self.embed_info}))
        # The selector/writer lives on the driver's node, so the run directory is where the logs say.
        here = ray.get_runtime_context().get_node_id()
        pin = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False)
        sel_cls = ray.remote(SelectWriteActor).options(num_cpus=stages.select.resources.cpus,
                                                       scheduling_strategy=pin, max_restarts=0)
        self.selector = sel_cls.remote(stages.select)
        self.selector_info = ray.get(self.selector.setup.remote())
        self.resume = self.selector_info.setup["select"]
        self.index_size = self.resume.index_size
        if self.shard_actors:
            self.shard_info = ray.get([a.describe.remote() for a in self.shard_actors])
            log.info("selector shards: %d, on nodes %s; selector shard actor pids %s", len(self.shard_actors),
                     sorted({i.node_id[:8] for i in self.shard_info}), [i.pid for i in self.shard_info])
        if self.cfg.embedder.kind == "precomputed":
            self.dim = s.embedding_dim or self.resume.index_dim
        self.sched = Scheduler(len(self.embedders), self.scfg.inflight() + s.max_selector_queue,
                               s.max_inflight_mb * 2**20)
        return self.resume

    def _check_resources(self, extra_cpus: float = 0.0) -> None:
        """Refuse a graph the cluster cannot place, instead of waiting forever for its actors."""
        s, n = self.scfg.service, self.cfg.selector.shards
        cpus = graph_cpus(self.scfg) + extra_cpus
        gpus = s.embed_actors * s.embed_num_gpus
        have = ray.cluster_resources()
        if cpus > have.get("CPU", 0) + 1e-9 or gpus > have.get("GPU", 0) + 1e-9:
            raise ConfigError(
                f"the graph needs {cpus:g} CPUs and {gpus:g} GPUs ({s.embed_actors} embedder actors x "
                f"{s.embed_num_cpus:g} CPU / {s.embed_num_gpus:g} GPU, the selector {s.selector_num_cpus:g} CPU"
                + (f", {n} shards x {s.shard_num_cpus:g} CPU" if n > 1 else "")
                + (f", readers {extra_cpus:g} CPU" if extra_cpus else "")
                + f"), but the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: "
                "lower service.embed_actors / *_num_cpus / embed_num_gpus, or add nodes")

    def actor_pids(self) -> dict[str, int]:
        """Local actor processes (same node as the driver), for the memory bound and metrics."""
        here = ray.get_runtime_context().get_node_id()
        out = {}
        if self.selector_info is not None and self.selector_info.node_id == here:
            out["selector"] = self.selector_info.pid
        for i, e in enumerate(self.embed_info):
            if e.node_id == here:
                out[f"embedder-{i}"] = e.pid
        for st in getattr(self, "shard_info", []):
            if st.node_id == here and st.pid:
                out[f"shard-{st.shard}"] = st.pid
        return out

    def shutdown(self) -> None:
        for a in [*self.embedders, self.selector, *self.shard_actors]:
            if a is not None:
                ray.kill(a, no_restart=True)
        self.embedders, self.selector, self.shard_actors = [], None, []

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

    def submit(self, batch: RawBatch, trusted: bool = False) -> None:
        """Send one batch (in stream order) to the least-loaded embedder, then on to the selector."""
        assert self.sched is not None
        batch.trusted = trusted
        batch.embedding_dim = self.dim
        i = self.sched.pick()
        embedded, report = self.embedders[i].process_reported.options(num_returns=2).remote(batch)
        ref = self.selector.process.remote(embedded)
        self.sched.add(Flight(ref, "batch", len(batch), batch.nbytes(), trusted, worker=i, report_ref=report))
        self._sent(len(batch), trusted)

    def submit_embedded(self, batch: EmbeddedBatch) -> None:
        """Send one batch embedded elsewhere (in stream order) straight to the selector: the Ray Data
        engine's path (`pipelines.drivers.ray_data`). Its rejections are handled now."""
        assert self.sched is not None
        self._note_report(StageReport(batch.items, batch.rejects, dict(batch.seconds)))
        nbytes = batch.samples.nbytes + sum(a.nbytes for a in (batch.emb.image, batch.emb.text) if a is not None) \
            if batch.emb is not None else batch.samples.nbytes
        self.sched.add(Flight(self.selector.process.remote(batch), "batch", batch.items, nbytes, batch.trusted))
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
        assert self.sched is not None
        self.dirty = 0
        self.sched.add(Flight(self.selector.commit.remote(bootstrapped), "commit"))

    def pump(self, timeout_s: float = 0.0) -> bool:
        """Handle whatever is ready; if nothing was and something is in flight, wait up to `timeout_s`."""
        assert self.sched is not None
        self.heartbeat = time.monotonic()
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
        while (f := self.sched.pop_ready()) is not None:
            moved = True
            if f.report_ref is not None:  # before anything after it: a commit flushes its dead letters
                self._on_report(f)
            result = ray.get(f.ref)
            if f.kind == "commit":
                self._on_commit(result)
            else:
                self._on_outcome(result, f)
        return moved

    def _on_report(self, f: Flight) -> None:
        """A batch left the embedders: its rejections go to the dead-letter sink now (flushed before
        the offsets of the commit that covers them)."""
        r: StageReport = ray.get(f.report_ref)
        f.report_ref = None
        self._note_report(r)

    def _note_report(self, r: StageReport) -> None:
        for o in self.observers:
            o.note_rejections(r.rejects)
        if r.rejects:
            if self.dead_letters is not None:
                self.dead_letters.send(r.rejects)
            if self.metrics is not None:
                self.metrics.dead_letters.inc(len(r.rejects))
        if self.metrics is not None:
            for stage, secs in r.seconds.items():
                self.metrics.batch_seconds.labels(stage).observe(secs)

    def _on_outcome(self, out: BatchOutcome, f: Flight) -> None:
        m = self.metrics
        if not f.trusted:
            self.items_done += out.items
            self.t_last = time.monotonic()
        if self.dim is None and self.cfg.embedder.kind == "precomputed" and out.index_dim:
            self.dim = out.index_dim
        self.counts.update(out.counts)
        self.index_size = out.index_size
        if m is not None:
            for d, n in out.counts.items():
                m.items_out.labels(d).inc(n)
            for stage in ("select", "write"):
                m.batch_seconds.labels(stage).observe(out.seconds.get(stage, 0.0))
            m.batch_seconds.labels("end_to_end").observe(time.perf_counter() - f.t0)
            for k, (items, secs) in out.shards.items():
                m.shard_items.labels(str(k)).set(items)
                if secs:
                    m.shard_search_seconds.labels(str(k)).observe(secs)
            m.index_size.set(self.index_size)

    def _on_commit(self, done: Committed) -> None:
        commit(lambda: done, self.dead_letters, self.offsets)  # steps 4-5 of the protocol
        self.last_commit = time.monotonic()
        for o in self.observers:
            o.note_commit(done)
        if self.metrics is not None:
            self.metrics.commits.inc()
            self.metrics.batch_seconds.labels("commit").observe(done.seconds)
            self.metrics.last_commit.set(time.time())
        log.info("commit %s durable (%d items decided by this run)", done.commit, sum(self.counts.values()))

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted has been decided (and its commits handled)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.idle():
            if deadline is not None and time.monotonic() > deadline:
                return False
            self.pump(0.2)
        return True

    def commit_now(self) -> None:
        """Drain, then commit if anything is uncommitted (a final or revoke-time commit)."""
        self.drain()
        if self.dirty:
            self.request_commit()
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

    def bootstrap(self, batches: Iterator[RawBatch], stop: threading.Event) -> int:
        """Trusted items through the same graph, then the bootstrap commit (once per run directory)."""
        n = 0
        for b in batches:
            while not self.room():
                self.pump(0.05)
            if stop.is_set():
                return -1
            self.submit(b, trusted=True)
            n += len(b)
            self.pump()
        self.drain()
        self.request_commit(bootstrapped=True)
        self.drain()
        return n
