"""`index.kind = "auto"`: exact while small, rebuilt in the background into approximate kinds as the
index grows, in service from a stream position fixed by the data -- so decisions do not depend on
batching or timing, a restart from a snapshot taken mid-rebuild decides like the uninterrupted run,
and they agree with exact search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curator.config import IndexConfig, SelectorConfig
from curator.embed import Embeddings
from curator.index import VectorIndex
from curator.index.kinds import Spec, next_step
from curator.records import SAMPLE_SCHEMA
from curator.select import InfoGrowthSelector

D = 32
#: small thresholds, so the stream crosses several rebuilds
AUTO = IndexConfig(kind="auto", auto_exact_max=400, auto_growth=2, auto_min_lag=150, ivf_nprobe=2,
                   auto_window=300, pq_refine=4)


def stream(n: int = 5000, seed: int = 0, d: int = D, dup: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    lab = rng.integers(0, 40, n)
    x = centres[lab] + rng.normal(0, 0.7, (n, d))
    for i in np.flatnonzero(rng.random(n) < dup):  # near-duplicates of earlier items, near and far back
        if i > 10:
            x[i] = x[rng.integers(0, i)] + rng.normal(0, 0.01, d)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    given = np.where(rng.random(n) < 0.15, rng.integers(0, 40, n), lab)
    return x, given


def table(given: np.ndarray, s: int, e: int) -> pa.Table:
    m = e - s
    return pa.table({"id": [f"q{i}" for i in range(s, e)], "image": pa.nulls(m, pa.binary()),
                     "image_uri": pa.nulls(m, pa.string()), "text": pa.nulls(m, pa.string()),
                     "label": pa.array(given[s:e]), "metadata": pa.nulls(m, pa.string()), "source": ["s"] * m,
                     "partition": pa.array(np.zeros(m, np.int32)), "offset": pa.array(np.arange(s, e)),
                     "embedding": pa.nulls(m, pa.list_(pa.float32()))}, schema=SAMPLE_SCHEMA)


def run(icfg: IndexConfig, sizes: list[int], x: np.ndarray, given: np.ndarray, sel: InfoGrowthSelector | None = None,
        start: int = 0, stop: int | None = None) -> tuple[InfoGrowthSelector, list[tuple], list[str]]:
    sel = sel if sel is not None else InfoGrowthSelector(SelectorConfig(min_trusted=0), icfg)
    out, kinds, s, b = [], [], start, 0
    stop = len(x) if stop is None else stop
    while s < stop:
        e = min(stop, s + sizes[b % len(sizes)])
        d = sel.select(table(given, s, e), Embeddings(x[s:e], None, np.ones(e - s, bool),
                                                      np.zeros(e - s, bool))).decisions
        out += list(zip(d.column("decision").to_pylist(), d.column("label_out").to_pylist(),
                        d.column("dup_of").to_pylist(), d.column("max_sim").to_pylist(), strict=True))
        kinds.append(sel.indexes["image"].kind)
        s, b = e, b + 1
    return sel, out, kinds


def test_policy_grows_exact_then_approximate_then_compressed() -> None:
    cfg = IndexConfig(kind="auto", auto_exact_max=20_000, auto_growth=4, auto_memory_mb=4096)
    step = next_step(cfg, 512, Spec("flat"), 0)
    assert step is not None and step.at == 20_000 and step.spec.kind == "ivf-pq"
    sizes, kinds_ = [], []
    spec, at = step.spec, step.at
    while at < 50_000_000:
        sizes.append(at)
        kinds_.append(spec.kind)
        nxt = next_step(cfg, 512, spec, at)
        assert nxt is not None and nxt.spec.nlist >= spec.nlist
        spec, at = nxt.spec, nxt.at
    assert sizes[:3] == [20_000, 80_000, 320_000]
    assert kinds_[-1] == "ivf-pq-sq8" and kinds_[0] == "ivf-pq"  # compressed once uncompressed would pass 4 GB
    assert next_step(cfg, 512, Spec("flat"), 0, on_gpu=True) is None  # on a GPU: exact
    assert next_step(IndexConfig(kind="flat"), 512, Spec("flat"), 0) is None


def test_auto_switches_mid_stream_independently_of_batching_and_agrees_with_exact() -> None:
    x, given = stream()
    _, a, kinds_a = run(AUTO, [97], x, given)
    _, b, _ = run(AUTO, [13, 250, 64, 1], x, given)
    assert len(set(kinds_a)) >= 2 and kinds_a[0] == "flat" and kinds_a[-1] == "ivf-pq"
    assert [r[:3] for r in a] == [r[:3] for r in b]  # decisions, labels, duplicates: whatever the batching
    assert np.allclose([r[3] or 0 for r in a], [r[3] or 0 for r in b], atol=1e-5)
    _, exact, _ = run(IndexConfig(kind="flat"), [97], x, given)
    agreement = np.mean([p[:3] == q[:3] for p, q in zip(a, exact, strict=True)])
    assert agreement >= 0.99, agreement


def test_a_snapshot_taken_mid_rebuild_restores_to_the_same_decisions(tmp_path: Path) -> None:
    x, given = stream(4000, seed=1)
    sel, stop = InfoGrowthSelector(SelectorConfig(min_trusted=0), AUTO), 0

    def index(s: InfoGrowthSelector) -> VectorIndex | None:
        return s.shards[0].target.indexes.get("image")

    while index(sel) is None or index(sel)._build is None or index(sel).kind != "ivf-pq":
        run(AUTO, [128], x, given, sel=sel, start=stop, stop=stop + 128)  # until a second rebuild is under way
        stop += 128
    assert stop < 3000
    sel.save_indexes(tmp_path)
    state = sel.state_dict()
    back = InfoGrowthSelector(SelectorConfig(min_trusted=0), AUTO)
    back.load_state_dict(state)
    back.load_indexes(tmp_path, state["modalities"])
    assert index(back)._build is not None and index(back).switch_at == index(sel).switch_at
    _, a, kinds_a = run(AUTO, [128], x, given, sel=sel, start=stop)
    _, b, _ = run(AUTO, [128], x, given, sel=back, start=stop)
    assert a == b


@pytest.mark.parametrize("kind", ["ivf", "ivf-pq", "ivf-pq-sq8", "hnsw"])
def test_every_kind_finds_near_duplicates_and_restores(tmp_path: Path, kind: str) -> None:
    d = 64  # PQ needs a few sub-quantizers to rank candidates (d/8 of 4 bits each)
    x, _ = stream(3000, seed=2, d=d, dup=0.0)
    cfg = IndexConfig(kind=kind, ivf_train_size=1000, ivf_nprobe=4)
    idx = VectorIndex(d, cfg)
    for s in range(0, 3000, 500):
        idx.add(x[s:s + 500], [f"i{j}" for j in range(s, s + 500)], np.arange(s, s + 500) % 7)
    q = x[:200] + np.random.default_rng(0).normal(0, 1e-3, (200, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims, rows = idx.search(q, 4)
    assert idx.kind == kind and (rows[:, 0] == np.arange(200)).mean() > 0.97
    assert np.abs(sims[:, 0] - (q * x[:200]).sum(1))[rows[:, 0] == np.arange(200)].max() < 5e-3
    assert 0 < idx.bytes_per_item() < 4 * d + 700
    idx.save(tmp_path)
    back = VectorIndex.load(tmp_path, cfg)
    s2, r2 = back.search(q, 4)
    assert np.array_equal(r2, rows) and np.allclose(s2, sims) and back.ids == idx.ids


def test_bulk_build_is_what_growing_would_end_with() -> None:
    x, _ = stream(3000, seed=3)
    cfg = IndexConfig(kind="auto", auto_exact_max=500, auto_growth=2)

    def chunks():
        for s in range(0, 3000, 700):
            e = min(s + 700, 3000)
            yield x[s:e], [f"i{j}" for j in range(s, e)], np.zeros(e - s, np.int64)

    bulk = VectorIndex(D, cfg)
    bulk.bulk_build(chunks, 3000)
    grown = VectorIndex(D, cfg)
    for c in chunks():
        grown.add(*c)
    grown.settle()
    assert bulk.spec == grown.spec and bulk.built_at == grown.built_at == 2000 and len(bulk) == 3000
    assert np.array_equal(bulk.search(x[:100], 4)[1], grown.search(x[:100], 4)[1])
