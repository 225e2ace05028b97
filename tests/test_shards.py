"""Sharded selection in one process: the router, probe = N equal to one shard, batch independence with
fewer probes, per-shard parts and snapshots named by one manifest, restarts, a changed shard count refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curator.config import SelectorConfig
from curator.demo_data import demo_config, write_demo_inputs
from curator.embed import Embeddings
from curator.select import InfoGrowthSelector
from curator.select.routing import train_router
from curator.store import StoreError, read_manifest, read_table
from pipelines.ingest import run_ingest
from tests.test_auto_index import stream, table

EXACT = ["id", "decision", "label_out", "label_noisy", "dup_of", "seq"]
#: scores agree to float rounding: a shard's index computes the same dot products in another BLAS call
SCORES = ["label_agreement", "gain", "max_sim", "gain_norm"]


def select(cfg: SelectorConfig, sizes: list[int], x: np.ndarray, given: np.ndarray) -> pa.Table:
    sel = InfoGrowthSelector(cfg)
    out, s, b = [], 0, 0
    while s < len(x):
        e = min(len(x), s + sizes[b % len(sizes)])
        out.append(sel.select(table(given, s, e), Embeddings(x[s:e], None, np.ones(e - s, bool),
                                                             np.zeros(e - s, bool))).decisions)
        s, b = e, b + 1
    return pa.concat_tables(out)


def test_router_balances_shards_and_probes_the_nearest() -> None:
    x, _ = stream(6000, seed=4)
    r = train_router(x[:2000], 4)
    home, probes = r.route(x, 2)
    counts = np.bincount(home, minlength=4)
    assert counts.max() / counts.min() <= 1.5, counts
    assert probes.sum(axis=1).tolist() == [2] * len(x) and probes[np.arange(len(x)), home].all()
    assert np.array_equal(train_router(x[:2000], 4).centroids, r.centroids)  # deterministic


def test_probe_all_shards_decides_exactly_as_one_shard() -> None:
    x, given = stream(3000, seed=5)
    one = select(SelectorConfig(min_trusted=0, router_train_size=500), [97], x, given)
    four = select(SelectorConfig(min_trusted=0, shards=4, probe=4, router_train_size=500), [97], x, given)
    for c in EXACT:
        assert one.column(c).to_pylist() == four.column(c).to_pylist(), c
    for c in SCORES:
        a, b = (np.array([np.nan if v is None else v for v in t.column(c).to_pylist()]) for t in (one, four))
        assert np.allclose(a, b, atol=1e-6, equal_nan=True), c
    mask = re.compile(r"-?\d+\.\d+")
    assert [mask.sub("#", r) for r in one.column("reason").to_pylist()] == \
        [mask.sub("#", r) for r in four.column("reason").to_pylist()]


def test_fewer_probes_stay_batch_independent_and_close_to_one_shard() -> None:
    x, given = stream(3000, seed=6)
    cfg = SelectorConfig(min_trusted=0, shards=4, probe=2, router_train_size=700)
    a = select(cfg, [97], x, given)
    b = select(cfg, [13, 250, 64, 1], x, given)  # the router trains mid-batch here: the batch is split
    for c in ("id", "decision", "label_out", "dup_of"):
        assert a.column(c).to_pylist() == b.column(c).to_pylist(), c
    one = select(SelectorConfig(min_trusted=0), [97], x, given)
    agree = np.mean([p == q for p, q in zip(a.column("decision").to_pylist(), one.column("decision").to_pylist(),
                                            strict=True)])
    assert agree >= 0.97, agree  # probing 2 of 4 shards can miss a few neighbours across borders


def _demo(root: Path, out: Path, **selector: object):
    cfg = demo_config(root, 0, {"selector": dict(selector), "store": {"commit_every": 256}})
    cfg.store.out = str(out)
    return cfg


def test_sharded_run_writes_per_shard_parts_resumes_and_refuses_another_shard_count(tmp_path: Path) -> None:
    write_demo_inputs(tmp_path, 0)
    full, part = tmp_path / "full", tmp_path / "part"
    run_ingest(_demo(tmp_path, full, shards=3, probe=2), progress=False)
    m = read_manifest(full)
    assert m is not None and m["shards"]["n"] == 3 and set(m["shards"]["checkpoints"]) == {"0", "1", "2"}
    assert {p.split("/")[1] for p in m["parts"]["decisions"]} == {"shard=0", "shard=1", "shard=2"}
    routers = m["selector_state"]["routers"]
    assert set(routers) == {"image"} and len(routers["image"]["centroids"]) == 3  # trained on the bootstrap
    # a second run that stops part-way and resumes makes the same decisions
    cfg = _demo(tmp_path, part, shards=3, probe=2)
    cfg.source.limit = 600
    run_ingest(cfg, progress=False)
    cfg.source.limit = 0
    run_ingest(cfg, progress=False)
    a = read_table(full, "decisions").sort_by("id")
    b = read_table(part, "decisions").sort_by("id")
    for c in ("id", "decision", "label_out", "dup_of", "reason"):
        assert a.column(c).to_pylist() == b.column(c).to_pylist(), c
    assert read_table(full, "kept").num_rows == sum(d in ("kept", "relabelled") for d in a.column("decision").to_pylist())
    with pytest.raises(StoreError, match="selector.shards = 3"):
        run_ingest(_demo(tmp_path, full, shards=2, probe=2), progress=False)
