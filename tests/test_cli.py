"""The `curator` command end to end: demo, ingest (files, CLIP and precomputed), query, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from curator.demo_data import png_bytes
from curator.store import read_manifest, read_table
from curator.store.query import query

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def curator(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=300)


def test_demo_runs_offline_and_writes_a_queryable_curated_set(tmp_path):
    out = tmp_path / "demo"
    r = curator("demo", "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "relabelled" in r.stdout and "dropped-duplicate" in r.stdout and "curator query" in r.stdout
    m = read_manifest(out)
    assert m["bootstrapped"] and m["commit"] >= 2
    n_stream = 1427  # 1098 streamed originals + 329 copies
    dec = query(out, "SELECT count(*) AS n, count(DISTINCT id) AS u FROM decisions WHERE seq >= 100").to_pylist()[0]
    assert dec == {"n": n_stream, "u": n_stream}
    kept = read_table(out, "kept")
    assert kept.schema.field("embedding").type.list_size == 64
    sims = query(out, "SELECT min(array_cosine_similarity(embedding::FLOAT[64], embedding::FLOAT[64])) AS s "
                      "FROM kept").column("s")[0].as_py()
    assert sims == pytest.approx(1.0, abs=1e-5)
    # the thresholds it chose, and why: in the manifest and from `curator config --show`
    cal = m["calibration"]
    assert cal["eps_dup"]["origin"].startswith("calibrated from") and cal["tau_noise"]["trusted_votes"] == 100
    shown = curator("config", "--show", str(out))
    assert shown.returncode == 0, shown.stderr
    assert f"selector.eps_dup = {cal['eps_dup']['value']:.6g}  ({cal['eps_dup']['origin']})" in shown.stdout
    assert "noise_rate:" in shown.stdout and "q05:" in shown.stdout
    missing = curator("config", "--show", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no manifest.json" in missing.stderr


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_ingest_quarantines_bad_records_and_resumes_idempotently(tmp_path):
    rng = np.random.default_rng(0)
    good = [{"id": f"g{i}", "embedding": rng.normal(size=8).tolist(), "label": int(i % 3)} for i in range(300)]
    bad = ["{not json", {"id": "nan", "embedding": [float("nan")] * 8}, {"id": "dim", "embedding": [1.0] * 7},
           {"id": "empty", "text": ""}, {"id": "nothing"}, "[1, 2]"]
    src = tmp_path / "in.jsonl"
    _jsonl(src, good[:150] + bad + good[150:])
    out = tmp_path / "run"
    args = ["ingest", str(src), "--embedder.kind", "precomputed", "--store.out", str(out),
            "--store.commit-every", "64", "--source.batch-size", "50", "-q"]
    r = curator(*args)
    assert r.returncode == 0, r.stderr
    assert "no trusted bootstrap" in r.stderr
    q = read_table(out, "quarantine").to_pylist()
    assert len(q) == len(bad)
    reasons = " | ".join(x["reason"] for x in q)
    for word in ("JSON", "NaN", "expected 8", "empty caption", "nothing to embed", "object"):
        assert word in reasons, (word, reasons)
    assert all(x["source"] == str(src) and x["offset"] >= 150 for x in q)
    before = query(out, "SELECT decision, count(*) AS n FROM decisions GROUP BY 1 ORDER BY 1").to_pylist()
    assert sum(x["n"] for x in before) == 306
    commits = read_manifest(out)["commit"]
    r2 = curator(*args)  # everything is committed: a rerun decides nothing twice
    assert r2.returncode == 0, r2.stderr
    after = query(out, "SELECT decision, count(*) AS n FROM decisions GROUP BY 1 ORDER BY 1").to_pylist()
    assert after == before and read_manifest(out)["commit"] == commits + 1


def test_ingest_with_clip_on_an_image_folder(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    root = tmp_path / "imgs"
    for i in range(60):
        d = root / str(y[i])
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i}.png").write_bytes(png_bytes(x[i]))
        (d / f"{i}.txt").write_text(f"a handwritten digit {y[i]}")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "run"
    r = curator("ingest", str(root), "--embedder.model", "curator-tiny", "--embedder.pretrained", "",
                "--selector.align-mode", "off", "--store.out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    kept = read_table(out, "kept")
    assert kept.num_rows > 0 and "text_embedding" in kept.schema.names
    m = read_manifest(out)
    assert m["model"].startswith("open_clip:curator-tiny")
    q = read_table(out, "quarantine").to_pylist()
    assert len(q) == 1 and q[0]["id"].endswith("broken.png")
    assert "truncated" in q[0]["reason"] or "image" in q[0]["reason"]
    total = query(out, "SELECT count(*) AS n FROM decisions").column("n")[0].as_py()
    assert total == 61


def test_unreachable_weights_and_bad_flags_are_user_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    r = curator("ingest", str(tmp_path / "a.jsonl"), "--store.out", str(tmp_path / "o"), "-q")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "ViT-B-32" in r.stderr and "pretrained" in r.stderr
    r = curator("ingest", str(tmp_path / "a.jsonl"), "--selector.k-gain", "many")
    assert r.returncode == 2 and "selector.k_gain: expected int" in r.stderr
    r = curator("ingest", str(tmp_path / "missing.parquet"), "--embedder.kind", "precomputed",
                "--store.out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "missing.parquet" in r.stderr


def test_help_explains_options():
    r = curator("ingest", "--help")
    assert r.returncode == 0 and "--selector.eps-dup" in r.stdout and "near-duplicate" in r.stdout
    r = curator("config", "--reference")
    assert "`selector.k_gain`" in r.stdout


def test_the_command_loads_torch_only_for_the_commands_that_use_it():
    """The parser is built from every subcommand: `train`'s must not load torch (~0.5 s and ~600 MB
    resident) into `curator serve`'s driver, `query` or `export`; `curator.train`'s names still resolve."""
    code = ("import sys\n"
            "from pipelines.cli import build_parser\n"
            "p = build_parser()\n"
            "assert p.parse_args(['train', 'RUN', '--bands', '0.2:0.5']).task == 'mlp'\n"
            "assert 'torch' not in sys.modules, 'building the parser imported torch'\n"
            "from curator.train import TASKS, InfoBatchSampler, parse_bands\n"
            "assert TASKS == ('linear', 'mlp', 'cnn') and parse_bands('paper') == [[0.2, 0.25], [0.85, 0.5]]\n"
            "assert 'torch' in sys.modules and InfoBatchSampler.__module__ == 'curator.train.sampler'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
