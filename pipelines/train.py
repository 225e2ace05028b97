"""`curator train`: a training job on a curated set, as Ray Train workers with the InfoBatch sampler.

    curator train RUN_DIR --task mlp --workers 2 --epochs 20 --prune-ratio 0.5
    ray job submit --working-dir . -- curator train /abs/path/RUN_DIR --task cnn --workers 4

The driver takes a snapshot of the run's committed ``kept`` parts (the list of Parquet
files named by the manifest; parts are append-only, so an ingest still committing does
not change what this job trains on), then starts a ``TorchTrainer`` with that many
workers (GPU when the cluster has one per worker, unless told otherwise). Each worker
reads the snapshot with pyarrow -- all of it: the InfoBatch sampler picks samples by
index, which a streaming Ray Data split cannot serve -- builds the task's dataset and
model (curator.train), and trains with an ``InfoBatchSampler`` sharded by its rank
(each rank keeps its own losses; the ranks exchange them once per epoch, so every rank
prunes identically). After each epoch it reports accuracy, loss, samples kept/pruned,
the achieved saving so far and the sampler's overhead, and rank 0 checkpoints model,
optimizer and sampler state. A restarted worker group (``--max-failures``) resumes
from the latest checkpoint and prunes as the uninterrupted run would have.

The console gets one line per epoch and a progress bar, both from the driver: rank 0 sends
each epoch's metrics through a Ray queue. Workers print nothing (Ray Train's print patch
would write each print twice: once through its logger, once through the worker's stdout),
and Ray's own console output -- worker and controller logs, ``TrainingReport`` dumps, the
dashboard line -- stays off unless ``--verbose``; Ray's log files under
``/tmp/ray/session_latest/logs`` have it all either way. The controller polls the workers
every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (0.1 s here, Ray's default 2 s): each
``ray.train.report`` waits for a poll, so at 2 s every short epoch took 2 s.

Evaluation: ``--eval PATH`` (a Parquet file, a folder of them, or another run directory)
or, by default, a deterministic held-out share of the curated set (``--eval-share``,
chosen by a hash of each item's id, so it is the same items for every seed and setting).
The digits demo writes no test split into the run directory, so the default is what it
uses; copies of one item that survived deduplication can straddle the split.

Paths are resolved on the driver. Under ``ray job submit --working-dir .`` the driver
runs in an uploaded copy of the working dir (without git-ignored folders such as runs/),
so give absolute paths there; on a multi-node cluster they must be on shared storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TextIO

from curator.train.tasks import TASK_COLUMNS, TASKS, TrainSettings, parse_bands

#: Learning rates that train the built-in models well with AdamW (override with --lr).
DEFAULT_LR = {"linear": 1e-2, "mlp": 2e-3, "cnn": 2e-3}

#: Columns of the per-epoch table: one row printed as each epoch ends.
TABLE = ("epoch", "train_loss", "eval_acc", "kept", "pruned", "saving", "sampler_overhead", "epoch_s")

#: Seconds between the Ray Train controller's polls of the workers (Ray's default: 2). Every
#: `ray.train.report` waits for the next poll, so this bounds how fast epochs can follow each other.
CONTROLLER_POLL_S = "0.1"
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


# --------------------------------------------------------------------- inputs
def eval_parts(path: str | Path) -> list[str]:
    """``--eval``: a run directory (its committed kept parts), a Parquet file, or a folder of them."""
    from curator.train import curated_parts

    p = Path(path).resolve()
    if (p / "manifest.json").exists():
        return curated_parts(p)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if files:
            return files
    raise FileNotFoundError(f"--eval {path}: not a run directory, a Parquet file or a folder of Parquet files")


def job_config(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a worker needs, resolved on the driver (plain data: it travels to every worker)."""
    from curator.train import curated_parts, labels_of, read_parts

    run_dir = Path(args.run_dir).resolve()
    parts = curated_parts(run_dir)
    settings = TrainSettings(
        task=args.task, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else DEFAULT_LR[args.task], weight_decay=args.weight_decay,
        optimizer=args.optimizer, warmup_epochs=args.warmup_epochs, hidden=args.hidden,
        prune_ratio=args.prune_ratio, delta=args.delta, bands=parse_bands(args.bands),
        init_from_gain=args.init_from_gain, seed=args.seed, loader_workers=args.loader_workers)
    held = eval_parts(args.eval) if args.eval else []
    labels = read_parts(parts + held, ["label"])
    num_classes = args.num_classes or int(labels_of(labels).max()) + 1
    return {"settings": settings.as_dict(), "parts": parts, "eval_parts": held, "eval_share": args.eval_share,
            "num_classes": num_classes, "checkpoint_every": args.checkpoint_every, "run_dir": str(run_dir)}


# --------------------------------------------------------------------- the worker
def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its shard of every epoch, metrics reported, rank 0 checkpoints."""
    import ray.train
    import ray.train.torch
    import torch

    from curator.train import (
        EpochLoop,
        build_dataset,
        build_model,
        feature_stats,
        initial_scores,
        make_sampler,
        read_parts,
        split_eval,
    )

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    s = TrainSettings(**config["settings"])
    torch.manual_seed(s.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)

    cols = TASK_COLUMNS[s.task]
    tbl = read_parts(config["parts"], cols)
    if config["eval_parts"]:
        train_tbl, eval_tbl = tbl, read_parts(config["eval_parts"], cols)
    else:
        train_tbl, eval_tbl = split_eval(tbl, config["eval_share"])
    train_ds = build_dataset(s.task, train_tbl)
    eval_ds = None
    if eval_tbl.num_rows:
        img = {"image_size": train_ds.size, "channels": train_ds.channels} if s.task == "cnn" else {}
        eval_ds = build_dataset(s.task, eval_tbl, **img)
    meta = {"task": s.task, "sample_shape": list(train_ds.sample_shape), "num_classes": config["num_classes"],
            "hidden": s.hidden, "run_dir": config["run_dir"], "parts": config["parts"],
            "eval_parts": config["eval_parts"], "eval_share": config["eval_share"],
            "train_items": len(train_ds), "eval_items": 0 if eval_ds is None else len(eval_ds),
            "workers": world}
    model = build_model(s.task, train_ds.sample_shape, config["num_classes"], s.hidden,
                        feature_stats=feature_stats(train_ds))
    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    init = initial_scores(train_tbl) if s.init_from_gain else None
    sampler = make_sampler(len(train_ds), s, num_replicas=world, rank=rank, init=init)
    loop = EpochLoop(model, train_ds, eval_ds, s, sampler, device)

    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = loop.load(d)

    every = max(1, int(config["checkpoint_every"]))
    progress = config.get("progress")
    t0 = time.perf_counter()
    for epoch in range(start, s.epochs):
        metrics = loop.run_epoch(epoch)
        metrics["train_items"] = len(train_ds)
        metrics["elapsed_s"] = time.perf_counter() - t0  # with the reports before it: what Ray adds to epoch_s
        if rank == 0 and progress is not None:
            progress.put(dict(metrics))
        save = (epoch + 1) % every == 0 or epoch == s.epochs - 1
        with tempfile.TemporaryDirectory(prefix="curator-ckpt-") as tmp:
            checkpoint = None
            if save and rank == 0:
                loop.save(tmp, epoch, meta)
                (Path(tmp) / "history.json").write_text(json.dumps(loop.history, indent=1))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


# --------------------------------------------------------------------- the driver
def _use_gpu(choice: str, workers: int) -> bool:
    import ray

    if choice == "on":
        return True
    if choice == "off":
        return False
    return ray.cluster_resources().get("GPU", 0) >= workers


def run_train_job(config: dict[str, Any], workers: int = 2, use_gpu: str = "auto",
                  cpus_per_worker: float = 1.0, storage_path: str | Path | None = None, name: str | None = None,
                  keep_checkpoints: int = 2, max_failures: int = 0, address: str | None = None,
                  echo: TextIO | None = None, bar: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run the TorchTrainer job; returns the per-epoch history, the last checkpoint and where it lives.

    Uses the Ray runtime already initialised in this process, else connects to
    ``address`` (or RAY_ADDRESS, as under ``ray job submit``), else starts a local one.
    ``echo``: write a table row there as each epoch ends (``bar``: and a progress bar on
    stderr). ``verbose``: let Ray's own console output through (worker and controller logs).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=verbose,
                 logging_level=logging.INFO if verbose else logging.WARNING,
                 include_dashboard=None if verbose else False)  # the dashboard costs ~2 s of start-up
    try:
        return _fit(config, workers, _use_gpu(use_gpu, workers), cpus_per_worker, storage_path, name,
                    keep_checkpoints, max_failures, echo, bar, verbose)
    finally:
        if started:
            ray.shutdown()


def _fit(config: dict[str, Any], workers: int, gpu: bool, cpus_per_worker: float,
         storage_path: str | Path | None, name: str | None, keep_checkpoints: int,
         max_failures: int, echo: TextIO | None, bar: bool, verbose: bool) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    storage = Path(storage_path or Path(config["run_dir"]) / "train").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    name = name or f"{config['settings']['task']}-{time.strftime('%Y%m%d-%H%M%S')}"
    resources = {"CPU": cpus_per_worker} if not gpu else {"CPU": cpus_per_worker, "GPU": 1}
    os.environ.setdefault(POLL_ENV, CONTROLLER_POLL_S)  # Ray Train hands it to the controller it starts
    queue = Queue(actor_options={"num_cpus": 0}) if echo is not None else None
    rows = EpochRows(queue, config["settings"]["epochs"], echo, bar) if echo is not None else nullcontext()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config, "progress": queue},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(name=name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints or None),
                             failure_config=FailureConfig(max_failures=max_failures),
                             logging_config=LoggingConfig(log_level="INFO" if verbose else "WARNING")),
    )
    t0 = time.perf_counter()
    try:
        with rows:
            result = trainer.fit()
    finally:
        if queue is not None:
            queue.shutdown()
    wall = time.perf_counter() - t0
    if result.error is not None:
        raise result.error
    history: list[dict[str, Any]] = []
    ckpt_path = None
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            history = json.loads((Path(d) / "history.json").read_text())
        ckpt_path = result.checkpoint.path
    out = {"name": name, "storage": str(storage / name), "checkpoint": ckpt_path, "history": history,
           "final": dict(result.metrics or {}), "workers": workers, "use_gpu": gpu, "wall_s": wall}
    (storage / name / "train_summary.json").write_text(json.dumps(out, indent=1, default=str))
    return out


class EpochRows:
    """The driver's console while `fit` runs: a table row per epoch as rank 0 sends it, under a
    tqdm bar over the planned epochs. Reads the queue on a thread (`fit` blocks the main one)."""

    def __init__(self, queue: Any, epochs: int, out: TextIO, bar: bool) -> None:
        from tqdm import tqdm

        self.queue, self.out, self.last = queue, out, -1
        self.bar = tqdm(total=epochs, unit="epoch", desc="training", disable=not bar, dynamic_ncols=True,
                        file=sys.stderr)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="curator-train-epochs", daemon=True)

    def __enter__(self) -> EpochRows:
        self.bar.write(table_row(TABLE), file=self.out)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        while not self.queue.empty():  # rank 0 puts before it reports, so everything is here once fit returns
            self.show(self.queue.get_nowait())
        self.bar.close()

    def _follow(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                self.show(self.queue.get(timeout=0.2))
            except Empty:
                continue

    def show(self, metrics: dict[str, Any]) -> None:
        epoch = int(metrics["epoch"])
        if epoch <= self.last:
            self.bar.write(f"(worker group restarted: epoch {epoch} again, from the last checkpoint)", file=self.out)
        self.last = epoch
        self.bar.write(table_row([_fmt(metrics.get(k)) for k in TABLE]), file=self.out)
        self.out.flush()
        self.bar.n = epoch + 1
        self.bar.refresh()


def table_row(cells: Any) -> str:
    """One row of the per-epoch table (fixed widths, so rows printed one at a time line up)."""
    return "  ".join(str(c).rjust(max(len(k), 8)) for c, k in zip(cells, TABLE, strict=True))


def format_history(history: list[dict[str, Any]]) -> str:
    return "\n".join([table_row(TABLE)] + [table_row([_fmt(h.get(k)) for k in TABLE]) for h in history])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def cmd_train(args: argparse.Namespace) -> int:
    config = job_config(args)
    out = run_train_job(config, workers=args.workers, use_gpu=args.use_gpu, cpus_per_worker=args.cpus_per_worker,
                        storage_path=args.checkpoint_dir, name=args.name, keep_checkpoints=args.keep_checkpoints,
                        max_failures=args.max_failures, address=args.address, echo=sys.stdout,
                        bar=not args.quiet, verbose=args.ray_logs or getattr(args, "verbose", 0) > 0)
    last = out["history"][-1] if out["history"] else {}
    print(f"\n{args.task} on {len(config['parts'])} part(s), {out['workers']} worker(s) "
          f"({'GPU' if out['use_gpu'] else 'CPU'}): eval accuracy {last.get('eval_acc', float('nan')):.4f}, "
          f"achieved saving {last.get('saving', 0.0):.1%} of sample-epochs, {out['wall_s']:.1f} s")
    print(f"checkpoint: {out['checkpoint']}\nsummary: {out['storage']}/train_summary.json")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a curated set with Ray Train workers and InfoBatch pruning",
        description="A Ray Train (TorchTrainer) job on a run directory's curated set: a linear probe or MLP "
                    "on the stored embeddings, or a small CNN on the stored images, with the InfoBatch "
                    "sampler. Reports accuracy, loss, pruned samples and the achieved saving per epoch and "
                    "checkpoints. Also runs as `ray job submit --working-dir . -- curator train /abs/RUN_DIR ...`.")
    p.add_argument("run_dir", help="run directory written by `curator ingest` / `curator demo` (absolute under "
                                   "`ray job submit`)")
    p.add_argument("--task", choices=TASKS, default="mlp",
                   help="linear / mlp: on the stored embeddings; cnn: on the stored images (default mlp)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--use-gpu", choices=("auto", "on", "off"), default="auto",
                   help="auto: one GPU per worker when the cluster has enough (default)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (default 1)")
    p.add_argument("--epochs", type=int, default=20, help="C, the planned epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="global batch size, split across workers (default 128)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (cosine schedule; default: " +
                        ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (default 1e-4)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="default adamw")
    p.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up before the cosine")
    p.add_argument("--hidden", type=int, default=256, help="mlp hidden width (default 256)")
    p.add_argument("--prune-ratio", type=float, default=0.5,
                   help="InfoBatch r: share of below-mean-loss samples skipped per epoch; 0 = full data")
    p.add_argument("--delta", type=float, default=0.875,
                   help="share of epochs that prune; the rest anneal on full data (default 0.875)")
    p.add_argument("--bands", default=None, metavar="SPEC",
                   help="multi-band rule instead of --prune-ratio: 'paper' (keep 25%% below the 20th score "
                        "percentile, 50%% up to the 85th) or 'Q:KEEP,Q:KEEP,...'")
    p.add_argument("--init-from-gain", action="store_true",
                   help="start scores from the stored InfoGrowth gain_norm, so epoch 0 already prunes")
    p.add_argument("--seed", type=int, default=0, help="seed of model init and the sampler's draws")
    p.add_argument("--eval", default=None, metavar="PATH",
                   help="held-out set: a run directory, a Parquet file or folder (default: --eval-share of "
                        "the curated set)")
    p.add_argument("--eval-share", type=float, default=0.2,
                   help="without --eval: share of the curated set held out, by a hash of the id (default 0.2)")
    p.add_argument("--num-classes", type=int, default=0, help="classes (default: largest label + 1)")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes per worker")
    p.add_argument("--checkpoint-dir", default=None,
                   help="Ray Train storage path, local or shared (default RUN_DIR/train)")
    p.add_argument("--name", default=None, help="run name under the storage path (default TASK-TIMESTAMP)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every N epochs (and the last)")
    p.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept (0 = all)")
    p.add_argument("--max-failures", type=int, default=0,
                   help="worker-group restarts, each resuming from the latest checkpoint")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the history and summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (the per-epoch rows still print)")
    p.add_argument("--verbose", dest="ray_logs", action="store_true",
                   help="show Ray's own console output too: worker and controller logs, each report (also "
                        "`curator -v train`); Ray's log files have it either way")
    p.set_defaults(func=cmd_train)
