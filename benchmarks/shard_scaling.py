"""Selection throughput and quality against the number of selector shards, each shard on one CPU.

    python benchmarks/shard_scaling.py [--n 1000000] [--shards 1 2 4] [--probes 2] [--queries 2048]
        [--batch 256] [--repeats 3] [--seeds 0 1 2] [--json FILE]

Throughput, the selection alone (precomputed embeddings): N unit 512-d vectors from
`selector_speed`'s clustered mixture are pre-indexed, routed to their home shards by the router
trained as a run trains it (on the first `selector.router_train_size` items), each shard's index
built directly at its size (`VectorIndex.bulk_build`, the kind the default policy gives it). Each
shard is a Ray actor reserving one CPU with FAISS and BLAS held to one thread; the one-shard
baseline is the same selector in one process, also on one thread -- so the figure is scaling, not
threading. `--repeats` sets of `--queries` new items (10% near-copies of indexed items, 5% of earlier
queries, 10% wrong labels) then go through `InfoGrowthSelector.select` in batches of `--batch`.

Quality, the same shard counts on the digits demo stream (`quality_digits.run_seed`, shards in the
selector's process, calibrated defaults), mean over `--seeds`: noise F1 and the share of duplicate
groups left with one copy, and whether every decision (decision, label out, duplicate of) equals
the one-shard run's.

Columns: ``shards``, ``probe``, ``items_per_s`` (median over repeats), ``speedup`` (over the one-shard
row of the same run), ``n_indexed``, ``max_over_min_shard_size`` (of the N items' homes),
``build_s``, ``dup_groups_one``, ``noise_f1``, ``same_decisions`` (share of demo decisions equal to
the one-shard run's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_digits import run_seed  # noqa: E402
from selector_speed import DIM, base_chunks, centers, queries, samples  # noqa: E402

from curator.config import IndexConfig, SelectorConfig  # noqa: E402
from curator.embed import Embeddings  # noqa: E402
from curator.select import InfoGrowthSelector  # noqa: E402
from curator.select.routing import Router, train_router  # noqa: E402
from curator.select.shard import IndexShard, LocalShard  # noqa: E402
from curator.select.sharded import ShardedIndex  # noqa: E402
from curator.store import read_table  # noqa: E402

COLS = ["shards", "probe", "items_per_s", "speedup", "n_indexed", "max_over_min_shard_size", "build_s",
        "dup_groups_one", "noise_f1", "same_decisions"]


def one_thread() -> None:
    """FAISS and BLAS on one thread: a shard's CPU share."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


def routed_chunks(n: int, c: np.ndarray, router: Router | None, shard: int):  # noqa: ANN201 - a chunk generator
    """The indexed items whose home is `shard` (all of them without a router), in stream order."""
    def gen():  # noqa: ANN202
        for x, ids, lab in base_chunks(n, c):
            if router is None:
                yield x, ids, lab
                continue
            keep = np.flatnonzero(router.route(x, 1)[0] == shard)
            yield x[keep], [ids[i] for i in keep], lab[keep]
    return gen


def fill_shard(target: IndexShard, n: int, c: np.ndarray, router: Router | None, size: int) -> float:
    """Build `target`'s image index from its share of the N items; returns the seconds it took."""
    from curator.index import VectorIndex

    t0 = time.perf_counter()
    index = VectorIndex(DIM, target.cfg)
    index.bulk_build(routed_chunks(n, c, router, target.shard), size)
    index.settle()
    target.indexes["image"] = index
    return time.perf_counter() - t0


def make_remote_shard():  # noqa: ANN201 - a Ray actor class
    import ray

    from pipelines.executors.shards import ShardActor

    class BenchShard(ShardActor):
        def fill(self, n: int, c: np.ndarray, router: Router, size: int) -> float:
            one_thread()
            return fill_shard(self, n, c, router, size)

    return ray.remote(num_cpus=1)(BenchShard)


def homes(n: int, c: np.ndarray, router: Router) -> np.ndarray:
    return np.concatenate([router.route(x, 1)[0] for x, _, _ in base_chunks(n, c)])


def run_queries(index: ShardedIndex, qsets: list, batch: int) -> float:
    speeds = []
    for qx, given in qsets:
        sel = InfoGrowthSelector(SelectorConfig(min_trusted=0, shards=index.shards, probe=index.probe),
                                 shards=index.clients)
        sel.indexes["image"] = index
        sel.seq = len(index)
        work = [(samples(len(qx[s:s + batch]), s, given[s:s + batch]),
                 Embeddings(qx[s:s + batch], None, np.ones(len(qx[s:s + batch]), bool),
                            np.zeros(len(qx[s:s + batch]), bool))) for s in range(0, len(qx), batch)]
        t0 = time.perf_counter()
        for tbl, emb in work:
            sel.select(tbl, emb)
        speeds.append(len(qx) / (time.perf_counter() - t0))
    return statistics.median(speeds)


def throughput(n: int, shards: int, probe: int, c: np.ndarray, qsets: list, batch: int) -> dict:
    cfg = IndexConfig(ivf_train_size=min(n, 50_000))
    router = train_router(next(base_chunks(n, c))[0][:SelectorConfig().router_train_size], shards) \
        if shards > 1 else None
    if router is None:
        target = IndexShard(0, cfg)
        build = fill_shard(target, n, c, None, n)
        index = ShardedIndex("image", DIM, [LocalShard(target)], 1)
        sizes = [n]
        actors = []
    else:
        import ray

        from pipelines.executors.shards import RayShard

        sizes = np.bincount(homes(n, c, router), minlength=shards).tolist()
        cls = make_remote_shard()
        actors = [cls.remote(k, cfg) for k in range(shards)]
        t0 = time.perf_counter()
        ray.get([a.fill.remote(n, c, router, sizes[k]) for k, a in enumerate(actors)])
        build = time.perf_counter() - t0
        index = ShardedIndex("image", DIM, [RayShard(a, k) for k, a in enumerate(actors)], probe, router)
        index.sizes = list(sizes)
    index.n = n
    speed = run_queries(index, qsets, batch)
    del index, actors  # the shard actors exit with their last handle
    return {"shards": shards, "probe": probe if shards > 1 else 1, "items_per_s": round(speed), "n_indexed": n,
            "max_over_min_shard_size": round(max(sizes) / max(1, min(sizes)), 3), "build_s": round(build, 1)}


def quality(shards: int, probe: int, seeds: list[int], work: Path) -> dict:
    rows, runs = [], []
    for s in seeds:
        d = work / f"s{shards}-p{probe}"
        rows.append(run_seed(s, d, {"selector": {"shards": shards, "probe": probe}}))
        t = read_table(d / f"seed{s}", "decisions").sort_by("seq")
        runs.append(list(zip(*(t.column(k).to_pylist() for k in ("decision", "label_out", "dup_of")), strict=True)))
    return {"dup_groups_one": float(np.mean([r["dup_groups_one"] for r in rows])),
            "noise_f1": float(np.mean([r["noise_f1"] for r in rows])), "_runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items pre-indexed")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--probes", type=int, nargs="+", default=[2], help="probe values for N > 1 (also run: probe = N)")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="demo-stream seeds for the quality columns")
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    for k, v in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"),
                 ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")):
        os.environ.setdefault(k, v)
    logging.getLogger("curator").setLevel(logging.ERROR)  # the demo runs' no-bootstrap notes
    one_thread()
    import ray

    ray.init(num_cpus=max(args.shards) + 1, include_dashboard=False, object_store_memory=512 * 2**20,
             log_to_driver=False)
    c = centers()
    warm = IndexShard(0, IndexConfig())  # compile the selector's loop before anything is timed
    fill_shard(warm, 1000, c, None, 1000)
    w = ShardedIndex("image", DIM, [LocalShard(warm)], 1)
    w.n = 1000
    run_queries(w, [queries(1000, c, 256, 1)], args.batch)
    qsets = [queries(args.n, c, args.queries, 7 + r) for r in range(args.repeats)]
    configs = sorted({(1, 1)} | {(s, min(p, s)) for s in args.shards if s > 1 for p in [*args.probes, s]})
    rows: list[dict] = []
    print(" | ".join(f"{h:>12}" for h in COLS), flush=True)
    with tempfile.TemporaryDirectory(prefix="curator-shards-") as tmp:
        base_q = None
        for shards, probe in configs:
            row = throughput(args.n, shards, probe, c, qsets, args.batch)
            q = quality(shards, probe, args.seeds, Path(tmp))
            runs = q.pop("_runs")
            if base_q is None:
                base_q, base_speed = runs, row["items_per_s"]
            same = np.mean([a == b for ra, rb in zip(runs, base_q, strict=True) for a, b in zip(ra, rb, strict=True)])
            row.update(q, speedup=round(row["items_per_s"] / base_speed, 2), same_decisions=round(float(same), 4))
            row["dup_groups_one"], row["noise_f1"] = round(row["dup_groups_one"], 4), round(row["noise_f1"], 4)
            rows.append(row)
            print(" | ".join(f"{row[h]:>12}" for h in COLS), flush=True)
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
