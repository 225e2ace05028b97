"""`curator ingest --engine ray`: files read, decoded and embedded by Ray Data, selected in stream order.

::

    read tasks (FileSource.read_range: one range of one file each)
      -> map_batches(EmbedWorker): an actor pool running validate + embed, CPUs / GPUs declared
      -> in range order (preserve_order) -> RayExecutor.submit -> the select-and-write actor
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
from curator.stages import build_stages, run_chain, with_run_keys
from curator.store import read_manifest
from pipelines.config import ServeConfig
from pipelines.executors.feed import bootstrap, feed
from pipelines.executors.placement import init_ray, pool_resources
from pipelines.executors.ray import RayExecutor
from pipelines.run_skeleton import Progress, bootstrap_or_warn, limited, log_throughput

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
    s, cfg = scfg.service, with_run_keys(scfg.run)  # the workers may not see the run directory
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
    each = pool_resources(scfg)  # the embedder's and every filter's
    ds = ds.map_batches(EmbedWorker, fn_constructor_args=(cfg, embedding_dim), batch_size=1,
                        compute=pool, num_cpus=each.cpus,
                        num_gpus=each.gpus or None, batch_format="numpy", zero_copy_batch=True)
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
    cfg = scfg.run
    src = FileSource(cfg.source.paths, cfg.source.format)  # bad paths fail before anything starts
    boot = FileSource(cfg.source.bootstrap, cfg.source.format) if cfg.source.bootstrap else None
    ray_mod, owned = init_ray(scfg, extra_cpus=READ_NUM_CPUS)
    ex = RayExecutor(scfg, embed_actors=0, extra_cpus=READ_NUM_CPUS)  # Ray Data runs the pool
    try:
        resume = ex.start()
        if cfg.embedder.kind == "precomputed" and ex.dim is None:
            todo: list[tuple[FileSource, Positions | None]] = [] if resume.bootstrapped or boot is None \
                else [(boot, None)]
            todo.append((src, resume.positions))
            ex.fix_dimension(first_dimension(cfg, todo))

        def insert() -> int:
            assert boot is not None  # called only when there is a bootstrap
            return bootstrap(ex, embedded_batches(scfg, boot, None, True, ex.dim))

        bootstrap_or_warn(cfg, resume, insert, lambda: ex.index_size)
        src.seek(resume.positions)  # what is left: the bar's total, and the resume line in the log
        with Progress(src.total(), "curating (Ray Data)", progress, resume) as bar:
            ex.add_observer(bar)
            feed(ex, limited(embedded_batches(scfg, src, None, False, ex.dim), cfg.source.limit))
            ex.commit_now()
        log_throughput(*ex.throughput())
        m = read_manifest(resume.out)
        assert m is not None, "a run that committed has a manifest"
        return m
    finally:
        ex.shutdown()
        if owned:
            ray_mod.shutdown()
