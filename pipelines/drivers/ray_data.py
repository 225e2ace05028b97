"""`curator ingest --engine ray`: files read, decoded and embedded by Ray Data, selected in stream order.

::

    read tasks (FileSource.read_range: one range of one file each)
      -> map_batches(EmbedWorker): an actor pool running validate + embed, CPUs / GPUs declared
      -> in range order (preserve_order) -> RayExecutor.submit_embedded -> the selector/writer actor
         (and its selector shards), commits and resume exactly as `curator serve`

Why Ray Data for bounded file runs: its streaming executor already does what a large dataset needs
-- reads spread over the cluster, an actor pool placed on GPUs, backpressure between operators --
so the engine does not grow a scheduler of its own for files. Ray Data hands the embedded batches
back in range order, which is stream order; the selector's decisions do not depend on where batches
are cut, so they equal `curator ingest`'s on the same files.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from connectors.files import FileSource
from curator.batch import EmbeddedBatch, Positions, RawBatch
from curator.commit import Manifest
from curator.config import RunConfig
from curator.records import KEPT_DECISIONS
from curator.stages import build_stages, run_chain
from curator.store import read_manifest
from pipelines.config import ServeConfig
from pipelines.executors.ray import RayExecutor, init_ray

log = logging.getLogger("curator")

#: Batches per read task: small enough to spread a file over the readers, large enough that a
#: task's overhead (milliseconds) is noise next to reading it.
BATCHES_PER_RANGE = 16
#: CPUs a read task reserves: reading is I/O and copying; decoding happens in the embedders.
READ_NUM_CPUS = 0.5


class FileRanges(Datasource):
    """A FileSource as Ray Data read tasks, one per range (`FileSource.ranges`), in stream order.
    Each block is one pickled RawBatch: records keep their exact positions, so resume works as in
    every other engine."""

    def __init__(self, src: FileSource, start: Positions | None, batch_size: int, trusted: bool = False) -> None:
        self.src, self.batch_size, self.trusted = src, batch_size, trusted
        self.plan = src.ranges(start, batch_size * BATCHES_PER_RANGE)

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        # `parallelism` is ignored: the ranges are the tasks, so blocks come back in stream order.
        return [ReadTask(self._reader(*r), BlockMetadata(None, None, None, None)) for r in self.plan]

    def _reader(self, unit: int, first: int, count: int | None):  # noqa: ANN202 - a Ray Data read_fn
        one = self.src.only(unit)  # what the task pickles: this unit, not every file's listing
        batch_size, trusted = self.batch_size, self.trusted

        def read() -> Iterator[pa.Table]:
            for b in one.read_range(0, first, count, batch_size):
                b.trusted = trusted
                yield pa.table({"batch": pa.array([pickle.dumps(b, protocol=5)], pa.binary())})

        return read


class EmbedWorker:
    """The pool's actor: the run's stages upstream of selection (validate, embed, ...; the model loads
    once per actor)."""

    def __init__(self, cfg: RunConfig, embedding_dim: int | None) -> None:
        self.chain = build_stages(cfg).upstream
        for s in self.chain:
            s.setup()
        self.embedding_dim = embedding_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for blob in batch["batch"]:
            raw: RawBatch = pickle.loads(blob)
            raw.embedding_dim = self.embedding_dim
            out.append(pickle.dumps(run_chain(self.chain, raw), protocol=5))
        return {"batch": np.array(out, dtype=object)}


def embedded_batches(scfg: ServeConfig, src: FileSource, start: Positions | None, trusted: bool,
                     embedding_dim: int | None) -> Iterator[EmbeddedBatch]:
    """The source's batches after `start`, validated and embedded on Ray Data, in stream order."""
    s, cfg = scfg.service, scfg.run
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # stream order: the selector's decisions depend on it
    ctx.enable_progress_bars = False  # the run's own bar counts decided items
    if not log.isEnabledFor(logging.INFO):
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per dataset otherwise
    ranges = FileRanges(src, start, cfg.source.batch_size, trusted)
    if not ranges.plan:
        return
    ds = ray.data.read_datasource(ranges, num_cpus=READ_NUM_CPUS)
    pool = ray.data.ActorPoolStrategy(size=min(s.embed_actors, len(ranges.plan)))  # no idle actors on a small input
    ds = ds.map_batches(EmbedWorker, fn_constructor_args=(cfg, embedding_dim), batch_size=1,
                        compute=pool, num_cpus=s.embed_num_cpus,
                        num_gpus=s.embed_num_gpus or None, batch_format="numpy", zero_copy_batch=True)
    for row in ds.iter_rows():
        yield pickle.loads(row["batch"])


def first_dimension(cfg: RunConfig, sources: list[tuple[FileSource, Positions | None]]) -> int | None:
    """Precomputed embeddings with no dimension given: the first valid vector's, in stream order, so that
    the pool's actors agree on which vectors have the wrong size (as `service.embedding_dim` would)."""
    stages = build_stages(cfg)
    chain = stages.upstream
    for st in chain:
        st.setup()
    for src, start in sources:
        for raw in src.batches(cfg.source.batch_size, start):
            run_chain(chain, raw)
            if stages.embed.embedder.image_dim:
                return stages.embed.embedder.image_dim
    return None


def run_ingest_ray(scfg: ServeConfig, progress: bool = True) -> Manifest:
    """`run_ingest` on Ray: a bounded run over `[source] paths` (after the bootstrap, once); returns the
    final manifest. Joins the cluster of `service.ray_address` / $RAY_ADDRESS, else starts a local one."""
    from tqdm import tqdm

    cfg = scfg.run
    src = FileSource(cfg.source.paths, cfg.source.format)  # bad paths fail before anything starts
    boot = FileSource(cfg.source.bootstrap, cfg.source.format) if cfg.source.bootstrap else None
    ray_mod, owned = init_ray(scfg, extra_cpus=READ_NUM_CPUS)
    ex = RayExecutor(scfg)
    try:
        resume = ex.start(pool=False, extra_cpus=READ_NUM_CPUS)
        dim = ex.dim
        if cfg.embedder.kind == "precomputed" and dim is None:
            todo = ([] if resume.bootstrapped or boot is None else [(boot, None)]) + [(src, resume.positions)]
            dim = first_dimension(cfg, todo)
            ex.dim = dim
        if not resume.bootstrapped:
            if boot is not None:
                n = _feed(ex, embedded_batches(scfg, boot, None, True, dim), limit=0)
                ex.request_commit(bootstrapped=True)
                ex.drain()
                log.info("bootstrap: %d trusted items inserted, index holds %d", n, ex.index_size)
            else:
                log.warning("no trusted bootstrap ([source] bootstrap): the first %d accepted items are taken "
                            "unjudged", cfg.selector.min_trusted)
        src.seek(resume.positions)  # what is left: the bar's total, and the resume line in the log
        bar = tqdm(total=src.total(), unit="item", desc="curating (Ray Data)", disable=not progress,
                   dynamic_ncols=True)
        done = sum(sum(parts.values()) for parts in resume.positions.values())
        if resume.commit and done:
            bar.write(f"resuming {cfg.store.out} after commit {resume.commit}: {done} items already decided")
        bar.update(0)
        try:
            _feed(ex, embedded_batches(scfg, src, None, False, dim), cfg.source.limit, bar)
            ex.commit_now()
        finally:
            bar.close()
        n, secs = ex.throughput()
        if n and secs > 0:
            log.info("throughput: %d items in %.2fs = %.1f items/s (first item sent to last item decided)",
                     n, secs, n / secs)
        return read_manifest(resume.out)
    finally:
        ex.shutdown()
        if owned:
            ray_mod.shutdown()


def _feed(ex: RayExecutor, batches: Iterator[EmbeddedBatch], limit: int, bar: Any = None) -> int:
    """Submit embedded batches to the selector in order, within its queue bound; `limit` (0 = none)
    stops after the batch that reaches it, as `curator ingest` does."""
    keep = {d.value for d in KEPT_DECISIONS}
    before = sum(v for k, v in ex.counts.items() if k in keep)  # the bootstrap's, not shown as kept
    n, shown = 0, ex.items_done

    def show() -> None:
        nonlocal shown
        if bar is not None:
            bar.update(ex.items_done - shown)
            shown = ex.items_done
            bar.set_postfix(kept=sum(v for k, v in ex.counts.items() if k in keep) - before, refresh=False)

    for b in batches:
        if limit and n >= limit:
            break
        while not ex.room():
            ex.pump(0.05)
        ex.submit_embedded(b)
        n += b.items
        ex.pump()
        show()
    ex.drain()
    show()
    return n
