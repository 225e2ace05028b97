"""`curator ingest --engine ray`: Ray Data reads and embeds, the selector actor decides, in stream order.

Files are cut differently than in the in-process loop (Ray Data's batches never cross a read range or
a file; `curator ingest`'s span files), so this also checks that decisions do not depend on where
batches are cut.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator.demo_data import demo_config, write_demo_inputs
from curator.store import read_manifest, read_table
from pipelines.config import ServeConfig, validate_serve_config
from pipelines.drivers import ray_data
from pipelines.ingest import run_ingest

#: what the selector decides (exactly equal) vs. the scores it computes (equal to float32 rounding:
#: batched matrix products of other shapes round differently in the last bit)
RUN_COLS = {"model", "config_fingerprint"}


def _split_inputs(root: Path) -> Path:
    """The demo stream as four Parquet files of uneven sizes and row groups."""
    write_demo_inputs(root, seed=5)
    t = pq.read_table(root / "inputs" / "stream.parquet")
    parts = root / "parts"
    parts.mkdir()
    cuts = [0, 500, 833, 1100, t.num_rows]
    for i in range(4):
        pq.write_table(t.slice(cuts[i], cuts[i + 1] - cuts[i]), parts / f"p{i}.parquet", row_group_size=77)
    return parts


def _assert_same(a_dir: Path, b_dir: Path) -> None:
    a = read_table(a_dir, "decisions").sort_by("seq")
    b = read_table(b_dir, "decisions").sort_by("seq")
    assert a.num_rows == b.num_rows > 1000
    for col in a.column_names:
        if col in RUN_COLS:
            continue
        x, y = a.column(col).to_pylist(), b.column(col).to_pylist()
        if pa.types.is_floating(a.schema.field(col).type):
            assert all((p is None) == (q is None) and (p is None or abs(p - q) <= 1e-5) for p, q in zip(x, y, strict=True)), col
        else:
            assert x == y, col
    assert sorted(read_table(a_dir, "kept").column("id").to_pylist()) == \
        sorted(read_table(b_dir, "kept").column("id").to_pylist())
    ma, mb = read_manifest(a_dir), read_manifest(b_dir)
    assert ma is not None and mb is not None
    assert ma["positions"] == mb["positions"] and ma["counts"] == mb["counts"]


def _serve_cfg(cfg, shards: int = 1) -> ServeConfig:  # noqa: ANN001
    scfg = ServeConfig(run=cfg)
    s = scfg.service
    # 2 CPUs in all: 2 embedder actors, the selector, the shards, and Ray Data's readers (0.5)
    s.embed_actors, s.embed_num_cpus, s.selector_num_cpus, s.shard_num_cpus = 2, 0.4, 0.3, 0.2
    scfg.run.selector.shards = shards
    validate_serve_config(scfg)
    return scfg


@pytest.mark.ray
@pytest.mark.timeout(400)
@pytest.mark.parametrize("shards", [1, 2])
def test_ray_data_engine_decides_as_in_process(ray_local, tmp_path: Path, monkeypatch, shards: int) -> None:
    parts = _split_inputs(tmp_path)
    monkeypatch.setattr(ray_data, "BATCHES_PER_RANGE", 3)  # ranges inside files: several read tasks per file
    over = {"store": {"commit_every": 300}, "selector": {"shards": shards}}
    local = demo_config(tmp_path, 5, over)
    local.source.paths, local.store.out = [str(parts)], str(tmp_path / "local")
    run_ingest(local, progress=False)

    cfg = demo_config(tmp_path, 5, over)
    cfg.source.paths, cfg.store.out = [str(parts)], str(tmp_path / "ray")
    m = ray_data.run_ingest_ray(_serve_cfg(cfg, shards), progress=False)
    assert m["commit"] >= 2 and len(m.get("shards", {}).get("checkpoints", [0] * shards)) == shards
    _assert_same(tmp_path / "local", tmp_path / "ray")


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_ray_data_engine_resumes_after_its_last_commit(ray_local, tmp_path: Path) -> None:
    """A run stopped early (source.limit), then run again: the same decisions as one run."""
    parts = _split_inputs(tmp_path)
    full = demo_config(tmp_path, 5, {"store": {"commit_every": 256}})
    full.source.paths, full.store.out = [str(parts)], str(tmp_path / "full")
    run_ingest(full, progress=False)

    cfg = demo_config(tmp_path, 5, {"store": {"commit_every": 256}})
    cfg.source.paths, cfg.store.out, cfg.source.limit = [str(parts)], str(tmp_path / "twice"), 600
    first = ray_data.run_ingest_ray(_serve_cfg(cfg), progress=False)
    decided = sum(first["counts"].values())
    assert 600 <= decided < 1427
    cfg.source.limit = 0
    ray_data.run_ingest_ray(_serve_cfg(cfg), progress=False)
    _assert_same(tmp_path / "full", tmp_path / "twice")


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_ingest_engine_ray_on_the_command_line(ray_local, tmp_path: Path, capsys) -> None:
    from pipelines.cli import main

    write_demo_inputs(tmp_path, seed=1)
    inputs = tmp_path / "inputs"
    rc = main(["ingest", "--engine", "ray", "-q", str(inputs / "stream.parquet"),
               "--source.bootstrap", str(inputs / "bootstrap.parquet"), "--embedder.kind", "precomputed",
               "--embedder.model", "digits-pixels", "--store.out", str(tmp_path / "run"),
               "--service.embed-actors", "1", "--service.embed-num-cpus", "0.5", "--service.selector-num-cpus", "0.5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "curated set:" in out and "kept" in out
    m = read_manifest(tmp_path / "run")
    assert m is not None and m["bootstrapped"]
    assert sum(n for parts in m["positions"].values() for n in parts.values()) == 1427  # the whole stream
    assert sum(m["counts"].values()) == 1427 + 100  # and the trusted bootstrap



@pytest.mark.ray
@pytest.mark.timeout(400)
def test_ray_data_engine_resumes_a_run_with_the_keys_it_started_with(ray_local, tmp_path: Path) -> None:
    """A run from before the scheme of the exact copy keys was recorded (blake2b-64 keys, no
    `content_keys` in its manifest) resumes under Ray Data with its own keys in the workers that hash
    the pictures, so copies of its earlier items are still exact copies; asking it for other keys is
    refused. (One machine: the workers see the run directory too; on a cluster they get the scheme the
    driver resolved from it.)"""
    import json

    from curator.config import load_config
    from curator.sample_photos import decode, encode, photo_tiles
    from curator.store.writer import StoreError

    src = tmp_path / "photos"
    src.mkdir()
    for i, t in enumerate(photo_tiles(10, 128, seed=2)):
        (src / f"p{i:02d}.jpg").write_bytes(encode(t))

    def ingest(keys: str = "auto") -> dict:
        cfg = load_config(None, {"embedder": {"model": "curator-tiny", "pretrained": "", "device": "cpu",
                                              "content_keys": keys},
                                 "selector": {"align_mode": "off", "eps_dup": 0.0},
                                 "store": {"out": str(tmp_path / "run")},
                                 "source": {"paths": [str(src)], "batch_size": 4}})
        return ray_data.run_ingest_ray(_serve_cfg(cfg), progress=False)

    ingest("blake2b-64")
    path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest.pop("content_keys") == "blake2b-64"
    path.write_text(json.dumps(manifest))  # as a run of the version before wrote it
    (src / "p02z.jpg").write_bytes((src / "p02.jpg").read_bytes())
    (src / "p04z.png").write_bytes(encode(decode((src / "p04.jpg").read_bytes()), "PNG"))
    with pytest.raises(StoreError, match="--embedder.content_keys blake2b-64"):
        ingest("xxh3-64")
    ingest()
    d = {r["id"]: r["reason"] for r in read_table(tmp_path / "run", "decisions").to_pylist()}
    assert d["p02z.jpg"] == "duplicate of p02.jpg (exact hash: same image bytes)"
    assert d["p04z.png"] == "duplicate of p04.jpg (exact hash: same decoded pixels)"
    assert json.loads(path.read_text())["content_keys"] == "blake2b-64"
