"""Training on the curated set: a 2-worker Ray Train job, the built-in tasks, resume, inputs."""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from curator.demo_data import demo_config, write_demo_inputs
from curator.train import (
    SAMPLER_PARTS,
    TASK_COLUMNS,
    EpochLoop,
    TrainSettings,
    build_dataset,
    build_model,
    curated_parts,
    feature_stats,
    initial_scores,
    labels_of,
    load_model,
    make_sampler,
    parse_bands,
    read_parts,
    split_eval,
)
from pipelines.ingest import run_ingest
from pipelines.train import TABLE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The curated digits demo set (about 1200 kept items, embeddings and 8x8 PNGs)."""
    out = tmp_path_factory.mktemp("train") / "demo"
    write_demo_inputs(out, seed=0)
    run_ingest(demo_config(out, seed=0), progress=False)
    return out


@pytest.fixture
def one_thread():
    """One torch thread: steady CPU timings and bitwise-repeatable kernels; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _parse(argv: list[str]) -> argparse.Namespace:
    from pipelines.train import add_command

    p = argparse.ArgumentParser()
    add_command(p.add_subparsers(dest="command"))
    return p.parse_args(["train", *argv])


def _loop(run: Path, task: str, **kw: object) -> EpochLoop:
    s = TrainSettings(task=task, **kw)  # type: ignore[arg-type]
    tbl = read_parts(curated_parts(run), TASK_COLUMNS[task])
    tr, ev = split_eval(tbl, 0.2)
    torch.manual_seed(s.seed)
    tds = build_dataset(task, tr)
    eds = build_dataset(task, ev, **({"image_size": tds.size, "channels": tds.channels} if task == "cnn" else {}))
    model = build_model(task, tds.sample_shape, int(labels_of(tbl).max()) + 1, s.hidden,
                        feature_stats=feature_stats(tds))
    return EpochLoop(model, tds, eds, s, make_sampler(len(tds), s, init=initial_scores(tr)))


# ------------------------------------------------------------------ the Ray Train job
@pytest.mark.ray
def test_train_command_prints_one_row_per_epoch_and_no_ray_noise(demo_run: Path, ray_local, tmp_path: Path) -> None:
    """`curator train` as users run it (its own driver, joining the cluster): the table's header once, one
    row per epoch, a progress bar, and none of Ray's console output -- unless --verbose."""
    address = ray_local.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", str(demo_run), "--workers", "2", "--epochs", "4",
                        "--use-gpu", "off", "--address", address, "--checkpoint-dir", str(tmp_path), "--name", "quiet"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert [ln.split() for ln in lines if "train_loss" in ln] == [list(TABLE)]  # the header, once
    rows = [ln.split() for ln in lines if re.fullmatch(r"\s*\d+(\s+[-\d.e+na]+){7}", ln)]
    assert [int(row[0]) for row in rows] == [0, 1, 2, 3]  # one row per epoch, once each
    assert re.search(r"training: 100%\|.*\| 4/4", r.stderr)  # the progress bar
    for noise in ("TrainingReport", "RayTrainWorker", "TrainController", "Started a local Ray", "core_worker"):
        assert noise not in r.stdout + r.stderr, noise
    assert "eval accuracy" in r.stdout and (tmp_path / "quiet" / "train_summary.json").is_file()


@pytest.mark.ray
def test_two_worker_ray_train_job_on_the_curated_demo_set(demo_run: Path, ray_local, tmp_path: Path) -> None:
    from pipelines.train import format_history, job_config, run_train_job

    args = _parse([str(demo_run), "--task", "mlp", "--workers", "2", "--epochs", "5", "--batch-size", "64",
                   "--prune-ratio", "0.5", "--init-from-gain", "--use-gpu", "off"])
    config = job_config(args)
    assert config["num_classes"] == 10 and config["parts"]
    out = run_train_job(config, workers=2, use_gpu="off", storage_path=tmp_path / "ckpt", name="demo-mlp")

    hist = out["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3, 4]
    for h in hist:
        assert {"train_loss", "eval_acc", "pruned", "saving", "sampler_overhead", "sampler_land_s"} <= set(h)
        assert math.isfinite(h["train_loss"]) and h["eval_items"] > 100
    assert hist[-1]["eval_acc"] > 0.5  # chance is 0.1
    assert hist[0]["pruned"] > 0  # gain-initialised scores prune from epoch 0
    assert hist[-1]["pruned"] == 0  # C=5, delta=0.875: the last epoch anneals on full data
    assert hist[-1]["saving"] > 0 and hist[-1]["saving"] == pytest.approx(
        sum(h["pruned"] for h in hist) / (5 * hist[0]["train_items"]))
    assert out["final"]["epoch"] == 4 and out["workers"] == 2 and out["use_gpu"] is False
    # what Ray adds to each epoch: the report waits for the controller's next poll of the workers (2 s by
    # Ray's default, which made every epoch of this job take 2 s)
    waits = [b["elapsed_s"] - a["elapsed_s"] - b["epoch_s"] for a, b in zip(hist, hist[1:], strict=False)]
    assert sorted(waits)[len(waits) // 2] < 1.0, waits  # the median: one slow report on a busy machine is not this

    ckpt = Path(out["checkpoint"])
    assert (ckpt / "checkpoint.pt").exists() and (ckpt / "history.json").exists()
    model = load_model(ckpt)
    x = torch.from_numpy(np.stack(read_parts(curated_parts(demo_run), ["label", "embedding"])
                                  .column("embedding").to_pylist()[:8]).astype(np.float32))
    assert model(x).shape == (8, 10)
    assert (Path(out["storage"]) / "train_summary.json").exists()
    assert "eval_acc" in format_history(hist)


# ------------------------------------------------------------------ the tasks, in-process
def test_cnn_trains_on_the_stored_images(demo_run: Path, one_thread: None) -> None:
    loop = _loop(demo_run, "cnn", epochs=3, batch_size=64, lr=2e-3)
    assert loop.train_ds.sample_shape == (1, 8, 8)  # grayscale 8x8 PNGs decoded as one channel
    hist = [loop.run_epoch(e) for e in range(3)]
    assert hist[0]["pruned"] == 0 and hist[1]["pruned"] > 0  # no initial scores: epoch 0 keeps all
    assert hist[-1]["eval_acc"] > 0.5
    assert 0 < hist[-1]["sampler_s"] < hist[-1]["train_s"]
    parts = {k: hist[-1][f"sampler_{k}_s"] for k in SAMPLER_PARTS}  # where the sampler's time went
    assert sum(parts.values()) == pytest.approx(hist[-1]["sampler_s"]) and parts["step"] > 0 and parts["draw"] > 0
    assert parts["land"] == 0 and hist[-1]["sampler_background_cpu_s"] == 0  # one process: nothing travels


def test_linear_probe_and_bands(demo_run: Path) -> None:
    loop = _loop(demo_run, "linear", epochs=4, batch_size=64, lr=1e-2, bands=parse_bands("paper"))
    hist = [loop.run_epoch(e) for e in range(4)]
    assert hist[1]["pruned"] > 0 and hist[-1]["eval_acc"] > 0.5


def test_resume_from_a_checkpoint_continues_as_the_uninterrupted_run(demo_run: Path, tmp_path: Path,
                                                                      one_thread: None) -> None:
    kw = {"epochs": 4, "batch_size": 64, "lr": 5e-3, "prune_ratio": 0.5, "seed": 3}
    straight = _loop(demo_run, "mlp", **kw)
    full = [straight.run_epoch(e) for e in range(4)]

    first = _loop(demo_run, "mlp", **kw)
    for e in range(2):
        first.run_epoch(e)
    first.save(tmp_path / "ck", 1, {"task": "mlp", "sample_shape": [64], "num_classes": 10, "hidden": 256})
    resumed = _loop(demo_run, "mlp", **{**kw, "seed": 3})
    start = resumed.load(tmp_path / "ck")
    assert start == 2
    rest = [resumed.run_epoch(e) for e in range(start, 4)]
    for a, b in zip(full[2:], rest, strict=True):
        assert (a["kept"], a["total_pruned"]) == (b["kept"], b["total_pruned"])
        assert a["eval_acc"] == pytest.approx(b["eval_acc"], abs=1e-9)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert len(resumed.history) == 4


# ------------------------------------------------------------------ inputs
def test_eval_split_is_deterministic_by_id(demo_run: Path) -> None:
    tbl = read_parts(curated_parts(demo_run), ["id", "label"])
    tr, ev = split_eval(tbl, 0.2)
    tr2, ev2 = split_eval(tbl.take(np.random.default_rng(0).permutation(tbl.num_rows)), 0.2)
    assert set(ev.column("id").to_pylist()) == set(ev2.column("id").to_pylist())
    assert not set(tr.column("id").to_pylist()) & set(ev.column("id").to_pylist())
    assert 0.15 < ev.num_rows / tbl.num_rows < 0.25
    assert split_eval(tbl, 0.0)[1].num_rows == 0


def test_eval_path_kinds_and_unlabelled_rows(demo_run: Path, tmp_path: Path) -> None:
    from pipelines.train import eval_parts

    assert eval_parts(demo_run) == curated_parts(demo_run)
    f = tmp_path / "held.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "label": [1, None],
                             "embedding": pa.array([[0.0] * 64, [1.0] * 64], pa.list_(pa.float32(), 64))}), f)
    assert eval_parts(f) == [str(f)] and eval_parts(tmp_path) == [str(f)]
    assert read_parts([f], TASK_COLUMNS["mlp"]).num_rows == 1  # rows without a label are dropped
    with pytest.raises(FileNotFoundError):
        eval_parts(tmp_path / "missing")


def test_parse_bands_and_settings_errors() -> None:
    assert parse_bands("paper") == [[0.2, 0.25], [0.85, 0.5]]
    assert parse_bands("0.3:0.5") == [[0.3, 0.5]] and parse_bands(None) is None
    with pytest.raises(ValueError, match="QUANTILE:KEEP"):
        parse_bands("0.3")
    with pytest.raises(ValueError, match="task must be"):
        TrainSettings(task="resnet")


def test_initial_scores_fill_missing_gains() -> None:
    tbl = pa.table({"gain_norm": pa.array([0.2, None, float("nan")], pa.float32())})
    assert initial_scores(tbl).tolist() == pytest.approx([0.2, 1.0, 1.0])


def test_cli_registers_train_without_importing_ray() -> None:
    code = ("import sys; from pipelines.cli import build_parser; build_parser().parse_args(['train', 'x']); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
