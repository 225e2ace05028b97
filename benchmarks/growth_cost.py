"""The cost of growing a curated set: online selection against re-running an offline deduplication
over everything seen so far, each time data arrives.

    python benchmarks/growth_cost.py [--items 200000] [--increments 10] [--dup 0.1] [--eps 0.02]
                                     [--threads 0] [--json FILE]

Data: precomputed 512-d embeddings from a mixture of Gaussian clusters, `--dup` of them near-copies
of an earlier item, arriving in `--increments` equal increments.

- **online**: curator's selector (`InfoGrowthSelector`, library defaults, `eps_dup = --eps`) decides
  each increment's items as they arrive, against the index of everything kept so far.
- **offline, repeated**: SemDeDup (Abbas et al., 2023) -- spherical k-means over all items seen
  so far (k = sqrt(n), FAISS), then within each cluster an item is dropped when its similarity to an
  earlier item of the cluster is >= 1 - eps -- re-run from scratch at every increment, because an
  offline tool has no state to continue from.

Reported: total seconds of each over all increments (same machine, same run), their ratio (target:
online <= 1/5 of repeated offline), and how the final kept sets agree (share of items with the same
keep/drop decision; items one keeps and the other drops, both ways).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selector_speed import DIM, centers, mixture  # noqa: E402

from curator.config import SelectorConfig  # noqa: E402
from curator.embed import Embeddings  # noqa: E402
from curator.records import SAMPLE_SCHEMA  # noqa: E402
from curator.select import InfoGrowthSelector  # noqa: E402

COLS = ["items", "increments", "online_s", "offline_repeated_s", "online_over_offline", "offline_last_s",
        "kept_online", "kept_offline", "decision_agreement", "kept_only_online", "kept_only_offline"]


def data(n: int, dup: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, _ = mixture(rng, centers(), n)
    for i in np.flatnonzero(rng.random(n) < dup):
        if i:
            x[i] = x[int(rng.integers(0, i))] + rng.normal(0, 0.002 / np.sqrt(DIM), DIM).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def online(x: np.ndarray, eps: float, batch: int = 256) -> tuple[float, np.ndarray]:
    """The stream through the selector; increments only delimit what arrives when -- it just goes on."""
    sel = InfoGrowthSelector(SelectorConfig(eps_dup=eps, min_trusted=0))
    kept = np.zeros(len(x), bool)
    t0 = time.perf_counter()
    for s in range(0, len(x), batch):
        e = min(len(x), s + batch)
        m = e - s
        tbl = pa.table({"id": [str(i) for i in range(s, e)], "image": pa.nulls(m, pa.binary()),
                        "image_uri": pa.nulls(m, pa.string()), "text": pa.nulls(m, pa.string()),
                        "label": pa.nulls(m, pa.int64()), "metadata": pa.nulls(m, pa.string()),
                        "source": ["g"] * m, "partition": pa.array(np.zeros(m, np.int32)),
                        "offset": pa.array(np.arange(s, e)), "embedding": pa.nulls(m, pa.list_(pa.float32()))},
                       schema=SAMPLE_SCHEMA)
        d = sel.select(tbl, Embeddings(x[s:e], None, np.ones(m, bool), np.zeros(m, bool))).decisions
        kept[s:e] = np.array(d.column("decision").to_pylist()) != "dropped-duplicate"
    return time.perf_counter() - t0, kept


def semdedup(x: np.ndarray, eps: float, seed: int = 0) -> np.ndarray:
    """SemDeDup over all of x: keep an item unless an earlier item of its k-means cluster is a near-copy."""
    import faiss

    n = len(x)
    k = max(1, int(np.sqrt(n)))
    km = faiss.Kmeans(DIM, k, niter=20, spherical=True, seed=seed, max_points_per_centroid=256, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    keep = np.ones(n, bool)
    order = np.argsort(assign, kind="stable")  # by cluster, then arrival
    bounds = np.flatnonzero(np.diff(assign[order])) + 1
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        v = x[members]
        sims = v @ v.T
        earlier = np.tril(sims, -1)  # similarity to items that arrived before (members are in arrival order)
        keep[members[(earlier >= 1.0 - eps).any(axis=1)]] = False
    return keep


def offline_repeated(x: np.ndarray, increments: int, eps: float) -> tuple[float, float, np.ndarray]:
    step = len(x) // increments
    total, last, keep = 0.0, 0.0, np.ones(len(x), bool)
    for t in range(1, increments + 1):
        seen = x[: t * step if t < increments else len(x)]
        t0 = time.perf_counter()
        keep = semdedup(seen, eps)
        last = time.perf_counter() - t0
        total += last
        print(f"  offline SemDeDup over {len(seen):,} items: {last:.1f}s", flush=True)
    return total, last, keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--increments", type=int, default=10)
    ap.add_argument("--dup", type=float, default=0.1)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=0, help="FAISS/BLAS threads (0 = all cores)")
    ap.add_argument("--json", help="also write the row here (keys as in the table)")
    args = ap.parse_args()
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    x = data(args.items, args.dup)
    on_s, on_keep = online(x, args.eps)
    print(f"  online selection over {len(x):,} items: {on_s:.1f}s", flush=True)
    off_s, off_last, off_keep = offline_repeated(x, args.increments, args.eps)
    row = {"items": len(x), "increments": args.increments, "online_s": round(on_s, 1),
           "offline_repeated_s": round(off_s, 1), "online_over_offline": round(on_s / off_s, 3),
           "offline_last_s": round(off_last, 1), "kept_online": int(on_keep.sum()), "kept_offline": int(off_keep.sum()),
           "decision_agreement": round(float((on_keep == off_keep).mean()), 4),
           "kept_only_online": int((on_keep & ~off_keep).sum()), "kept_only_offline": int((~on_keep & off_keep).sum())}
    print(" | ".join(f"{c:>18}" for c in COLS))
    print(" | ".join(f"{row[c]:>18}" for c in COLS))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
