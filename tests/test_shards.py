"""Sharded selection in one process: the router's cells and margin (balance, determinism, the items within
the margin always searched, the checkpointed router), every shard searched equal to one shard, the margin's
decisions close to one shard's with most items searching one shard, batch independence, per-shard parts and
snapshots named by one manifest, restarts, a changed shard count refused."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curator.config import SelectorConfig
from curator.demo_data import demo_config, write_demo_inputs
from curator.embed import Embeddings
from curator.select import InfoGrowthSelector
from curator.select.calibrate import NN_BINS
from curator.select.routing import Router, nn_bins, routing_margin, train_router
from curator.store import StoreError, read_manifest, read_table
from pipelines.executors.shards import RayShard
from pipelines.ingest import run_ingest
from tests.test_auto_index import stream, table

EXACT = ["id", "decision", "label_out", "label_noisy", "dup_of", "seq"]
#: scores agree to float rounding: a shard's index computes the same dot products in another BLAS call
SCORES = ["label_agreement", "gain", "max_sim", "gain_norm"]


def select(cfg: SelectorConfig, sizes: list[int], x: np.ndarray, given: np.ndarray,
           sel: InfoGrowthSelector | None = None) -> pa.Table:
    sel = sel if sel is not None else InfoGrowthSelector(cfg)
    out, s, b = [], 0, 0
    while s < len(x):
        e = min(len(x), s + sizes[b % len(sizes)])
        out.append(sel.select(table(given, s, e), Embeddings(x[s:e], None, np.ones(e - s, bool),
                                                             np.zeros(e - s, bool))).decisions)
        s, b = e, b + 1
    return pa.concat_tables(out)


def agreement(a: pa.Table, b: pa.Table) -> float:
    """The share of items with the same decision, label out and duplicate-of."""
    rows = [list(zip(*(t.column(c).to_pylist() for c in ("decision", "label_out", "dup_of")), strict=True))
            for t in (a, b)]
    return float(np.mean([u == v for u, v in zip(*rows, strict=True)]))


def test_router_cells_balance_the_shards_and_route_the_same_after_a_checkpoint() -> None:
    x, _ = stream(6000, seed=4)
    r = train_router(x[:2000], 4, margin=0.02)
    counts = np.bincount(r.home(x), minlength=4)
    assert counts.max() / counts.min() <= 1.5, counts
    assert r.cells >= 16 and np.bincount(r.cell_shard, minlength=4).min() >= 2  # many cells per shard
    again = train_router(x[:2000], 4, margin=0.02)
    assert np.array_equal(again.centroids, r.centroids) and np.array_equal(again.cell_shard, r.cell_shard)
    back = Router.from_json(json.loads(json.dumps(r.to_json())))
    for a, b in zip(r.route(x, 2), back.route(x, 2), strict=True):
        assert np.array_equal(a, b)
    home, probes = r.route(x, 2)
    assert probes[np.arange(len(x)), home].all() and (probes.sum(axis=1) <= 2).all()


def test_every_item_within_the_margin_lives_on_a_shard_the_query_searches() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4000, 3)).astype(np.float32)  # dense on the sphere: many close pairs across borders
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    r = train_router(x[:1500], 4, margin=0.005)
    home, probes = r.route(x, 4)
    i, j = np.nonzero(1.0 - x @ x.T <= r.margin)  # pairs within the margin (cosine distance)
    assert (home[i] != home[j]).sum() > 500
    assert probes[i, home[j]].all()  # each query searches its partner's home
    assert (probes.sum(axis=1) > 1).mean() < 0.35  # most items search their home alone
    smaller = dataclasses.replace(r, margin=r.margin / 4)
    assert not smaller.route(x, 4)[1][i, home[j]].all()  # (a smaller margin does miss some)


def test_the_auto_margin_covers_the_copies_the_stream_shows() -> None:
    eps = 0.01
    assert routing_margin(0.003, eps, np.zeros(NN_BINS, np.int64)) == 0.003  # configured: as given
    body = np.zeros(NN_BINS, np.int64)
    body[nn_bins(1.0 - np.geomspace(0.05, 0.4, 500))] += 1  # distinct items only: the threshold's reach
    assert routing_margin("auto", eps, body) == pytest.approx(4 * eps)
    copies = body.copy()
    copies[nn_bins(1.0 - np.geomspace(2e-6, 5e-6, 50))] += 1  # copies, decades below the distinct items
    m = routing_margin("auto", eps, copies)
    assert 4 * 5e-6 <= m < 4 * 1e-5  # four times the copies' reach, not the empty gap above them


def test_what_the_margin_will_read_is_in_the_checkpoint_before_the_router_trains() -> None:
    x, given = stream(1200, seed=10)
    cfg = SelectorConfig(min_trusted=0, shards=2, router_train_size=800)
    a, b = InfoGrowthSelector(cfg), InfoGrowthSelector(cfg)
    select(cfg, [100], x[:600], given[:600], a)
    assert a.indexes["image"].router is None and a.indexes["image"].nn_counts.sum() == 500  # (batch 1: none found)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert np.array_equal(a.indexes["image"].nn_counts, b.indexes["image"].nn_counts)


def test_a_router_from_before_cells_routes_as_it_did() -> None:
    x, _ = stream(500, seed=8)
    c = x[:3] / np.linalg.norm(x[:3], axis=1, keepdims=True)
    old = Router.from_json({"centroids": c.tolist(), "offsets": [0.1, 0.0, -0.05]})
    assert np.array_equal(old.home(x), np.argmax(x @ c.T - np.array([0.1, 0.0, -0.05]), axis=1))
    assert old.route(x, 3)[1].all()  # it knew no margin: every shard


def test_probe_all_shards_decides_exactly_as_one_shard() -> None:
    x, given = stream(3000, seed=5)
    one = select(SelectorConfig(min_trusted=0, router_train_size=500), [97], x, given)
    four = select(SelectorConfig(min_trusted=0, shards=4, probe=4, shard_margin=2.0, router_train_size=500), [97],
                  x, given)
    for c in EXACT:
        assert one.column(c).to_pylist() == four.column(c).to_pylist(), c
    for c in SCORES:
        a, b = (np.array([np.nan if v is None else v for v in t.column(c).to_pylist()]) for t in (one, four))
        assert np.allclose(a, b, atol=1e-6, equal_nan=True), c
    mask = re.compile(r"-?\d+\.\d+")
    assert [mask.sub("#", r) for r in one.column("reason").to_pylist()] == \
        [mask.sub("#", r) for r in four.column("reason").to_pylist()]


def test_the_margin_decides_as_one_shard_while_most_items_search_one() -> None:
    x, given = stream(3000, seed=5)
    one = select(SelectorConfig(min_trusted=0, router_train_size=500), [97], x, given)
    sel = InfoGrowthSelector(SelectorConfig(min_trusted=0, shards=4, router_train_size=500))  # margin auto, no cap
    four = select(sel.cfg, [97], x, given, sel)
    index = sel.indexes["image"]
    assert 0 < index.router.margin < 2.0
    routed = index.searched.sum() - 500  # the items before the router searched shard 0 alone
    assert index.searched[2:].sum() / routed < 0.25, index.searched
    assert agreement(one, four) >= 0.995, agreement(one, four)
    assert index.probe == 4  # the default caps nothing but the margin: ...
    capped = InfoGrowthSelector(SelectorConfig(min_trusted=0, shards=4, probe=2, router_train_size=500))
    select(capped.cfg, [97], x, given, capped)
    assert capped.indexes["image"].searched[3:].sum() == 0  # ... a cap of 2 stops items at two shards
    assert index.searched[3:].sum() > 0, index.searched  # where this stream has items near three


def test_the_router_and_its_margin_are_in_the_selector_state() -> None:
    x, given = stream(1500, seed=9)
    cfg = SelectorConfig(min_trusted=0, shards=3, router_train_size=400)
    a = InfoGrowthSelector(cfg)
    select(cfg, [128], x[:1000], given[:1000], a)
    b = InfoGrowthSelector(cfg)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    ra, rb = a.indexes["image"].router, b.indexes["image"].router
    assert rb is not None and rb.margin == ra.margin
    for u, v in zip(ra.route(x[1000:], cfg.probe), rb.route(x[1000:], cfg.probe), strict=True):
        assert np.array_equal(u, v)


def test_fewer_probes_stay_batch_independent_and_close_to_one_shard() -> None:
    x, given = stream(3000, seed=6)
    cfg = SelectorConfig(min_trusted=0, shards=4, probe=2, router_train_size=700)
    a = select(cfg, [97], x, given)
    b = select(cfg, [13, 250, 64, 1], x, given)  # the router trains mid-batch here: the batch is split
    for c in ("id", "decision", "label_out", "dup_of"):
        assert a.column(c).to_pylist() == b.column(c).to_pylist(), c
    one = select(SelectorConfig(min_trusted=0), [97], x, given)
    assert agreement(a, one) >= 0.995, agreement(a, one)


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
    assert set(routers) == {"image"} and routers["image"]["shards"] == 3  # trained on the bootstrap
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


def test_a_remote_shard_client_sends_its_inserts_with_its_next_call_and_names_the_nearest_rows(
        ray_local, tmp_path: Path) -> None:
    """RayShard holds back add and stage and sends them ahead of the shard's next call (the search after
    an insert finds it), and the batch's duplicates are named from the search's nearest rows, with no
    call: a real shard actor, asked directly (not through the client) what it holds."""
    import copy

    from curator.config import IndexConfig
    from pipelines.executors.shards import ShardActor

    actor = ray_local.remote(ShardActor).options(num_cpus=0).remote(0, IndexConfig(), str(tmp_path))
    client = RayShard(actor, 0)

    def sizes() -> dict[str, int]:
        return ray_local.get(actor.describe.remote()).sizes

    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    client.add("image", x[:4], ["a", "b", "c", "d"], np.zeros(4, np.int64), np.arange(4))
    assert sizes() == {} and len(client.held) == 1  # not sent yet
    assert copy.copy(client).held == []  # a copy (a pickled one too) does not send them again
    sims, rows, _, _ = client.search("image", x[[2, 6]], 2, np.array([10, 11])).result()
    assert client.held == [] and sizes() == {"image": 4}
    assert rows[0, 0] == 2 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)  # the insert landed first
    assert ray_local.get(actor.ids_of.remote("image", rows[:1, 0])) == ["c"]
    client.add("image", x[4:6], ["e", "f"], np.zeros(2, np.int64), np.arange(4, 6))
    client.add("image", x[6:], ["g", "h"], np.zeros(2, np.int64), np.arange(6, 8))
    client.search("image", x[:1], 1, np.array([12])).result()
    assert sizes() == {"image": 8}
    assert ray_local.get(actor.ids_of.remote("image", np.arange(8))) == list("abcdefgh")
    client.add("image", x[:1], ["i"], np.zeros(1, np.int64), np.array([13]))
    assert client.describe().sizes == {"image": 9}  # a call that does not carry them sends them first
    with pytest.raises(ValueError, match="does not replay"):
        ray_local.get(actor.replay.remote([("take_all", ("image",))]))
    sims, rows, _, _ = client.search("image", x[[3, 7]], 1, np.array([14, 15])).result()
    other = int(np.setdiff1d(np.arange(8), rows[:, 0])[0])
    ray_local.kill(actor)  # from here a call fails: what the client answers, it answers without one
    gone_by = time.monotonic() + 60  # the kill is asynchronous: a call made just after it may still run
    while True:
        try:
            ray_local.get(actor.__ray_ready__.remote(), timeout=30)
        except ray_local.exceptions.RayActorError:
            break
        assert time.monotonic() < gone_by, "the killed shard actor still answers after 60 s"
        time.sleep(0.1)
    assert client.ids_of("image", rows[:, 0]) == ["d", "h"]
    with pytest.raises(ray_local.exceptions.RayActorError):
        client.ids_of("image", np.array([other]))
