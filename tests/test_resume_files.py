"""`curator ingest` resumed on inputs that changed in between: exactly the undecided items are decided."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from curator.demo_data import png_bytes
from curator.store.query import query

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def curator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                          env=ENV, timeout=300)


def decided_sources(out: Path) -> list[str]:
    """The source of every decision record (rejections included): one per input item."""
    return query(out, "SELECT source FROM decisions ORDER BY source").column("source").to_pylist()


def test_grown_image_folder_resumes_without_loss_or_repeat(tmp_path: Path) -> None:
    """The reported defect: images added before and after the others in sorted order, one renamed and
    one removed between two runs; every image present gets exactly one decision."""
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(40):
        (root / f"m_{i:02d}.png").write_bytes(png_bytes(x[i]))
    out = tmp_path / "run"
    args = ["ingest", str(root), "--embedder.model", "curator-tiny", "--embedder.pretrained", "",
            "--selector.align-mode", "off", "--store.out", str(out), "-q"]
    r = curator(*args)
    assert r.returncode == 0, r.stderr
    assert len(decided_sources(out)) == 40
    (root / "aaa_new.png").write_bytes(png_bytes(x[100]))
    (root / "zzzz_new.png").write_bytes(png_bytes(x[101]))
    (root / "m_05.png").rename(root / "renamed_05.png")
    (root / "m_07.png").unlink()
    r = curator(*args)
    assert r.returncode == 0, r.stderr
    got = decided_sources(out)
    assert len(got) == len(set(got)) == 42, sorted(s for s in got if got.count(s) > 1)
    assert {str(root / "aaa_new.png"), str(root / "zzzz_new.png")} <= set(got)
    assert str(root / "renamed_05.png") not in got  # a rename is the same item: not decided again


def test_appended_jsonl_and_added_files_resume(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()

    def rows(a: int, b: int) -> str:
        return "".join(json.dumps({"id": f"r{i}", "embedding": rng.normal(size=8).tolist()}) + "\n" for i in range(a, b))

    (data / "a.jsonl").write_text(rows(0, 50))
    out = tmp_path / "run"
    args = ["ingest", str(data / "*.jsonl"), "--embedder.kind", "precomputed", "--store.out", str(out), "-q"]
    r = curator(*args)
    assert r.returncode == 0, r.stderr
    with open(data / "a.jsonl", "a") as f:
        f.write(rows(50, 70))
    (data / "0_first.jsonl").write_text(rows(70, 80))
    r = curator(*args)
    assert r.returncode == 0, r.stderr
    ids = query(out, "SELECT id FROM decisions").column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(80))


def test_positions_by_listing_index_are_refused(tmp_path: Path) -> None:
    """A run directory whose file positions are listing indices (older curator) is not resumed blindly."""
    from connectors.files import FileSource, FileSourceError

    f = tmp_path / "a.jsonl"
    f.write_text('{"id": "x", "text": "a"}\n')
    try:
        list(FileSource(f).batches(4, {str(f): {0: 1}}))
    except FileSourceError as exc:
        assert "start a new run directory" in str(exc)
    else:
        raise AssertionError("old positions were resumed")
