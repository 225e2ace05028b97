"""The ingestion actor graph on Ray, and the driver loop that feeds it.

::

    source (Kafka partitions | files)          driver: poll, order, bound, commit offsets
      -> OrderedMerge                          one deterministic stream order (below)
      -> EmbedWorker pool                      validate + embed; bounded in-flight batches
      -> reorder (FIFO of submitted batches)   results leave in submission = stream order
      -> CurationWorker                        the core's `Curation`: select (owns the index) + write
      -> commit                                manifest durable -> dead letters flushed -> Kafka offsets

The core is composed, not reimplemented: each `EmbedWorker` holds the embedder that
`build_embedder` gives, and the one `CurationWorker` holds a `curator.ingest.Curation` whose
embedder is a hand-off (`PoolEmbedder`) that returns the vectors the pool computed for that
batch. Validation is a pure function, so the pool's and the selector's views of a batch agree.

**Exactly-once, in the order it happens** (`Graph._on_result`, `KafkaDriver._on_commit`):

1. a batch is processed by `Curation.process` in stream order; its rows are only staged;
2. `Curation.commit` writes the Parquet parts, the FAISS snapshot, then the manifest (temp file,
   fsync, rename) naming them with the positions they cover and the selector's state;
3. only then does the driver flush the dead-letter producer and commit exactly the manifest's
   positions to the consumer group.

A crash anywhere before 2 finishes leaves the previous manifest, whose positions the restarted
service replays from (`KafkaSource` seeks to max(manifest, group commit); the group commit is never
ahead of the manifest); a crash between 2 and 3 replays nothing twice because the manifest wins.
The run directory is locked by the one `CurationWorker`, so a restarted service waits for the
previous one's actor to be gone before it reads the manifest.

**Stream order.** Decisions depend on the order of items, so the order must not depend on timing.
Files are read in order. A Kafka topic's partitions are interleaved by ``(offset, partition)``:
message (o, p) is emitted only once every other partition has either delivered a message at a
larger key or is caught up (its consumer position has reached its end offset). For data that is in
the topic when it is read (a backfill, a replay after a crash) this is a pure function of the
topic's contents, so a restarted run makes exactly the uninterrupted run's decisions; and because
`curator produce` spreads records round-robin, it is also the order of the produced file. For
data still arriving, a caught-up partition is skipped rather than waited for, so only items that
arrive while another partition is ahead can interleave differently on a replay (still each exactly
once). ``kafka.order = "arrival"`` trades the guarantee for never waiting on a slow partition.

**Bounded memory.** Items buffered in the merge are capped (a partition past its share has its tail
dropped and is re-read later -- never the partition the merge waits for), embedding batches in
flight are capped, the selector's queue is capped, and ``service.memory_limit_mb`` caps resident
memory; past a cap the driver stops polling, so the backlog stays in Kafka.

**Bad input never stops the stream.** Sources turn unreadable messages into rejections; validation
and the embedders reject bad records with a reason (labels beyond int64 and text with lone
surrogates included); as a last line of defence, a batch on which validation still raises is
split record by record and the offending one rejected (`safe_batch`).
Every rejection reaches the quarantine table and, before its offsets are committed, the dead-letter
topic.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from connectors.base import Positions, RawBatch
from curator.config import EmbedderConfig, RunConfig
from curator.embed import Embeddings, PrecomputedEmbedder, build_embedder
from curator.ingest import embedding_rejections
from curator.records import (
    Limits,
    Position,
    Rejection,
    rejection_decisions,
    rejections_table,
    validate_records,
)

log = logging.getLogger("curator.service")

LOCK_NAME = ".curator-service.lock"


# =====================================================================================
# Stream order
# =====================================================================================


@dataclass
class _Unit:
    """One source message: its rows (an Arrow message has several) or its rejection."""

    offset: int
    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.errors)


class OrderedMerge:
    """Interleaves the partitions of one topic into one stream, message by message.

    ``order="offset"``: by (offset, partition), waiting for a partition that may still deliver a
    smaller key unless it is marked caught up; ``order="arrival"``: as added. Messages are never
    split, so a batch (and so a commit) always ends between messages.
    """

    def __init__(self, topic: str, order: str = "offset") -> None:
        if order not in ("offset", "arrival"):
            raise ValueError(f"order must be 'offset' or 'arrival', got {order!r}")
        self.topic = topic
        self.order = order
        self.buf: dict[int, deque[_Unit]] = {}
        self.next: dict[int, int | None] = {}  # smallest offset a partition can still deliver (None = unknown)
        self.caught_up: dict[int, bool] = {}
        self._arrival: deque[tuple[int, _Unit]] = deque()
        self.items = 0
        self._seen_next: dict[int, int | None] = {}  # offset after the last message added, per partition
        self.gaps: Counter[int] = Counter()  # offsets skipped by the source (retention, compaction, markers)

    # --- partitions -----------------------------------------------------------------
    def assign(self, partitions: list[int], start: dict[int, int] | None = None) -> None:
        for p in partitions:
            if p not in self.buf:
                self.buf[p] = deque()
                self.next[p] = (start or {}).get(p)
                self._seen_next[p] = self.next[p]
                self.caught_up[p] = False

    def revoke(self, partitions: list[int]) -> None:
        gone = set(partitions)
        for p in gone:
            for u in self.buf.pop(p, deque()):
                self.items -= len(u)
            self.next.pop(p, None)
            self._seen_next.pop(p, None)
            self.caught_up.pop(p, None)
        self._arrival = deque((p, u) for p, u in self._arrival if p not in gone)

    @property
    def partitions(self) -> list[int]:
        return sorted(self.buf)

    def buffered(self, p: int) -> int:
        return sum(len(u) for u in self.buf.get(p, ()))

    # --- input ----------------------------------------------------------------------
    def add(self, batch: RawBatch) -> int:
        """Buffer a polled batch (records and rejections of any partitions); returns items added."""
        items: list[tuple[Position, dict[str, Any] | None, Rejection | None]] = [
            (pos, rec, None) for rec, pos in zip(batch.records, batch.positions, strict=True)
        ] + [(e.position, None, e) for e in batch.errors]
        items.sort(key=lambda t: (t[0].partition, t[0].offset))  # stable: rows of a message keep their order
        for pos, rec, err in items:
            p = pos.partition
            if p not in self.buf:
                self.assign([p])
            q = self.buf[p]
            if q and q[-1].offset == pos.offset:
                u = q[-1]
            else:
                if q and pos.offset < q[-1].offset:
                    raise ValueError(f"partition {p} went back from offset {q[-1].offset} to {pos.offset}")
                u = _Unit(pos.offset)
                q.append(u)
                seen = self._seen_next.get(p)
                if seen is not None and pos.offset > seen:
                    self.gaps[p] += pos.offset - seen
                self._seen_next[p] = pos.offset + 1
                if self.order == "arrival":
                    self._arrival.append((p, u))
            if err is not None:
                u.errors.append(err)
            else:
                u.records.append(rec)  # type: ignore[arg-type]
                u.positions.append(pos)
            self.caught_up[p] = False
            self.items += 1
        return len(items)

    def mark_position(self, p: int, position: int, caught_up: bool) -> None:
        """The consumer's next offset for an empty partition, and whether it reached the end offset."""
        if p in self.buf and not self.buf[p]:
            nxt = self.next.get(p)
            self.next[p] = position if nxt is None else max(nxt, position)
            self.caught_up[p] = caught_up

    # --- output ---------------------------------------------------------------------
    def _head(self) -> tuple[int, int] | None:
        heads = [(q[0].offset, p) for p, q in self.buf.items() if q]
        return min(heads) if heads else None

    def blockers(self) -> list[int]:
        """Empty partitions that may still deliver a message ordered before the current head."""
        if self.order == "arrival":
            return []
        head = self._head()
        out = []
        for p, q in self.buf.items():
            if q or self.caught_up.get(p):
                continue
            nxt = self.next.get(p)
            if head is None or nxt is None or (nxt, p) < head:
                out.append(p)
        return sorted(out)

    def available(self, limit: int) -> int:
        """How many items (whole messages, up to about `limit`) `pop` could emit right now."""
        if self.order == "arrival":
            return min(self.items, limit)
        idx = dict.fromkeys(self.buf, 0)
        nxt = dict(self.next)
        n = 0
        while n < limit:
            heads = [(q[idx[p]].offset, p) for p, q in self.buf.items() if idx[p] < len(q)]
            if not heads:
                break
            head = min(heads)
            for p, q in self.buf.items():
                if idx[p] >= len(q) and not self.caught_up.get(p) and (nxt.get(p) is None or (nxt[p], p) < head):
                    return n
            p = head[1]
            u = self.buf[p][idx[p]]
            idx[p] += 1
            nxt[p] = u.offset + 1
            n += len(u)
        return n

    def pop(self, max_items: int) -> RawBatch | None:
        """Up to `max_items` items (whole messages) that can go now, in stream order; None if none."""
        out = RawBatch()
        while len(out) < max_items:
            if self.order == "arrival":
                if not self._arrival:
                    break
                p, u = self._arrival.popleft()
                self.buf[p].popleft()
            else:
                head = self._head()
                if head is None or self.blockers():
                    break
                p = head[1]
                u = self.buf[p].popleft()
            self.next[p] = u.offset + 1
            self.items -= len(u)
            out.records += u.records
            out.positions += u.positions
            out.errors += u.errors
        return out if len(out) else None

    def trim(self, p: int, keep_items: int) -> int | None:
        """Drop the tail of partition `p`'s buffer beyond `keep_items` (at least its head message is
        kept); returns the first dropped offset, to seek the consumer back to, or None."""
        q = self.buf.get(p)
        if not q:
            return None
        kept, cut = 0, None
        for i, u in enumerate(q):
            if i > 0 and kept + len(u) > keep_items:
                cut = i
                break
            kept += len(u)
        if cut is None:
            return None
        first = q[cut].offset
        self._seen_next[p] = first
        while len(q) > cut:
            u = q.pop()
            self.items -= len(u)
        if self.order == "arrival":
            self._arrival = deque((pp, u) for pp, u in self._arrival if pp != p or u.offset < first)
        return first

    def end(self) -> None:
        """Every partition has ended (a bounded run): nothing is waited for any more."""
        for p in self.buf:
            self.caught_up[p] = True


# =====================================================================================
# Actors
# =====================================================================================


def _rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default); 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # not Linux: psutil (Ray ships one)

        return int(psutil.Process(pid or os.getpid()).memory_info().rss)
    except Exception:  # noqa: BLE001 - gone, or no permission: no number
        return 0


class EmbedWorker:
    """One embedder of the pool: validate a raw batch, embed its valid rows, report rejections."""

    def __init__(self, cfg: EmbedderConfig) -> None:
        self.limits = Limits()
        self.embedder = build_embedder(cfg, self.limits)

    def setup(self) -> dict[str, Any]:
        self.embedder.setup()
        return {"model_id": self.embedder.model_id, "image_dim": self.embedder.image_dim,
                "text_dim": self.embedder.text_dim, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def embed(self, batch: RawBatch, dim: int | None = None) -> tuple[Embeddings | None, dict[str, Any]]:
        """(embeddings of the valid rows in order, or None; {rejects, seconds, batch}) -- two object refs.

        ``batch`` is set when the batch had to be made safe first (`safe_batch`): the selector must then
        process that batch, not the one it was sent.
        """
        t0 = time.perf_counter()
        if dim and isinstance(self.embedder, PrecomputedEmbedder) and self.embedder.image_dim is None:
            self.embedder.setup(dim)
        fixed = None
        try:
            samples, rejects = validate_records(batch.records, batch.positions, self.limits)
            rejects = list(batch.errors) + rejects
            _check_storable(rejects)
        except Exception:  # noqa: BLE001 - a record validation raised on instead of rejecting
            batch = fixed = safe_batch(batch, self.limits)
            samples, rejects = validate_records(batch.records, batch.positions, self.limits)
            rejects = list(batch.errors) + rejects
        emb = self.embedder.embed(samples) if samples.num_rows else None
        if emb is not None and emb.errors:
            rejects.extend(embedding_rejections(samples, emb.errors))  # as Curation records them
        return emb, {"rejects": rejects, "seconds": time.perf_counter() - t0, "rows": samples.num_rows,
                     "batch": fixed}

    def rss(self) -> int:
        return _rss_bytes()


def _storable(text: str | None) -> str | None:
    """Text Arrow can store (lone surrogates, which JSON escapes can carry, cannot be UTF-8 encoded)."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_storable(rejects: list[Rejection]) -> None:
    """Raise if the quarantine / decision rows of these rejections cannot be built."""
    if rejects:
        rejections_table(rejects)
        rejection_decisions(rejects, "", "")


def safe_batch(batch: RawBatch, limits: Limits | None = None) -> RawBatch:
    """A copy of `batch` in which every record the core cannot even validate or record -- anything
    that makes validation raise instead of reject -- is a rejection at its position instead.

    Bad input must never stop the stream: a record that raised inside `Curation.process` would fail
    its batch again on every replay.
    """
    from curator.records import _raw_preview

    errors = []
    for e in batch.errors:
        rid, reason = _storable(e.id), _storable(e.reason) or ""
        errors.append(e if (rid, reason) == (e.id, e.reason) else Rejection(e.position, reason, rid, e.raw))
    out = RawBatch(errors=errors)
    for rec, pos in zip(batch.records, batch.positions, strict=True):
        try:
            _check_storable(validate_records([rec], [pos], limits)[1])
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this record's fault
            rid = rec.get("id") if isinstance(rec, dict) else None
            out.errors.append(Rejection(pos, _storable(f"record cannot be processed ({type(exc).__name__}: "
                                                       f"{str(exc)[:300]})") or "",
                                        None if rid is None else _storable(str(rid)[:200]), _raw_preview(rec)))
            continue
        out.records.append(rec)
        out.positions.append(pos)
    return out


class PoolEmbedder:
    """The `Embedder` the CurationWorker's `Curation` uses: it hands back what the pool computed.

    `model_id`, dimensions and `embed_texts` (recaption scoring, which needs the model) behave like
    the configured embedder's; the model itself is only loaded here if a caption must be re-embedded.
    """

    def __init__(self, cfg: EmbedderConfig, info: dict[str, Any]) -> None:
        self.cfg = cfg
        self.kind = cfg.kind
        self._model_id = info.get("model_id", "")
        self.text_dim: int | None = info.get("text_dim")
        self.image_dim: int | None = info.get("image_dim")
        self._inner = PrecomputedEmbedder(cfg) if cfg.kind == "precomputed" else None
        self._model: Any = None
        self.next: Embeddings | None = None

    @property
    def model_id(self) -> str:
        return self._inner.model_id if self._inner is not None else self._model_id

    def setup(self) -> None:
        """Nothing to load: the pool holds the model."""

    def embed(self, samples: pa.Table) -> Embeddings:
        emb, self.next = self.next, None
        if emb is None or len(emb) != samples.num_rows:
            raise RuntimeError(f"pool embeddings do not match the batch ({None if emb is None else len(emb)} "
                               f"rows for {samples.num_rows}): the pool and the selector validated differently")
        if self._inner is not None and emb.image is not None and self._inner.image_dim is None:
            self._inner.setup(int(emb.image.shape[1]))  # model id 'precomputed:D' from here on, as in-process
        return emb

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = build_embedder(self.cfg)
            self._model.setup()
        return self._model.embed_texts(texts)


class RunDirLock:
    """An exclusive lock on a run directory: one writer at a time, across processes and restarts."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fh: Any = None

    def acquire(self, timeout_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the actor's life
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    fh.close()
                    raise RuntimeError(f"{self.path.parent} is in use by another curator service or a previous "
                                       f"one still shutting down (lock {self.path}); waited {timeout_s:.0f}s") from None
                time.sleep(0.1)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh


class CurationWorker:
    """The one actor that owns the run: `Curation` (selector + index + store writer)."""

    def __init__(self, cfg: RunConfig, embed_info: dict[str, Any]) -> None:
        from curator.ingest import Curation

        self.cfg = cfg
        self.handoff = PoolEmbedder(cfg.embedder, embed_info)
        self.cur = Curation(cfg, embedder=self.handoff)
        self.lock = RunDirLock(cfg.store.out)

    def setup(self, lock_timeout_s: float = 60.0) -> dict[str, Any]:
        self.lock.acquire(lock_timeout_s)
        self.cur.setup()
        sel = self.cur.selector
        assert sel is not None
        dim = sel.indexes["image"].dim if "image" in sel.indexes else None
        return {
            "positions": self.cur.positions, "bootstrapped": self.cur.bootstrapped,
            "commit": self.cur.resumed_from, "decided": sel.seq, "index_dim": dim, "index_size": len(sel),
            "out": str(Path(self.cfg.store.out).resolve()), "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
        }

    def process(self, batch: RawBatch, emb: Embeddings | None, trusted: bool, may_commit: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.handoff.next = emb
        res = self.cur.process(batch, trusted=trusted)
        out: dict[str, Any] = {"kind": "process", "items": res.items, "counts": dict(res.counts),
                               "seconds": time.perf_counter() - t0, "index_size": len(self.cur.selector or [])}
        if may_commit and not trusted and self.cur.should_commit():
            out["commit"] = self._commit()
        return out

    def _commit(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        m = self.cur.commit()
        return {"commit": m["commit"], "positions": m["positions"], "seconds": time.perf_counter() - t0}

    def commit(self) -> dict[str, Any]:
        return {"kind": "commit", "commit": self._commit()}

    def finish_bootstrap(self) -> dict[str, Any]:
        """After the trusted batches went through `process(trusted=True)`: mark and commit, as run_bootstrap."""
        self.cur.run_bootstrap([])  # no more batches: sets `bootstrapped` and commits
        m = self.cur.writer.manifest if self.cur.writer else {}
        return {"kind": "commit", "commit": {"commit": m.get("commit"), "positions": m.get("positions", {}),
                                              "seconds": 0.0}, "index_size": len(self.cur.selector or [])}

    def rss(self) -> int:
        return _rss_bytes()


# =====================================================================================
# Driver side: the graph with its bounded queues
# =====================================================================================


@dataclass
class _InFlight:
    batch_ref: Any
    emb_ref: Any
    info_ref: Any
    items: int
    trusted: bool
    t0: float
    worker: int


@dataclass
class _Selecting:
    ref: Any
    items: int
    t0: float
    kind: str = "process"
    trusted: bool = False


class Graph:
    """Creates the actors and moves batches through them in stream order, within the bounds.

    Single-threaded: call it from the driver loop only. Callbacks: ``on_rejects(rejections)`` as
    each batch leaves the pool (for the dead-letter sink), ``on_commit(commit_info)`` after each
    durable manifest (to commit source positions).
    """

    def __init__(self, scfg: Any, metrics: Any = None) -> None:
        self.scfg = scfg
        self.cfg: RunConfig = scfg.run
        self.metrics = metrics
        self.embedders: list[Any] = []
        self.curation: Any = None
        self.embed_q: deque[_InFlight] = deque()
        self.select_q: deque[_Selecting] = deque()
        self.on_rejects: Callable[[list[Rejection]], None] | None = None
        self.on_commit: Callable[[dict[str, Any]], None] | None = None
        self.dim: int | None = None
        self._probe: PrecomputedEmbedder | None = None
        self._rr = 0
        self._load: list[int] = []
        self.dirty = 0  # items sent to the selector after the last commit was requested (what it would add)
        self.last_commit = time.monotonic()
        self.heartbeat = time.monotonic()  # the driver loop is alive (it pumps at least every few 100 ms)
        self.t_first: float | None = None  # first stream batch submitted ...
        self.t_last: float | None = None  # ... and last stream batch selected: the throughput window
        self.items_done = 0
        self.counts: Counter[str] = Counter()
        self.index_size = 0
        self.info: dict[str, Any] = {}
        self.embed_info: list[dict[str, Any]] = []

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Start the pool and the selector actor; returns where the run resumes from."""
        s = self.scfg.service
        here = ray.get_runtime_context().get_node_id()
        pin = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(here, soft=False)
        emb_cls = ray.remote(EmbedWorker).options(
            num_cpus=s.embed_num_cpus, num_gpus=s.embed_num_gpus, max_restarts=3, max_task_retries=3)
        for _ in range(s.embed_actors):
            self.embedders.append(emb_cls.remote(self.cfg.embedder))
        self._load = [0] * len(self.embedders)
        self.embed_info = ray.get([a.setup.remote() for a in self.embedders])
        e0 = self.embed_info[0]
        log.info("embedder pool: %d x %s (%s CPU, %s GPU each)", len(self.embedders), e0["model_id"],
                 s.embed_num_cpus, s.embed_num_gpus)
        # The selector/writer lives on the driver's node, so the run directory is where the logs say.
        cur_cls = ray.remote(CurationWorker).options(num_cpus=s.selector_num_cpus, scheduling_strategy=pin,
                                                     max_restarts=0)
        self.curation = cur_cls.remote(self.cfg, e0)
        self.info = ray.get(self.curation.setup.remote(max(30.0, 2 * self.scfg.kafka.session_timeout_ms / 1000)))
        self.index_size = int(self.info["index_size"])
        if self.cfg.embedder.kind == "precomputed":
            self.dim = s.embedding_dim or self.info.get("index_dim") or e0.get("image_dim")
            if self.dim is None:
                self._probe = PrecomputedEmbedder(self.cfg.embedder)
        return self.info

    def actor_pids(self) -> dict[str, int]:
        """Local actor processes (same node as the driver), for the memory bound and metrics."""
        here = ray.get_runtime_context().get_node_id()
        out = {}
        if self.info.get("node_id") == here:
            out["selector"] = int(self.info["pid"])
        for i, e in enumerate(self.embed_info):
            if e.get("node_id") == here:
                out[f"embedder-{i}"] = int(e["pid"])
        return out

    def shutdown(self) -> None:
        for a in [*self.embedders, self.curation]:
            if a is not None:
                ray.kill(a, no_restart=True)
        self.embedders, self.curation = [], None

    # --- flow -----------------------------------------------------------------------
    def room(self) -> bool:
        return len(self.embed_q) < self.scfg.inflight()

    def queued_items(self) -> tuple[int, int]:
        return sum(x.items for x in self.embed_q), sum(x.items for x in self.select_q)

    def idle(self) -> bool:
        return not self.embed_q and not self.select_q

    def _dim_for(self, batch: RawBatch) -> int | None:
        """Precomputed vectors: the dimension fixed by the first valid vector in stream order."""
        if self._probe is not None and self.dim is None:
            try:
                samples, _ = validate_records(batch.records, batch.positions)
            except Exception:  # noqa: BLE001 - a record validation raises on (see safe_batch)
                b = safe_batch(batch)
                samples, _ = validate_records(b.records, b.positions)
            if samples.num_rows:
                self._probe.embed(samples)
                self.dim = self._probe.image_dim
        return self.dim

    def submit(self, batch: RawBatch, trusted: bool = False) -> None:
        """Send one batch (in stream order) to the least-loaded embedder."""
        dim = self._dim_for(batch)
        i = min(range(len(self.embedders)), key=lambda j: (self._load[j], (j - self._rr) % len(self.embedders)))
        self._rr = (i + 1) % len(self.embedders)
        self._load[i] += 1
        ref = ray.put(batch)
        emb_ref, info_ref = self.embedders[i].embed.options(num_returns=2).remote(ref, dim)
        self.embed_q.append(_InFlight(ref, emb_ref, info_ref, len(batch), trusted, time.perf_counter(), i))
        if not trusted and self.t_first is None:
            self.t_first = time.monotonic()

    def request_commit(self) -> None:
        """Commit what the selector has been sent so far (the commit queues behind it on the actor)."""
        self.dirty = 0
        self.select_q.append(_Selecting(self.curation.commit.remote(), 0, time.perf_counter(), "commit"))

    def finish_bootstrap(self) -> None:
        self.drain()
        self.select_q.append(_Selecting(self.curation.finish_bootstrap.remote(), 0, time.perf_counter(), "commit"))
        self.drain()

    def _ready(self, ref: Any) -> bool:
        done, _ = ray.wait([ref], num_returns=1, timeout=0)
        return bool(done)

    def _advance(self) -> bool:
        moved = False
        while self.select_q and self._ready(self.select_q[0].ref):
            x = self.select_q.popleft()
            self._on_result(ray.get(x.ref), x)
            moved = True
        while self.embed_q and len(self.select_q) < self.scfg.service.max_selector_queue \
                and self._ready(self.embed_q[0].info_ref):
            x = self.embed_q.popleft()
            self._load[x.worker] -= 1
            info = ray.get(x.info_ref)
            if info.get("batch") is not None:  # the pool turned records the core cannot take into rejections
                x.batch_ref = ray.put(info["batch"])
            if self.metrics is not None:
                self.metrics.batch_seconds.labels("embed").observe(info["seconds"])
            if info["rejects"] and self.on_rejects is not None:
                self.on_rejects(info["rejects"])
            ref = self.curation.process.remote(x.batch_ref, x.emb_ref, x.trusted, not x.trusted)
            self.select_q.append(_Selecting(ref, x.items, x.t0, "process", x.trusted))
            if not x.trusted:
                self.dirty += x.items
            moved = True
        return moved

    def _on_result(self, res: dict[str, Any], x: _Selecting) -> None:
        m = self.metrics
        if res["kind"] == "process":
            if not x.trusted:
                self.items_done += res["items"]
                self.t_last = time.monotonic()
            self.counts.update(res["counts"])
            self.index_size = res["index_size"]
            if m is not None:
                for d, n in res["counts"].items():
                    m.items_out.labels(d).inc(n)
                m.batch_seconds.labels("select").observe(res["seconds"])
                m.batch_seconds.labels("end_to_end").observe(time.perf_counter() - x.t0)
                m.index_size.set(self.index_size)
        if "index_size" in res and m is not None:
            m.index_size.set(res["index_size"])
        c = res.get("commit")
        if c is not None:
            if res["kind"] == "process":  # an automatic commit: what was sent after it is uncommitted
                self.dirty = sum(y.items for y in self.select_q if y.kind == "process" and not y.trusted)
            self.last_commit = time.monotonic()
            if m is not None:
                m.commits.inc()
                m.batch_seconds.labels("commit").observe(c["seconds"])
                m.last_commit.set(time.time())
            log.info("commit %s durable (%d items decided by this run)", c["commit"], sum(self.counts.values()))
            if self.on_commit is not None:
                self.on_commit(c)

    def pump(self, timeout_s: float = 0.0) -> bool:
        """Move whatever is ready; if nothing was and something is in flight, wait up to `timeout_s`."""
        self.heartbeat = time.monotonic()
        moved = self._advance()
        if not moved and timeout_s > 0 and not self.idle():
            refs = []
            if self.select_q:
                refs.append(self.select_q[0].ref)
            if self.embed_q and len(self.select_q) < self.scfg.service.max_selector_queue:
                refs.append(self.embed_q[0].info_ref)
            if refs:
                ray.wait(refs, num_returns=1, timeout=timeout_s)
            moved = self._advance()
        return moved

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted has been selected (and its commits handled)."""
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

    def throughput(self) -> tuple[int, float]:
        """(stream items decided, seconds from the first one sent to the last one decided)."""
        if self.t_first is None or self.t_last is None:
            return self.items_done, 0.0
        return self.items_done, self.t_last - self.t_first

    def maybe_commit_by_time(self) -> None:
        every = self.scfg.service.commit_interval_s
        if every > 0 and self.dirty and time.monotonic() - self.last_commit >= every \
                and not any(x.kind == "commit" for x in self.select_q):
            self.request_commit()

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
        self.finish_bootstrap()
        return n


# =====================================================================================
# Driver loops
# =====================================================================================


class Driver:
    """Runs a source through the graph until it ends or `stop` is set; then drains and commits."""

    def __init__(self, scfg: Any, graph: Graph, metrics: Any, stop: threading.Event) -> None:
        self.scfg = scfg
        self.cfg: RunConfig = scfg.run
        self.graph = graph
        self.metrics = metrics
        self.stop = stop
        self.heartbeat = time.monotonic()
        self.ended = False
        self._pids: dict[str, int] = {}
        self._mem_t = 0.0
        self._mem_over = False

    def beat(self) -> None:
        self.heartbeat = time.monotonic()
        m = self.metrics
        if m is not None:
            emb, sel = self.graph.queued_items()
            m.queue_items.labels("embed").set(emb)
            m.queue_items.labels("select").set(sel)

    def memory_over(self) -> bool:
        """Resident memory of the driver and local actors against service.memory_limit_mb (checked 4x/s)."""
        now = time.monotonic()
        if now - self._mem_t < 0.25:
            return self._mem_over
        self._mem_t = now
        if not self._pids:
            self._pids = self.graph.actor_pids()
        total = _rss_bytes()
        if self.metrics is not None:
            self.metrics.rss.labels("driver").set(total)
        for name, pid in self._pids.items():
            r = _rss_bytes(pid)
            total += r
            if self.metrics is not None:
                self.metrics.rss.labels(name).set(r)
        if self.metrics is not None:
            self.metrics.rss.labels("total").set(total)
        limit = self.scfg.service.memory_limit_mb
        over = bool(limit) and total > limit * 1024 * 1024
        if over and not self._mem_over:
            log.warning("resident memory %.0f MB is over service.memory_limit_mb=%d: pausing input",
                        total / 2**20, limit)
        self._mem_over = over
        return over

    def finish(self) -> None:
        ok = self.graph.drain(self.scfg.service.drain_timeout_s if self.stop.is_set() else None)
        if not ok:
            log.error("in-flight batches did not finish within %.0fs; exiting without them (they are replayed "
                      "from the last commit on restart)", self.scfg.service.drain_timeout_s)
            return
        if self.graph.dirty:
            self.graph.request_commit()
            self.graph.drain()


class FileDriver(Driver):
    """`[source] paths` through the graph, resuming from the manifest's (file, row) positions."""

    def run(self, start: Positions) -> None:
        from connectors.files import FileSource

        src = FileSource(self.cfg.source.paths, self.cfg.source.format)
        limit, n = self.cfg.source.limit, 0
        for b in src.batches(self.cfg.source.batch_size, start):
            if self.stop.is_set() or (limit and n >= limit):
                break
            n += len(b)
            if self.metrics is not None:
                self.metrics.items_in.labels("files").inc(len(b))
            while not self.graph.room() or (self.memory_over() and not self.graph.idle()):
                self.graph.pump(0.05)
                self.beat()
            self.graph.submit(b)
            self.graph.pump()
            self.graph.maybe_commit_by_time()
            self.beat()
        else:
            self.ended = True
        if limit and n >= limit:
            self.ended = True
        self.finish()


class KafkaDriver(Driver):
    """A Kafka topic through the graph: poll, merge in stream order, bound, commit after the manifest."""

    def __init__(self, scfg: Any, graph: Graph, metrics: Any, stop: threading.Event,
                 dead_letters: Any = None) -> None:
        super().__init__(scfg, graph, metrics, stop)
        from connectors.kafka_source import KafkaSource, KafkaSourceConfig

        k = scfg.kafka
        kcfg = KafkaSourceConfig(
            bootstrap_servers=k.bootstrap_servers, topic=k.topic, group_id=k.group_id, client=dict(k.client),
            api_version=k.api_version, session_timeout_ms=k.session_timeout_ms, max_poll_records=k.max_poll_records,
            poll_timeout_ms=k.poll_timeout_ms, max_message_bytes=k.max_message_bytes,
            auto_offset_reset=k.auto_offset_reset, end_after_idle_s=0.0,  # the driver decides the end (_bounded_end)
        )
        self.topic = k.topic
        self.src = KafkaSource(kcfg, on_revoke=self._on_revoke, on_assign=self._on_assign, on_lost=self._on_lost)
        self.merge = OrderedMerge(k.topic, k.order)
        self.dead_letters = dead_letters
        self.start: dict[int, int] = {}
        self.trimmed = 0
        self._trimmed_last = False
        self._synced: list[int] = []
        self._last_poll = 0.0
        self._last_poll_empty = True
        self._end_t = 0.0
        self._ends: dict[int, int] = {}
        self._lag_t = 0.0
        self._committed: dict[int, int] = {}
        graph.on_commit = self._on_commit
        graph.on_rejects = self._on_rejects

    # --- callbacks (driver thread; some from inside poll) -----------------------------
    def _on_rejects(self, rejects: list[Rejection]) -> None:
        if self.metrics is not None:
            self.metrics.dead_letters.inc(len(rejects))
        if self.dead_letters is not None:
            self.dead_letters.send(rejects)

    def _on_commit(self, c: dict[str, Any]) -> None:
        """The manifest is durable: flush dead letters, then commit exactly its positions to the group."""
        from kafka.errors import KafkaError

        positions = {s: {int(p): int(o) for p, o in parts.items()} for s, parts in c["positions"].items()}
        self._committed = dict(positions.get(self.topic, {}))
        if self.dead_letters is not None:
            self.dead_letters.flush()
        try:
            self.src.commit(positions)
        except KafkaError as exc:  # a rebalance in between: the manifest still holds the positions
            log.warning("could not commit offsets to the group (%s); the manifest has them", exc)

    def _on_assign(self, partitions: list[int]) -> None:
        self.merge.assign(partitions, self.start)
        all_parts = sorted(self.src.consumer.partitions_for_topic(self.topic) or ())
        if sorted(self.merge.partitions) != all_parts:
            log.warning("this service owns partitions %s of %s's %s: one service (one selector, one index) "
                        "should own a whole topic; run one instance per consumer group", partitions,
                        self.topic, all_parts)

    def _on_revoke(self, partitions: list[int]) -> None:
        log.info("partitions %s revoked: finishing in-flight batches and committing", partitions)
        self.graph.commit_now()  # commit runs _on_commit: offsets are committed while we still own them
        self.merge.revoke(partitions)

    def _on_lost(self, partitions: list[int]) -> None:
        log.warning("partitions %s lost (session expired): committing the manifest only", partitions)
        self.graph.commit_now()
        self.merge.revoke(partitions)

    # --- flow control ------------------------------------------------------------------
    def _trim(self) -> bool:
        """Keep each partition's buffer within its share of `service.max_buffered_items`: the tail past
        it is dropped and the consumer seeks back to it, so it is fetched again when there is room.

        (Backpressure by seeking rather than `consumer.pause()`: kafka-python 3.0 parks records fetched
        for a paused partition and, once another partition's records were consumed, never hands the
        parked ones back after `resume()` -- the partition would stall for good.)
        """
        from kafka import TopicPartition

        parts = self.merge.partitions
        if not parts:
            return False
        share = max(1, self.scfg.buffered() // len(parts))
        trimmed = False
        for p in parts:
            if self.merge.buffered(p) > share:
                first = self.merge.trim(p, share)
                if first is not None:
                    self.src.consumer.seek(TopicPartition(self.topic, p), first)
                    self.trimmed += 1
                    trimmed = True
                    if self.metrics is not None:
                        self.metrics.refetched.inc()
        return trimmed

    def _sync_group_offsets(self, assigned: list[int]) -> None:
        """After an assignment: where the manifest is ahead of the group's committed offsets (a crash
        between the manifest and the offset commit), commit the manifest's positions to the group."""
        from kafka.errors import KafkaError

        self._synced = list(assigned)
        if not self.scfg.kafka.group_id or not assigned:
            return
        try:
            have = self.src.committed()
            ahead = {p: o for p, o in self._committed.items() if p in assigned and have.get(p, -1) < o}
            if ahead:
                self.src.commit({self.topic: ahead})
                log.info("committed the manifest's positions %s to the group (it was at %s)", ahead,
                         {p: have.get(p) for p in ahead})
        except KafkaError as exc:
            log.warning("could not bring the group's offsets up to the manifest (%s); the manifest has them", exc)

    def _report_gaps(self, before: int) -> None:
        n = sum(self.merge.gaps.values()) - before
        if self.metrics is not None:
            self.metrics.offset_gaps.inc(n)
        log.warning("%s skipped %d offset(s) (per partition so far: %s): messages deleted by retention before "
                    "they were read (the consumer reset to the earliest offset), compacted away, or transaction "
                    "markers", self.topic, n, dict(sorted(self.merge.gaps.items())))

    def _check_blockers(self) -> None:
        """Empty partitions the merge waits on: learn their position and whether they are caught up."""
        from kafka import TopicPartition

        blockers = self.merge.blockers()
        if not blockers:
            return
        now = time.monotonic()
        c = self.src.consumer
        tps = [TopicPartition(self.topic, p) for p in blockers]
        if now - self._end_t > 0.2 or any(tp.partition not in self._ends for tp in tps):
            self._ends.update({tp.partition: int(o) for tp, o in c.end_offsets(tps).items()})
            self._end_t = now
        for tp in tps:
            try:
                pos = c.position(tp, timeout_ms=1000)
            except Exception:  # noqa: BLE001 - position not known yet (reset in progress)
                continue
            if pos is None:
                continue
            self.merge.mark_position(tp.partition, int(pos), int(pos) >= self._ends.get(tp.partition, 1 << 62))

    def _update_lag(self) -> None:
        from kafka import TopicPartition

        now = time.monotonic()
        if self.metrics is None or now - self._lag_t < 2.0 or not self.merge.partitions:
            return
        self._lag_t = now
        try:
            ends = self.src.consumer.end_offsets([TopicPartition(self.topic, p) for p in self.merge.partitions])
        except Exception:  # noqa: BLE001 - metrics only
            return
        for tp, end in ends.items():
            self.metrics.lag.labels(str(tp.partition)).set(max(0, int(end) - self._committed.get(tp.partition, 0)))

    def _caught_up_all(self) -> bool:
        """Every assigned partition's position has reached its end offset (nothing left to read now)."""
        from kafka import TopicPartition

        parts = self.src.assignment()
        if not parts:
            return False
        c = self.src.consumer
        tps = [TopicPartition(self.topic, p) for p in parts]
        ends = c.end_offsets(tps)
        for tp in tps:
            try:
                pos = c.position(tp, timeout_ms=1000)
            except Exception:  # noqa: BLE001 - not known yet
                return False
            if pos is None or int(pos) < int(ends[tp]):
                return False
        return True

    def _bounded_end(self, last_data: float) -> bool:
        """kafka.end_after_idle_s: the input is exhausted -- nothing buffered or in flight, every
        partition caught up, and no message for that long (joining the group does not count)."""
        idle = self.scfg.kafka.end_after_idle_s
        if idle <= 0 or self.merge.items or not self.graph.idle() or time.monotonic() - last_data < idle:
            return False
        return self._caught_up_all()

    # --- the loop ------------------------------------------------------------------------
    def run(self, start: Positions) -> None:
        self.start = {int(p): int(o) for p, o in (start.get(self.topic) or {}).items()}
        self._committed = dict(self.start)
        batch = self.cfg.source.batch_size
        limit = self.scfg.buffered()
        poll_size = min(batch, self.scfg.kafka.max_poll_records)
        gen = self.src.batches(poll_size, start)
        g = self.graph
        last_data = time.monotonic()
        try:
            while not self.stop.is_set():
                self.beat()
                # 1) feed the graph from the merge, in stream order, while there is room: full batches,
                #    or what there is when the source went quiet or the embedders would sit idle
                while g.room():
                    can = self.merge.available(batch)
                    if can == 0 or (can < batch and not self._last_poll_empty and not g.idle()):
                        break  # more is arriving (or a partition we wait on is about to): fill the batch
                    b = self.merge.pop(batch)
                    if b is None:
                        break
                    if self.metrics is not None:
                        self.metrics.items_in.labels("kafka").inc(len(b))
                    g.submit(b)
                g.pump()
                g.maybe_commit_by_time()
                # 2) poll while the merge has room for a whole poll, or waits on a partition (then what
                #    the other partitions bring past their share is dropped and re-read later); else
                #    wait on the graph. Never a busy loop: a poll that only refills trimmed partitions
                #    waits for the graph first.
                blocked = self.merge.items > 0 and bool(self.merge.blockers())
                hold = self.memory_over() and not g.idle()
                room = self.merge.items + poll_size <= limit
                need = (room or blocked) and not hold
                if need and not room and self._trimmed_last and not g.room():
                    g.pump(0.05)
                if self.metrics is not None:
                    self.metrics.backpressure.set(0 if room and not hold else 1)
                # (without a poll for max_poll_interval_ms the group would drop us: poll now and then)
                if need or time.monotonic() - self._last_poll > 10.0:
                    try:
                        raw = next(gen)
                    except StopIteration:
                        break
                    self._last_poll = time.monotonic()
                    self._last_poll_empty = len(raw) == 0
                    self._trimmed_last = False
                    if len(raw):
                        last_data = self._last_poll
                        gaps = sum(self.merge.gaps.values())
                        self.merge.add(raw)
                        if sum(self.merge.gaps.values()) > gaps:
                            self._report_gaps(gaps)
                        if self.merge.items > limit:
                            self._trimmed_last = self._trim()
                    assigned = self.src.assignment()
                    if self.merge.partitions != assigned:
                        self.merge.assign(assigned, self.start)
                    if assigned != self._synced:
                        self._sync_group_offsets(assigned)
                    if self.merge.items:
                        self._check_blockers()
                    if self.metrics is not None:
                        self.metrics.queue_items.labels("source").set(self.merge.items)
                    self._update_lag()
                    if self._last_poll_empty and self._bounded_end(last_data):
                        self.ended = True
                        break
                else:
                    g.pump(0.05)
            self.finish()
        finally:
            if self.dead_letters is not None:
                self.dead_letters.flush()
            self.src.close()
