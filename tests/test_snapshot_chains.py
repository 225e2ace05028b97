"""Incremental index snapshots: a commit writes the rows added since the last one (a delta), and now and
then the whole index (a base: after a rebuild, or once the deltas outweigh a share of the last base).

A restore from the manifest's chains gives the index as it was at that commit (the same FAISS bytes,
the same search results); a crash between a snapshot and its manifest leaves the committed one
restorable; garbage collection removes exactly what the manifest does not name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from curator.config import IndexConfig
from curator.index import VectorIndex
from curator.index.deltas import COMPACT_FRACTION
from curator.store import StoreWriter, read_manifest
from curator.store.shards import StoredShard
from tests.test_auto_index import AUTO, stream

M = "image"


def commit(w: StoreWriter, shard: StoredShard) -> dict:
    """Steps 1-3 of a commit: the shard's parts and snapshots, then the manifest naming them."""
    return w.commit({}, None, None, shards=[shard.write(w.commit_no + 1)])


def grow(shard: StoredShard, x: np.ndarray, s: int, e: int) -> None:
    """Index items s..e (stream positions s..e), then search as the next batch: a rebuild due goes into
    service, the exactly searched window moves on."""
    shard.add(M, x[s:e], [f"i{j}" for j in range(s, e)], np.arange(s, e) % 7, np.arange(s, e))
    shard.search(M, x[s:s + 8], 4, np.full(8, e))


def restored(run: Path, cfg: IndexConfig) -> VectorIndex:
    back = StoredShard(0, cfg, run)
    back.setup(read_manifest(run))
    return back.indexes[M]


def assert_same(a: VectorIndex, b: VectorIndex, x: np.ndarray) -> None:
    assert len(a) == len(b) and a.kind == b.kind and a.switch_at == b.switch_at
    assert faiss.serialize_index(a.index).tobytes() == faiss.serialize_index(b.index).tobytes()
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels) and np.array_equal(a.seqs, b.seqs)
    near = np.concatenate([x[:150], x[a.seqs[-150:]]])  # early items, and the last ones (the exact window)
    q = near + np.random.default_rng(5).normal(0, 0.02, near.shape).astype(np.float32)
    seqs = np.full(300, int(a.seqs[-1]) + 1)  # the next batch's positions: the recent window counts too
    sa, ra = a.search(q, 6, seqs)
    sb, rb = b.search(q, 6, seqs)
    np.testing.assert_array_equal(ra, rb)
    np.testing.assert_array_equal(sa, sb)


def links(m: dict) -> list[str]:
    return m["shards"]["checkpoints"]["0"].get(M, [])


def on_disk(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in (run / "checkpoints" / "shard=0").glob("ckpt-*/*")}


def is_base(run: Path, link: str) -> bool:
    return (run / link / "index.json").exists()


@pytest.mark.parametrize("kind", ["auto", "flat", "ivf-pq-sq8"])
def test_restore_equals_the_index_after_many_commits_with_deltas_and_compactions(tmp_path: Path, kind: str) -> None:
    cfg = IndexConfig(**{**AUTO.__dict__, "gpu": "off"}) if kind == "auto" else \
        IndexConfig(kind=kind, ivf_train_size=1200, ivf_nprobe=4, auto_window=300, gpu="off")
    x, _ = stream(6000, seed=3)
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, cfg, tmp_path)
    bases = deltas = 0
    for s in range(0, 6000, 200):
        grow(shard, x, s, s + 200)
        m = commit(w, shard)
        chain = links(m)
        assert is_base(tmp_path, chain[0]) and not any(is_base(tmp_path, p) for p in chain[1:])
        assert set(chain) <= on_disk(tmp_path)  # pruning never removes what the manifest names
        bases, deltas = bases + is_base(tmp_path, chain[-1]), deltas + (not is_base(tmp_path, chain[-1]))
        assert_same(shard.indexes[M], restored(tmp_path, cfg), x)  # mid-rebuild too
        # the deltas a chain carries stay within a share of its base
        delta_rows = sum(pq.read_metadata(tmp_path / p / "delta.parquet").num_rows for p in chain[1:])
        base_rows = pq.read_metadata(tmp_path / chain[0] / "items.parquet").num_rows
        assert delta_rows <= COMPACT_FRACTION * base_rows * 1.1 + 200
    assert deltas >= 15 and bases >= 3, (bases, deltas)


def test_a_commit_writes_the_rows_added_since_the_last_not_the_index(tmp_path: Path) -> None:
    x, _ = stream(4200, seed=4)
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, IndexConfig(kind="flat", gpu="off"), tmp_path)

    def files() -> set[Path]:
        return {f for f in (tmp_path / "checkpoints").rglob("*") if f.is_file()}

    grow(shard, x, 0, 4000)
    commit(w, shard)
    first = files()
    grow(shard, x, 4000, 4100)
    m = commit(w, shard)
    written = files() - first
    assert sum(f.stat().st_size for f in written) < sum(f.stat().st_size for f in first) / 20  # 100 rows, not 4,100
    assert [f.name for f in written] == ["delta.parquet"]
    assert pq.read_table(next(iter(written))).column("id").to_pylist() == [f"i{j}" for j in range(4000, 4100)]
    assert m["checkpoint"] == {M: links(m)} and len(links(m)) == 2


@pytest.mark.parametrize("link", ["delta", "base"])
def test_a_crash_between_a_snapshot_and_its_manifest_restores_the_committed_index(tmp_path: Path, link: str) -> None:
    """Write commit k+1's snapshot (a delta, or a new base ending the chain) but not its manifest, as a
    crash between the two would: a restart restores commit k exactly and goes on from there."""
    x, _ = stream(5000, seed=6)
    cfg = IndexConfig(kind="ivf-pq", ivf_train_size=1000, ivf_nprobe=4, auto_window=300, gpu="off")
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, cfg, tmp_path)
    s = 0
    while True:
        grow(shard, x, s, s + 150)
        s += 150
        if s > 1500 and shard.indexes[M].next_snapshot(tmp_path / shard.parts.snapshots.chains[M][0]) == link:
            break
        commit(w, shard)
    committed = restored(tmp_path, cfg)  # the index as commit k left it
    before = read_manifest(tmp_path)
    shard.write(w.commit_no + 1)  # the crash: the snapshot is durable, the manifest is not
    assert read_manifest(tmp_path) == before
    if link == "base":
        assert set(links(before)) <= on_disk(tmp_path)  # the new base did not prune the committed chain
    again = StoredShard(0, cfg, tmp_path)  # the restart
    again.setup(read_manifest(tmp_path))
    assert_same(committed, again.indexes[M], x)
    assert on_disk(tmp_path) == set(links(before))  # the uncommitted link is gone, the committed ones stay
    w2 = StoreWriter.open(tmp_path, {})
    grow(again, x, s - 150, s)  # the items the lost commit covered come again
    commit(w2, again)
    for lo in range(s, s + 450, 150):  # and the stream goes on, as it does uninterrupted
        grow(again, x, lo, lo + 150)
        grow(shard, x, lo, lo + 150)
        commit(w2, again)
    assert_same(shard.indexes[M], restored(tmp_path, cfg), x)


def test_garbage_collection_keeps_what_the_manifest_names_and_only_that(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    x, _ = stream(3000, seed=7)
    cfg = IndexConfig(kind="flat", gpu="off")
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, cfg, tmp_path)
    for s in range(0, 3000, 100):
        grow(shard, x, s, s + 100)
        m = commit(w, shard)
    named = set(links(m))
    assert len(named) > 3 and min(named) < f"checkpoints/shard=0/ckpt-{m['commit'] - 2:06d}"  # an old base
    ck = tmp_path / "checkpoints" / "shard=0"
    (ck / f"ckpt-{m['commit'] + 1:06d}" / M).mkdir(parents=True)  # a crashed commit's link
    (ck / f"ckpt-{m['commit'] + 1:06d}" / M / "delta.parquet").write_bytes(b"torn")
    (ck / "ckpt-000001" / "text").mkdir(parents=True)  # a link of a modality no manifest names
    old = StoredShard(0, cfg, tmp_path)
    caplog.clear()  # (the commits above log their removals too, where an earlier test set the level to INFO)
    with caplog.at_level("INFO", "curator.store.snapshots"):
        old.setup(read_manifest(tmp_path))
    assert on_disk(tmp_path) == named and not (ck / f"ckpt-{m['commit'] + 1:06d}").exists()
    # the service's log says what went and why: a link vanishing under a run is then traceable
    said = [r.getMessage() for r in caplog.records if "removed index snapshots" in r.getMessage()]
    assert said == [f"shard 0: removed index snapshots ckpt-000001/text, ckpt-{m['commit'] + 1:06d}/image "
                    f"(left behind: manifest {m['commit']} does not name it)"]
    assert_same(shard.indexes[M], old.indexes[M], x)


def test_a_delta_only_continues_the_chain_its_index_tracks(tmp_path: Path) -> None:
    """An index that starts another chain elsewhere (a base saved with track=True) has no delta for the
    run's chain: the next commit writes a base, never a delta that skips rows."""
    x, _ = stream(1000, seed=10)
    cfg = IndexConfig(kind="flat", gpu="off")
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, cfg, tmp_path)
    grow(shard, x, 0, 800)
    commit(w, shard)
    grow(shard, x, 800, 850)
    shard.indexes[M].save(tmp_path / "elsewhere", track=True)
    grow(shard, x, 850, 900)
    assert is_base(tmp_path, links(commit(w, shard))[-1])
    assert_same(shard.indexes[M], restored(tmp_path, cfg), x)


def test_hnsw_is_written_whole_at_every_commit_and_restores(tmp_path: Path) -> None:
    """HNSW's adds cannot be replayed (random levels, racing threads): its chains are one base long."""
    x, _ = stream(1200, seed=8)
    cfg = IndexConfig(kind="hnsw", gpu="off")
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, cfg, tmp_path)
    for s in range(0, 1200, 300):
        grow(shard, x, s, s + 300)
        assert len(links(commit(w, shard))) == 1
    assert_same(shard.indexes[M], restored(tmp_path, cfg), x)


def test_a_run_directory_of_whole_snapshots_resumes_and_goes_on_with_deltas(tmp_path: Path) -> None:
    """curator-run/1 named one folder of whole snapshots per shard: each is the base of a chain."""
    x, _ = stream(2000, seed=9)
    cfg = IndexConfig(kind="flat", gpu="off")
    w = StoreWriter.open(tmp_path, {})
    shard = StoredShard(0, cfg, tmp_path)
    grow(shard, x, 0, 1500)
    m = commit(w, shard)
    m.update(format="curator-run/1", checkpoint=links(m)[0].rsplit("/", 1)[0])
    m["shards"]["checkpoints"]["0"] = m["checkpoint"]
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    w = StoreWriter.open(tmp_path, {})
    again = StoredShard(0, cfg, tmp_path)
    again.setup(w.manifest)
    assert_same(shard.indexes[M], again.indexes[M], x)
    grow(again, x, 1500, 1600)
    grow(shard, x, 1500, 1600)
    m = commit(w, again)
    assert m["format"] == "curator-run/2" and len(links(m)) == 2 and not is_base(tmp_path, links(m)[1])
    assert_same(shard.indexes[M], restored(tmp_path, cfg), x)
    shutil.rmtree(tmp_path / links(m)[1])
    with pytest.raises(FileNotFoundError, match="named by the manifest"):  # not a shorter index
        restored(tmp_path, cfg)
