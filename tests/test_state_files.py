"""The label votes' vectors are a file beside the manifest, written only when rows were added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curator.select.trust import LooVotes
from curator.store import StoreError, StoreWriter
from curator.store.writer import STATE_DIR


def _rows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, 40, n)


def test_votes_file_is_rewritten_only_when_rows_are_added_and_restores(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = StoreWriter.open(tmp_path, {"model": "m", "config_fingerprint": "f"})
    votes = LooVotes(5, 0.1)
    votes.add(*_rows(rng, 300))
    written: list[str] = []

    def put(name: str, produce):  # noqa: ANN001, ANN202 - the StoreWriter's, counting what it writes
        return w.put_state_file(name, lambda: written.append(name) or produce())

    first = votes.state_dict(put)
    assert first is not None and "x" not in first
    w.commit({}, {"loo": first}, None)
    assert w.manifest["state_files"] == [first["x_file"]] and (tmp_path / first["x_file"]).exists()
    for _ in range(3):  # nothing added: the commits name the same file and write nothing
        assert votes.state_dict(put) == first
        w.commit({}, {"loo": first}, None)
    assert len(written) == 1

    votes.add(*_rows(rng, 50))
    grown = votes.state_dict(put)
    assert grown is not None and grown["x_file"] != first["x_file"]
    w.commit({}, {"loo": grown}, None)
    assert len(written) == 2 and not (tmp_path / first["x_file"]).exists()  # the replaced one is gone

    back = LooVotes.from_state(grown, 5, 0.1, w.read_state_file)
    assert back.state_dict() == votes.state_dict()  # the same rows (inline, as base64)
    a, b = back.evidence(), votes.evidence()
    assert np.array_equal(a.clean, b.clean) and np.array_equal(a.noisy, b.noisy)
    assert back.state_dict(put) == grown and len(written) == 2  # a restored one names its file again

    # a file no committed manifest names (a crash before the manifest) is removed on open
    (tmp_path / STATE_DIR / "loo-9-0.f32").write_bytes(b"x" * 64)
    again = StoreWriter.open(tmp_path, {"model": "m", "config_fingerprint": "f"})
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == [grown["x_file"].split("/")[-1]]
    assert again.read_state_file(grown["x_file"]) == votes.x[:votes.n].tobytes()

    # a state file the manifest names but the directory lost: a clear error, not empty evidence
    (tmp_path / grown["x_file"]).unlink()
    with pytest.raises(StoreError, match=r"names as part of the selector's state, cannot be read .*damaged"):
        LooVotes.from_state(grown, 5, 0.1, again.read_state_file)
    with pytest.raises(ValueError, match="keeps its label votes' vectors in a file"):
        LooVotes.from_state(grown, 5, 0.1)  # no reader for the file


def test_a_run_resumed_from_a_votes_file_decides_as_an_uninterrupted_one(tmp_path: Path) -> None:
    """40 classes in 400 items: the label rule never gathers its votes, so every commit's state holds
    the votes' vectors -- in a file, which a resumed run reads back into the same evidence."""
    import json

    from curator.store import read_manifest
    from curator.store.query import query
    from tests.test_resume_files import curator

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(40, 16))
    labels = rng.integers(0, 40, 400)
    x = centers[labels] + 0.3 * rng.normal(size=(400, 16))
    lines = [json.dumps({"id": f"r{i:03d}", "embedding": x[i].tolist(), "label": int(labels[i])}) + "\n"
             for i in range(400)]
    (tmp_path / "grown").mkdir()
    (tmp_path / "whole").mkdir()
    (tmp_path / "grown" / "a.jsonl").write_text("".join(lines[:200]))
    (tmp_path / "whole" / "a.jsonl").write_text("".join(lines))

    def ingest(folder: str) -> Path:
        out = tmp_path / f"run-{folder}"
        r = curator("ingest", str(tmp_path / folder / "a.jsonl"), "--embedder.kind", "precomputed",
                    "--source.batch-size", "50", "--store.commit-every", "100", "--store.out", str(out), "-q")
        assert r.returncode == 0, r.stderr
        return out

    grown = ingest("grown")
    m = read_manifest(grown)
    assert m is not None and m["state_files"] == [m["selector_state"]["loo"]["x_file"]]
    assert (grown / m["state_files"][0]).stat().st_size == 200 * 16 * 4  # every item votes (all labelled)
    with open(tmp_path / "grown" / "a.jsonl", "a") as f:
        f.write("".join(lines[200:]))
    assert ingest("grown") == grown
    sql = "SELECT id, decision, label_out, dup_of FROM decisions ORDER BY id"
    whole = ingest("whole")
    got, want = query(grown, sql).to_pylist(), query(whole, sql).to_pylist()
    assert len(got) == 400 and got == want
    # the evidence goes on from the restored votes: the calibration at item 256 (in the second run)
    # counts the first run's 200 votes too, as the uninterrupted run's does
    cal = read_manifest(grown)["calibration"]  # type: ignore[index]
    assert cal == read_manifest(whole)["calibration"]  # type: ignore[index]
    assert cal["tau_noise"]["trusted_votes"] == 256, cal["tau_noise"]
    assert len(list((grown / STATE_DIR).iterdir())) == 1  # the replaced files are gone
