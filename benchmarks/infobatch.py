"""InfoBatch on curated sets: full data vs dynamic pruning vs static random pruning vs gain-initialised.

    python benchmarks/infobatch.py [--datasets digits digits-cnn fashion] [--seeds 0 1 2]
                                   [--cost-datasets digits] [--workers 1 2] [--repeats 3] [--json FILE]

Two tables. The first (accuracy) runs in-process with plain PyTorch (the same
curator.train loop the Ray Train workers run, one process, ``--threads`` CPU threads), so
it measures the sampler, not Ray. The second (cost) times what the sampler costs a
training step and what pruning saves on the wall clock, in-process and as a real Ray
Train job (``curator train``'s TorchTrainer, gloo, CPU workers) with each ``--workers``
count: full data (r = 0) and InfoBatch r = 0.5, ``--repeats`` runs each, interleaved.

Data sets (all real, all offline):

- ``digits`` / ``digits-cnn``: the curated digits demo set of each seed (scikit-learn's
  bundled digits streamed dirty through `curator demo`'s selection: labels corrected,
  near-duplicates dropped), an MLP on the stored embeddings / the small CNN on the stored
  8x8 PNGs. Evaluated on the demo's held-out third (never streamed): 599 images.
- ``fashion``: Fashion-MNIST (70k 28x28 grayscale images; harder: a pixel MLP reaches
  ~89%, not ~97%), from the Debian package ``dataset-fashion-mnist`` (files under
  /usr/share/datasets/fashion-mnist; ``apt-get install dataset-fashion-mnist``). No
  Python package ships a harder image set offline: scikit-learn's ``fetch_*`` and
  torchvision's datasets download at run time, and the sets scikit-learn bundles besides
  digits (iris, wine, breast cancer) are tiny tabular ones where pruning is meaningless.
  The 60k training images go through curator's own selection (precomputed embeddings =
  the pixels, exact-duplicate removal, label cleaning off: the set is clean) so they
  carry InfoGrowth gains like any curated set; the MLP trains on the stored embeddings
  and is evaluated on the official 10k test split. The curated set is cached in --work.
  Skipped, with a note, when the package is not installed.

Variants per data set and seed (same model, optimizer, cosine schedule and epochs C):

- ``full``: every sample every epoch (the sampler with r = 0, so the code path is the same);
- ``ib_r0.3`` / ``ib_r0.5`` / ``ib_r0.7``: InfoBatch with that prune ratio, delta = 0.875;
- ``random_r*``: static random pruning at the *same achieved saving* as ``ib_r*`` of that
  seed: a fixed random subset of (1 - saving) * N samples, trained for C epochs;
- ``gain_r0.5``: InfoBatch r = 0.5 with initial scores from the stored InfoGrowth
  ``gain_norm`` (epoch 0 already prunes the least informative items).

Columns: test accuracy mean, spread (sample std over seeds) and median; the difference of
the mean to ``full``; achieved saving = sum(pruned) / (C * N); training wall time (sum of
the epochs' training time, evaluation excluded) mean; sampler overhead = time inside the
sampler's calls (set_epoch, iteration, step) / training time, and per step in microseconds.

Cost columns (medians over ``--repeats`` runs of seed 0's data; ``runs`` says how many;
every run's figures are in ``--json`` under ``cost_runs``): ``executor`` in-process or
``ray xW`` (W Ray Train workers, per-worker batch = batch / W); ``steps`` per rank over the
run; ``step_ms`` = epoch-loop time / steps; sampler cost per step in microseconds and its
share of the epoch-loop time (under Ray: summed over ranks / summed epoch-loop time);
``later_share_pct``, the same over the epochs after the first, and ``first_ms``, the first
epoch's sampler time, which also holds one-time set-up (under Ray the blocking check that
the ranks agree, and the exchanges' group and thread); then where the time goes, per step:
``draw_us`` (set_epoch's draw), ``iter_us`` (handing the loader its indices), ``step_us``
(recording losses, weighting the batch loss), ``sync_us`` (the epoch's losses applied;
under Ray taken and their exchange started) and ``land_us`` (waiting for that exchange);
``bg_cpu_us`` = CPU time the exchange and the next draw took on their background thread,
off the training thread (not in the share); ``saving`` = sum(pruned) / (C * N);
``loop_s`` = the epoch loop's wall time (sum over epochs of each epoch's training time:
the draw, every step, the epoch-end sync; evaluation excluded; under Ray the mean over
ranks); ``epoch_s`` = the whole epochs (loop, metric reduction and evaluation, which the
background exchange overlaps); ``time_saved`` = 1 - loop_s / loop_s of full data in the
same executor and run, the wall-clock speed-up; ``gap`` = saving - time_saved, in points
(target: under 5). ``control`` (in-process): full data with a step that only averages the
losses -- the cost of one reduction op where the step runs, the floor under the sampler's
cost there.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from curator.config import load_config  # noqa: E402
from curator.demo_data import demo_config, png_bytes, write_demo_inputs  # noqa: E402
from curator.train import (  # noqa: E402
    SAMPLER_PARTS,
    TASK_COLUMNS,
    EpochLoop,
    TimedSampler,
    TrainSettings,
    build_dataset,
    build_model,
    curated_parts,
    feature_stats,
    initial_scores,
    labels_of,
    make_sampler,
    read_parts,
)
from pipelines.ingest import run_ingest  # noqa: E402

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
RATIOS = (0.3, 0.5, 0.7)
VARIANTS = ("full", *(f"ib_r{r}" for r in RATIOS), *(f"random_r{r}" for r in RATIOS), "gain_r0.5")
COLS = ["dataset", "variant", "acc_mean", "acc_std", "acc_median", "acc_vs_full", "saving", "train_s",
        "speedup", "time_saved", "sampler_overhead_pct", "sampler_us_per_step", "seeds"]
COST_VARIANTS = {"full": 0.0, "ib_r0.5": 0.5, "control": 0.0}  # control: in-process only (MeanStep)
COST_COLS = ["dataset", "executor", "variant", "acc", "saving", "steps", "step_ms", "sampler_us_per_step",
             "sampler_share_pct", "later_share_pct", "first_ms", *(f"{k}_us" for k in SAMPLER_PARTS), "bg_cpu_us", "loop_s", "epoch_s", "time_saved",
             "gap", "runs"]

#: Per data set: task and training settings (AdamW, cosine, no warm-up).
SETUPS: dict[str, dict[str, Any]] = {
    "digits": {"task": "mlp", "epochs": 30, "batch_size": 64, "lr": 2e-3, "hidden": 256},
    "digits-cnn": {"task": "cnn", "epochs": 30, "batch_size": 64, "lr": 2e-3},
    "fashion": {"task": "mlp", "epochs": 20, "batch_size": 128, "lr": 1e-3, "hidden": 512},
}


@dataclass
class Data:
    name: str
    task: str
    train: Any  # dataset over the curated set
    test: Any  # dataset over the held-out test split
    gains: np.ndarray  # gain_norm per training item
    num_classes: int
    run_dir: Path  # the curated set's run directory (what a Ray Train job reads)
    test_path: Path  # the test split as one Parquet file (the Ray Train job's --eval)
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- data
def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _test_table(images: list[bytes], emb: np.ndarray, labels: np.ndarray) -> pa.Table:
    d = emb.shape[1]
    return pa.table({"id": [f"test-{i}" for i in range(len(labels))], "image": pa.array(images, pa.binary()),
                     "label": pa.array(labels.astype(np.int64)),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), d)})


def _datasets(name: str, task: str, run: Path, test: pa.Table) -> Data:
    train_tbl = read_parts(curated_parts(run), TASK_COLUMNS[task])
    tr = build_dataset(task, train_tbl)
    img = {"image_size": tr.size, "channels": tr.channels} if task == "cnn" else {}
    te = build_dataset(task, test, **img)
    k = int(max(labels_of(train_tbl).max(), labels_of(test).max())) + 1
    test_path = run.parent / f"{run.name}-test.parquet"
    pq.write_table(test, test_path)
    return Data(name, task, tr, te, initial_scores(train_tbl), k, run, test_path)


def digits(seed: int, work: Path, task: str) -> Data:
    out = work / f"digits-seed{seed}"
    ds = write_demo_inputs(out, seed)
    if not (out / "manifest.json").exists():
        run_ingest(demo_config(out, seed), progress=False)
    stored = read_parts(curated_parts(out), ["id", "embedding", "label"])
    # the demo's precomputed embedding is the L2-normalised pixels: embed the test split the same way
    test = _test_table([png_bytes(x) for x in ds.test_x], _unit(ds.test_x), ds.test_y)
    probe = np.asarray(stored.column("embedding")[0].as_py(), np.float32)
    assert abs(float(np.linalg.norm(probe)) - 1.0) < 1e-4, "stored digits embeddings are not unit vectors"
    return _datasets("digits" if task == "mlp" else f"digits-{task}", task, out, test)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def fashion(work: Path, bootstrap: int = 500) -> Data | None:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        return None
    out = work / "fashion"
    if not (out / "manifest.json").exists():
        t0 = time.perf_counter()
        x, y = _idx(FASHION_DIR / "train-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
        emb = x.reshape(len(x), -1).astype(np.float32) / 255.0
        d = emb.shape[1]
        tbl = pa.table({"id": [f"fm-{i}" for i in range(len(y))], "image": [_png(a) for a in x],
                        "label": pa.array(y.astype(np.int64)),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel(), pa.float32()), d)})
        (out / "inputs").mkdir(parents=True, exist_ok=True)
        pq.write_table(tbl.slice(0, bootstrap), out / "inputs" / "bootstrap.parquet")
        pq.write_table(tbl.slice(bootstrap), out / "inputs" / "stream.parquet")
        cfg = load_config(None, {
            "embedder": {"kind": "precomputed", "model": "fashion-pixels", "pretrained": ""},
            "selector": {"tau_noise": 0.0, "eps_dup": 0.0005, "seed": 0},  # clean set: no label cleaning
            "source": {"batch_size": 512, "paths": [str(out / "inputs" / "stream.parquet")],
                       "bootstrap": [str(out / "inputs" / "bootstrap.parquet")]},
            "store": {"out": str(out), "commit_every": 8192}})
        run_ingest(cfg, progress=False)
        print(f"fashion: curated 60000 images in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    xt, yt = _idx(FASHION_DIR / "t10k-images-idx3-ubyte.gz"), _idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz")
    test = _test_table([_png(a) for a in xt], _unit(xt.reshape(len(xt), -1)), yt)
    return _datasets("fashion", "mlp", out, test)


# --------------------------------------------------------------------- one training run
class MeanStep(TimedSampler):
    """Control for the cost table: a step that only averages the losses (no recording, no weights).

    What any loop that reduces per-sample losses pays in the step's place, i.e. the least
    the sampler's calls can cost there, and the loop time without InfoBatch's step.
    """

    def step(self, indices: Any, losses: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        try:
            return losses.mean()
        finally:
            self.part_seconds["step"] += time.perf_counter() - t


def summary(hist: list[dict[str, Any]]) -> dict[str, float]:
    """A run's figures from its per-epoch metrics (under Ray the times are means over ranks)."""
    train_s = sum(h["train_s"] for h in hist)
    sampler_s = sum(h["sampler_s"] for h in hist)
    steps = sum(h["steps"] for h in hist)
    out = {"acc": hist[-1]["eval_acc"], "saving": hist[-1]["saving"], "train_s": train_s, "sampler_s": sampler_s,
           "steps": steps, "overhead": sampler_s / train_s, "us_per_step": 1e6 * sampler_s / max(1, steps),
           "epoch_s": sum(h["epoch_s"] for h in hist),
           # the first epoch's sampler time (one-time set-up: under Ray the check that the ranks agree) apart
           # from the share over the epochs after it
           "first_ms": 1e3 * hist[0]["sampler_s"],
           "later_share": sum(h["sampler_s"] for h in hist[1:]) / max(1e-12, sum(h["train_s"] for h in hist[1:]))}
    for k in SAMPLER_PARTS:  # where the sampler's time goes, per step
        out[f"{k}_us"] = 1e6 * sum(h[f"sampler_{k}_s"] for h in hist) / max(1, steps)
    out["bg_cpu_us"] = 1e6 * sum(h["sampler_background_cpu_s"] for h in hist) / max(1, steps)
    return out


def train(data: Data, setup: dict[str, Any], seed: int, prune_ratio: float = 0.0, init_from_gain: bool = False,
          subset: np.ndarray | None = None, control: bool = False) -> dict[str, float]:
    s = TrainSettings(**setup, prune_ratio=prune_ratio, init_from_gain=init_from_gain, seed=seed)
    torch.manual_seed(seed)
    ds = data.train if subset is None else Subset(data.train, subset.tolist())
    model = build_model(s.task, data.train.sample_shape, data.num_classes, s.hidden,
                        feature_stats=feature_stats(ds))
    init = data.gains if subset is None else data.gains[subset]
    sampler = MeanStep(len(ds), s.epochs, prune_ratio=0.0, seed=seed) if control else make_sampler(len(ds), s, init=init)
    loop = EpochLoop(model, ds, data.test, s, sampler)
    out = summary([loop.run_epoch(e, evaluate=e == s.epochs - 1) for e in range(s.epochs)])
    if subset is not None:
        out["saving"] = 1.0 - len(subset) / len(data.train)
    return out


def run_seed(data: Data, setup: dict[str, Any], seed: int) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {"full": train(data, setup, seed)}
    for r in RATIOS:
        ib = res[f"ib_r{r}"] = train(data, setup, seed, prune_ratio=r)
        n = len(data.train)
        keep = int(round((1.0 - ib["saving"]) * n))
        subset = np.sort(np.random.default_rng([seed, int(r * 100)]).choice(n, keep, replace=False))
        res[f"random_r{r}"] = train(data, setup, seed, subset=subset)
    res["gain_r0.5"] = train(data, setup, seed, prune_ratio=0.5, init_from_gain=True)
    return res


# --------------------------------------------------------------------- the cost of the sampler
def train_ray(data: Data, setup: dict[str, Any], workers: int, prune_ratio: float, work: Path) -> dict[str, float]:
    """One `curator train` job (TorchTrainer, gloo, CPU workers) on the same curated set and settings."""
    from pipelines.train import run_train_job

    s = TrainSettings(**setup, prune_ratio=prune_ratio, seed=0)
    config = {"settings": s.as_dict(), "parts": curated_parts(data.run_dir), "eval_parts": [str(data.test_path)],
              "eval_share": 0.0, "num_classes": data.num_classes, "checkpoint_every": s.epochs,
              "run_dir": str(data.run_dir)}
    out = run_train_job(config, workers=workers, use_gpu="off", storage_path=work / "ray-train",
                        name=f"{data.name}-w{workers}-r{prune_ratio}-{time.time_ns()}")
    return summary(out["history"])


def cost_rows(name: str, executor: str, runs: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    med = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    rows = []
    for v, m in med.items():
        saved = 100 * (1.0 - m["train_s"] / med["full"]["train_s"])
        rows.append({"dataset": name, "executor": executor, "variant": v, "acc": 100 * m["acc"],
                     "saving": 100 * m["saving"], "steps": int(m["steps"]), "step_ms": 1e3 * m["train_s"] / m["steps"],
                     "sampler_us_per_step": m["us_per_step"], "sampler_share_pct": 100 * m["overhead"],
                     "later_share_pct": 100 * m["later_share"], "first_ms": m["first_ms"],
                     **{f"{k}_us": m[f"{k}_us"] for k in (*SAMPLER_PARTS, "bg_cpu")},
                     "loop_s": m["train_s"], "epoch_s": m["epoch_s"], "time_saved": saved, "gap": 100 * m["saving"] - saved,
                     "runs": len(runs[v])})
    return rows


def cost(data: Data, setup: dict[str, Any], workers: list[int], repeats: int, work: Path,
         every_run: dict[str, Any]) -> list[dict[str, Any]]:
    """In-process, then each Ray Train worker count: full and r = 0.5 interleaved, ``repeats`` times.

    Returns the table's rows (medians); each run's own figures go into ``every_run``."""
    rows = []
    for w in [0, *workers]:
        variants = {v: r for v, r in COST_VARIANTS.items() if w == 0 or v != "control"}
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for _ in range(repeats):
            for v, r in variants.items():
                runs[v].append(train(data, setup, 0, prune_ratio=r, control=v == "control") if w == 0
                               else train_ray(data, setup, w, r, work))
        executor = "in-process" if w == 0 else f"ray x{w}"
        rows += cost_rows(data.name, executor, runs)
        every_run[f"{data.name} {executor}"] = runs
        print(f"{data.name} cost, {'in-process' if w == 0 else f'{w} Ray Train worker(s)'}: done", file=sys.stderr)
    return rows


# --------------------------------------------------------------------- table
def summarise(name: str, per_seed: dict[int, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    rows = []
    full_acc = statistics.mean(per_seed[s]["full"]["acc"] for s in per_seed)
    full_t = statistics.mean(per_seed[s]["full"]["train_s"] for s in per_seed)
    for v in VARIANTS:
        acc = [per_seed[s][v]["acc"] for s in per_seed]
        t = statistics.mean(per_seed[s][v]["train_s"] for s in per_seed)
        rows.append({
            "dataset": name, "variant": v,
            "acc_mean": 100 * statistics.mean(acc),
            "acc_std": 100 * (statistics.stdev(acc) if len(acc) > 1 else 0.0),
            "acc_median": 100 * statistics.median(acc),
            "acc_vs_full": 100 * (statistics.mean(acc) - full_acc),
            "saving": 100 * statistics.mean(per_seed[s][v]["saving"] for s in per_seed),
            "train_s": t,
            "speedup": full_t / t,
            "time_saved": 100 * (1.0 - t / full_t),
            "sampler_overhead_pct": 100 * statistics.mean(per_seed[s][v]["overhead"] for s in per_seed),
            "sampler_us_per_step": statistics.mean(per_seed[s][v]["us_per_step"] for s in per_seed),
            "seeds": len(acc),
        })
    return rows


def format_rows(rows: list[dict[str, Any]], cols: list[str], text_cols: int = 2) -> str:
    def cell(v: Any, k: str) -> str:
        if isinstance(v, float):
            return f"{v:+.2f}" if k in ("acc_vs_full", "gap") else f"{v:.2f}"
        return str(v)

    table = [cols] + [[cell(r[k], k) for k in cols] for r in rows]
    w = [max(len(t[i]) for t in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(w[i]) if i >= text_cols else c.ljust(w[i]) for i, c in enumerate(t))
                     for t in table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="*", default=["digits", "digits-cnn", "fashion"],
                   choices=["digits", "digits-cnn", "fashion"], help="accuracy table (none: skip it)")
    p.add_argument("--cost-datasets", nargs="*", default=["digits"], choices=["digits", "digits-cnn", "fashion"],
                   help="cost table, on seed 0's data (none: skip it)")
    p.add_argument("--workers", nargs="*", type=int, default=[1, 2],
                   help="Ray Train worker counts for the cost table (none: in-process only)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant and executor in the cost table")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=0, help="override every setup's epochs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady timings)")
    p.add_argument("--work", default=None, help="where curated sets are written/cached (default: a temp dir)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the table (and per-seed figures)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work_ctx = tempfile.TemporaryDirectory(prefix="curator-ib-bench-") if args.work is None else None
    work = Path(args.work) if args.work else Path(work_ctx.name)  # type: ignore[union-attr]
    work.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    notes: list[str] = []
    t_all = time.perf_counter()
    for name in args.datasets:
        setup = dict(SETUPS[name])
        if args.epochs:
            setup["epochs"] = args.epochs
        per_seed: dict[int, dict[str, dict[str, float]]] = {}
        fdata = fashion(work) if name == "fashion" else None
        if name == "fashion" and fdata is None:
            notes.append(f"fashion skipped: {FASHION_DIR} not found (apt-get install dataset-fashion-mnist)")
            continue
        for seed in args.seeds:
            t0 = time.perf_counter()
            data = fdata if fdata is not None else digits(seed, work, setup["task"])
            assert data is not None
            per_seed[seed] = run_seed(data, setup, seed)
            print(f"{name} seed {seed}: {len(data.train)} train / {len(data.test)} test items, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        raw[name] = {"setup": setup, "per_seed": per_seed}
        rows += summarise(name, per_seed)

    cost_table: list[dict[str, Any]] = []
    cost_runs: dict[str, Any] = {}
    if args.cost_datasets and args.workers:
        import ray

        ray.init(log_to_driver=False, include_dashboard=False)  # workers' epoch lines would bury the tables
    try:
        for name in args.cost_datasets:
            setup = dict(SETUPS[name])
            if args.epochs:
                setup["epochs"] = args.epochs
            cdata = fashion(work) if name == "fashion" else digits(0, work, setup["task"])
            if cdata is None:
                notes.append(f"fashion cost skipped: {FASHION_DIR} not found")
                continue
            cost_table += cost(cdata, setup, args.workers, args.repeats, work, cost_runs)
    finally:
        if args.cost_datasets and args.workers:
            ray.shutdown()

    if rows:
        print(format_rows(rows, COLS))
    if cost_table:
        print()
        print(format_rows(cost_table, COST_COLS, text_cols=3))
    for n in notes:
        print(n)
    print(f"({time.perf_counter() - t_all:.0f} s; accuracy, saving, time_saved, shares in %, gap in points, "
          f"train_s and loop_s in seconds, {args.threads} CPU thread(s) in-process, 1 per Ray Train worker)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "columns": COLS, "rows": rows, "cost_columns": COST_COLS, "cost_rows": cost_table, "cost_runs": cost_runs,
            "raw": raw, "notes": notes, "seeds": args.seeds, "threads": args.threads, "workers": args.workers,
            "repeats": args.repeats}, indent=1))
    if work_ctx is not None:
        work_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
