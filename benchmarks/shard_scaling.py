"""Search work, decisions and quality against the number of selector shards, each shard one process.

    python benchmarks/shard_scaling.py [--n 1000000] [--shards 1 2 4] [--probes 2] [--margins auto 2]
        [--queries 2048] [--batch 256] [--repeats 3] [--seeds 0 1 2] [--json FILE]

Work, the selection alone (precomputed embeddings): N unit 512-d vectors from `selector_speed`'s
clustered mixture are pre-indexed, routed to their home shards by the router trained as a run trains
it (its cells from the first `selector.router_train_size` items), each shard's index built directly at
its size (`VectorIndex.bulk_build`, the kind the default policy gives it) and snapshotted. Every shard
-- the one-shard baseline's too -- is a Ray actor reserving one CPU with FAISS and BLAS on one thread.
`--repeats` sets of `--queries` new items (10% near-copies of indexed items, 5% of earlier queries, 10%
wrong labels) then go through `InfoGrowthSelector.select` in batches of `--batch`; before each set the
shards restore their snapshot, so every configuration decides the same items against the same index.

Configurations per shard count S > 1: each `--probes` value (capped at S) and S itself, with each
`--margins` value (`selector.shard_margin`; 'auto' as `routing.routing_margin` resolves it from the
eps_dup and the nearest-neighbour distances of the one-shard run on the same queries; 2 searches every
shard up to the probe cap -- the scheme before margins).

Columns (medians over the repeats): ``shard_us``, CPU microseconds per item summed over the shard
processes (read from each process's own CPU clock) and ``ratio`` over the one-shard row's (the
target: <= 1.15); ``max_shard_us``, the busiest shard's; ``search_us`` and ``add_us``, the part of
``shard_us`` spent inside the shards' searches and inserts (their threads' CPU: the rest is the actor
calls' own cost) and ``search_ratio``, the search part over the one-shard row's; ``idle_us``, what
the shard processes spend doing nothing (Ray's threads), per item: their CPU rate over `IDLE_S` idle
seconds before the set, times the set's wall clock; ``driver_us``, the
selector process's (routing, the compiled loop, the calls); ``multi_probe``, the share of items that
searched more than one shard; ``same_1m``, the share of decisions (decision, label out, duplicate of) equal to the one-shard run's;
``items_per_s``, wall clock -- the driver and the shards share this machine's cores, so it is not
scaling. Quality, the same configurations on the digits demo stream (`quality_digits.run_seed`, shards
in the selector's process, calibrated defaults, mean over `--seeds`): ``d_dup`` and ``d_noise``, the
share of duplicate groups left with one copy and the noise F1 against the one-shard run's (target:
within 0.005), ``same_demo`` (target >= 0.995) and ``multi_demo``.

Projection (stated as one, not measured): with C cores, one selector process and C - 1 shards of the
configuration with the most shards, each process on its own core, items/s = 1e6 / max(driver_us,
shard_us x imbalance / (C - 1)), imbalance the busiest shard over the mean -- assuming the summed shard
work per item and the imbalance stay as measured at more shards. It prints what the shards alone and
the selector process alone would sustain beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_digits import run_seed  # noqa: E402
from selector_speed import DIM, base_chunks, centers, queries, samples  # noqa: E402

from curator.config import IndexConfig, SelectorConfig  # noqa: E402
from curator.embed import Embeddings  # noqa: E402
from curator.select import InfoGrowthSelector  # noqa: E402
from curator.select.calibrate import NN_BINS  # noqa: E402
from curator.select.routing import Router, nn_bins, routing_margin, train_router  # noqa: E402
from curator.select.shard import IndexShard, LocalShard  # noqa: E402
from curator.select.sharded import ShardedIndex  # noqa: E402
from curator.store import read_table  # noqa: E402

COLS = ["shards", "probe", "margin", "margin_value", "shard_us", "ratio", "max_shard_us", "search_us", "search_ratio",
        "add_us", "idle_us",
        "driver_us", "multi_probe", "same_1m",
        "items_per_s", "d_dup", "d_noise", "same_demo", "multi_demo"]
PROJECT_CORES = (4, 8, 16)
IDLE_S = 1.0  # seconds the shards sit idle before each set, to read what they spend doing nothing
DECIDED = ("decision", "label_out", "dup_of")


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
            keep = np.flatnonzero(router.home(x) == shard)
            yield x[keep], [ids[i] for i in keep], lab[keep]
    return gen


def make_remote_shard():  # noqa: ANN201 - a Ray actor class
    import ray

    class BenchShard(IndexShard):
        def fill(self, n: int, c: np.ndarray, router: Router | None, size: int, snapshot: str) -> float:
            """Build this shard's index from its share of the N items, snapshot it; the seconds it took."""
            from curator.index import VectorIndex

            one_thread()
            t0 = time.perf_counter()
            index = VectorIndex(DIM, self.cfg)
            index.bulk_build(routed_chunks(n, c, router, self.shard), size)
            index.settle()
            self.indexes["image"] = index
            self.save(Path(snapshot))
            return time.perf_counter() - t0

        def restore(self, snapshot: str) -> None:
            """The snapshot, with no rebuild to come (a shard near a growth step would start one inside the
            measured window: the work of growing, not of searching) and room for the adds (the first add
            after a load doubles the exact vectors' store, a copy a long run amortizes)."""
            import faiss

            self.indexes = {}
            self.load(Path(snapshot))
            for index in self.indexes.values():
                index.step = None
                idx = faiss.downcast_index(index.index)
                codes = getattr(faiss.downcast_index(idx.refine_index), "codes", None) \
                    if isinstance(idx, faiss.IndexRefine) else None
                if codes is not None:
                    size = codes.size()
                    codes.resize(size + 1)
                    codes.resize(size)
            self.work = {"search": 0.0, "add": 0.0, "ids_of": 0.0}

        def cpu(self) -> tuple[float, dict[str, float]]:
            """This process's CPU seconds, and those spent in each call kind since the restore."""
            return time.process_time(), dict(self.work)

        def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray):  # noqa: ANN201
            t0 = time.thread_time()
            try:
                return super().search(m, q, k, seqs)
            finally:
                self.work["search"] += time.thread_time() - t0

        def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
            t0 = time.thread_time()
            super().add(m, x, ids, labels, seqs)
            self.work["add"] += time.thread_time() - t0

        def ids_of(self, m: str, rows: np.ndarray) -> list[str]:
            t0 = time.thread_time()
            try:
                return super().ids_of(m, rows)
            finally:
                self.work["ids_of"] += time.thread_time() - t0

    return ray.remote(num_cpus=1)(BenchShard)


@dataclasses.dataclass
class Shards:
    """One shard count's actors, their snapshot and router."""

    actors: list
    router: Router | None
    sizes: list[int]
    snapshots: list[str]
    build_s: float


def start_shards(n: int, shards: int, c: np.ndarray, work: Path) -> Shards:
    import ray

    cfg = IndexConfig(ivf_train_size=min(n, 50_000))
    train = next(base_chunks(n, c))[0][:SelectorConfig().router_train_size]
    router = train_router(train, shards) if shards > 1 else None
    sizes = [n] if router is None else \
        np.bincount(np.concatenate([router.home(x) for x, _, _ in base_chunks(n, c)]), minlength=shards).tolist()
    cls = make_remote_shard()
    actors = [cls.remote(k, cfg) for k in range(shards)]
    snaps = [str(work / f"s{shards}-{k}") for k in range(shards)]
    t0 = time.perf_counter()
    ray.get([a.fill.remote(n, c, router, sizes[k], snaps[k]) for k, a in enumerate(actors)])
    return Shards(actors, router, sizes, snaps, time.perf_counter() - t0)


def run_queries(sh: Shards, probe: int, margin: float, qsets: list, batch: int, n: int) -> dict:
    """Each query set from the shards' snapshot: medians of the per-item CPU, the share of items that
    searched more than one shard, and the decisions (all sets, in order)."""
    import ray

    from pipelines.executors.shards import RayShard

    clients = [RayShard(a, k) for k, a in enumerate(sh.actors)]
    router = dataclasses.replace(sh.router, margin=margin) if sh.router is not None else None
    shard_us, max_us, driver_us, speeds, multi, decided, eps, idle = [], [], [], [], [], [], [], []
    calls: dict[str, list[float]] = {"search": [], "add": [], "ids_of": []}
    nn = np.zeros(NN_BINS, np.int64)  # the items' distances to their nearest accepted item (routing_margin)
    for qx, given in qsets:
        ray.get([a.restore.remote(s) for a, s in zip(sh.actors, sh.snapshots, strict=True)])
        index = ShardedIndex("image", DIM, clients, probe, router)
        index.n, index.sizes = n, list(sh.sizes)
        sel = InfoGrowthSelector(SelectorConfig(min_trusted=0, shards=len(clients), probe=probe), shards=clients)
        sel.indexes["image"] = index
        sel.seq = n
        work = [(samples(len(qx[s:s + batch]), s, given[s:s + batch]),
                 Embeddings(qx[s:s + batch], None, np.ones(len(qx[s:s + batch]), bool),
                            np.zeros(len(qx[s:s + batch]), bool))) for s in range(0, len(qx), batch)]
        i0, t_idle = sum(c for c, _ in ray.get([a.cpu.remote() for a in sh.actors])), time.perf_counter()
        time.sleep(IDLE_S)
        before = [c for c, _ in ray.get([a.cpu.remote() for a in sh.actors])]
        idle_rate = (sum(before) - i0) / (time.perf_counter() - t_idle)  # CPU seconds per second, all shards
        c0, t0 = time.process_time(), time.perf_counter()
        out = [sel.select(tbl, emb).decisions for tbl, emb in work]
        for c in clients:  # every add has landed (the clients hold the last batch's back until a call)
            c.describe()
        wall, driver = time.perf_counter() - t0, time.process_time() - c0
        after = ray.get([a.cpu.remote() for a in sh.actors])
        used = np.array([c for c, _ in after]) - np.array(before)
        for kind in calls:
            calls[kind].append(sum(w[kind] for _, w in after) / len(qx) * 1e6)
        shard_us.append(used.sum() / len(qx) * 1e6)
        max_us.append(used.max() / len(qx) * 1e6)
        driver_us.append(driver / len(qx) * 1e6)
        idle.append(idle_rate * wall / len(qx) * 1e6)
        speeds.append(len(qx) / wall)
        multi.append(index.searched[2:].sum() / max(1, index.searched.sum()))
        decided += [d for t in out for d in zip(*(t.column(k).to_pylist() for k in DECIDED), strict=True)]
        sims = np.concatenate([t.column("max_sim").to_numpy(zero_copy_only=False) for t in out]).astype(np.float64)
        np.add.at(nn, nn_bins(sims[np.isfinite(sims)]), 1)
        eps.append(float(sel.cal.values["eps_dup"]))
    med = statistics.median
    return {"shard_us": med(shard_us), "max_shard_us": med(max_us), "driver_us": med(driver_us),
            "items_per_s": med(speeds), "idle_us": med(idle), "multi_probe": med(multi), "_decided": decided, "_eps": med(eps), "_nn": nn,
            **{f"{k}_us": med(v) for k, v in calls.items()}}


@contextlib.contextmanager
def counting_searches() -> Iterator[list[np.ndarray]]:
    """The `searched` tallies of every ShardedIndex that searches inside the block (the demo runs build
    their selector inside `run_ingest`)."""
    tallies: list[np.ndarray] = []
    original = ShardedIndex.search_labelled

    def search(self: ShardedIndex, q: np.ndarray, k: int, seqs: np.ndarray):  # noqa: ANN202
        if not any(t is self.searched for t in tallies):
            tallies.append(self.searched)
        return original(self, q, k, seqs)

    ShardedIndex.search_labelled = search  # type: ignore[method-assign]
    try:
        yield tallies
    finally:
        ShardedIndex.search_labelled = original  # type: ignore[method-assign]


def quality(shards: int, probe: int, margin: str | float, seeds: list[int], work: Path) -> dict:
    rows, runs, multi = [], [], []
    for s in seeds:
        d = work / f"s{shards}-p{probe}-m{margin}"
        with counting_searches() as tallies:
            rows.append(run_seed(s, d, {"selector": {"shards": shards, "probe": probe, "shard_margin": margin}}))
        t = read_table(d / f"seed{s}", "decisions").sort_by("seq")
        runs.append(list(zip(*(t.column(k).to_pylist() for k in DECIDED), strict=True)))
        total = np.sum(tallies, axis=0) if tallies else np.zeros(2)
        multi.append(float(total[2:].sum() / max(1, total.sum())))
    return {"dup": float(np.mean([r["dup_groups_one"] for r in rows])),
            "noise": float(np.mean([r["noise_f1"] for r in rows])), "multi_demo": float(np.mean(multi)), "_runs": runs}


def same(a: list, b: list) -> float:
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def projection(rows: list[dict]) -> list[dict]:
    """Items/s for PROJECT_CORES cores from the per-process costs of each row with the most shards."""
    out = []
    widest = max(r["shards"] for r in rows)
    for r in (r for r in rows if r["shards"] == widest):
        imbalance = r["max_shard_us"] * r["shards"] / max(r["shard_us"], 1e-9)
        for cores in PROJECT_CORES:
            shard_cap = r["shard_us"] * imbalance / (cores - 1)
            out.append({"cores": cores, "from_shards": r["shards"], "probe": r["probe"], "margin": r["margin"],
                        "projected_items_per_s": round(1e6 / max(r["driver_us"], shard_cap)),
                        "shards_alone_items_per_s": round(1e6 / shard_cap),
                        "selector_process_items_per_s": round(1e6 / r["driver_us"]),
                        "bound": "selector process" if r["driver_us"] >= shard_cap else "shards"})
    return out


def configs(shards: list[int], probes: list[int], margins: list[str]) -> list[tuple[int, int, str]]:
    out = [(1, 1, "-")] if 1 in shards else []
    for s in sorted(x for x in shards if x > 1):
        for p in sorted({min(p, s) for p in probes} | {s}):
            out += [(s, p, m) for m in margins]
    return out


def measure(sh: Shards, probe: int, margin: str, base: dict, qsets: list, args: argparse.Namespace,
            work: Path) -> dict:
    """One configuration's row; the first (one shard) fills `base`, what every later row is against."""
    shards = len(sh.actors)
    m = 2.0 if margin == "-" else routing_margin(margin if margin == "auto" else float(margin), base["eps"], base["nn"])
    w = run_queries(sh, probe, m, qsets, args.batch, args.n)
    q = quality(shards, probe, "auto" if margin == "-" else margin, args.seeds, work / "demo")
    if not base:
        base.update(w=w, q=q, eps=w["_eps"], nn=w["_nn"])
    bw, bq = base["w"], base["q"]
    return {"shards": shards, "probe": probe, "margin": margin, "margin_value": "-" if margin == "-" else f"{m:.2g}",
            "shard_us": round(w["shard_us"], 1), "ratio": round(w["shard_us"] / bw["shard_us"], 3),
            "max_shard_us": round(w["max_shard_us"], 1), "driver_us": round(w["driver_us"], 1),
            "search_us": round(w["search_us"], 1), "search_ratio": round(w["search_us"] / bw["search_us"], 3),
            "add_us": round(w["add_us"], 1), "idle_us": round(w["idle_us"], 1),
            "ids_of_us": round(w["ids_of_us"], 1), "multi_probe": round(w["multi_probe"], 4),
            "same_1m": round(same(w["_decided"], bw["_decided"]), 4), "items_per_s": round(w["items_per_s"]),
            "d_dup": round(q["dup"] - bq["dup"], 4), "d_noise": round(q["noise"] - bq["noise"], 4),
            "same_demo": round(float(np.mean([same(a, b) for a, b in zip(q["_runs"], bq["_runs"], strict=True)])), 4),
            "multi_demo": round(q["multi_demo"], 4), "n_indexed": args.n, "build_s": round(sh.build_s, 1),
            "shard_sizes": sh.sizes, "dup_groups_one": round(q["dup"], 4), "noise_f1": round(q["noise"], 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="items pre-indexed")
    ap.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="shard counts (1: the baseline)")
    ap.add_argument("--probes", type=int, nargs="+", default=[2], help="probe caps for S > 1 (also run: probe = S)")
    ap.add_argument("--margins", nargs="+", default=["auto", "2"], help="selector.shard_margin values")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="demo-stream seeds for the quality columns")
    ap.add_argument("--json", help="also write the rows and the projection here (keys as in the tables)")
    args = ap.parse_args()
    if 1 not in args.shards:
        ap.error("--shards must include 1: the baseline every ratio is against")
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
    sel = InfoGrowthSelector(SelectorConfig(min_trusted=0), shards=[LocalShard(warm)])
    wq, wg = queries(1000, c, 256, 1)
    sel.select(samples(256, 0, wg), Embeddings(wq, None, np.ones(256, bool), np.zeros(256, bool)))
    qsets = [queries(args.n, c, args.queries, 7 + r) for r in range(args.repeats)]
    rows: list[dict] = []
    print(" | ".join(f"{h:>12}" for h in COLS), flush=True)
    with tempfile.TemporaryDirectory(prefix="curator-shards-") as tmp:
        base: dict = {}
        built: dict[int, Shards] = {}
        for shards, probe, margin in configs(args.shards, args.probes, args.margins):
            if shards not in built:
                for old in built.values():
                    for a in old.actors:
                        ray.kill(a)
                built = {shards: start_shards(args.n, shards, c, Path(tmp))}
            row = measure(built[shards], probe, margin, base, qsets, args, Path(tmp))
            rows.append(row)
            print(" | ".join(f"{row[h]!s:>12}" for h in COLS), flush=True)
    ray.shutdown()
    proj = projection(rows)
    print("\nProjection (from the per-process CPU above, not measured on that many cores):")
    for p in proj:
        print(f"  {p['cores']:>2} cores, {p['cores'] - 1} shards like the {p['from_shards']}-shard row (probe {p['probe']}, "
              f"margin {p['margin']}): ~{p['projected_items_per_s']:,} items/s, bound by the {p['bound']} "
              f"(shards alone ~{p['shards_alone_items_per_s']:,}, the selector process ~"
              f"{p['selector_process_items_per_s']:,})")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "projection": proj}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
