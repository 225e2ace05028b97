"""Items/s of the whole InfoGrowth selector (search + decide + insert) against index size.

    python benchmarks/selector_speed.py [--sizes 10000 100000 1000000] [--kinds flat ivf hnsw]
                                        [--queries 2048] [--batch 256] [--repeats 3] [--json FILE]

The index is pre-filled with N unit 512-d vectors drawn from a mixture of 1,000 Gaussian
clusters (CLIP embeddings are clustered, not uniform), labelled by cluster; then
`--queries` new items from the same mixture go through `InfoGrowthSelector.select` in
batches, `--repeats` times with fresh queries each time; the table gives the median.
Build time is reported separately. Exact (flat) is the baseline: the `vs_flat` column is
the speed-up of each index type at the same N, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curator.config import IndexConfig, SelectorConfig  # noqa: E402
from curator.embed import Embeddings  # noqa: E402
from curator.index import VectorIndex  # noqa: E402
from curator.records import SAMPLE_SCHEMA  # noqa: E402
from curator.select import InfoGrowthSelector  # noqa: E402

DIM = 512
COLS = ["index", "n_indexed", "build_s", "items_per_s", "vs_flat", "recall_at_1"]


def mixture(rng: np.random.Generator, centers: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    lab = rng.integers(0, len(centers), n)
    x = centers[lab] + rng.normal(0, 0.6 / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), lab


def fill(kind: str, n: int, centers: np.ndarray, seed: int) -> tuple[VectorIndex, float]:
    cfg = IndexConfig(kind=kind, ivf_nlist=max(64, int(4 * np.sqrt(n))), ivf_nprobe=16,
                      ivf_train_size=min(n, 50_000), hnsw_m=16, hnsw_ef_construction=40, hnsw_ef_search=64)
    idx = VectorIndex(DIM, cfg)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        x, lab = mixture(rng, centers, m)
        idx.add(x, [f"i{s + j}" for j in range(m)], lab)
    return idx, time.perf_counter() - t0


def samples(n: int, start: int) -> pa.Table:
    return pa.table({"id": [f"q{start + i}" for i in range(n)], "image": pa.nulls(n, pa.binary()),
                     "image_uri": pa.nulls(n, pa.string()), "text": pa.nulls(n, pa.string()),
                     "label": pa.array(np.zeros(n, np.int64)), "metadata": pa.nulls(n, pa.string()),
                     "source": ["bench"] * n, "partition": pa.array(np.zeros(n, np.int32)),
                     "offset": pa.array(np.arange(start, start + n)), "embedding": pa.nulls(n, pa.list_(pa.float32()))},
                    schema=SAMPLE_SCHEMA)


def time_selector(idx: VectorIndex, q: np.ndarray, qlab: np.ndarray, batch: int) -> float:
    sel = InfoGrowthSelector(SelectorConfig(eps_dup=0.02, min_trusted=0))
    sel.indexes["image"] = idx  # grows by at most len(q) per repeat: negligible against n
    batches = []
    for s in range(0, len(q), batch):
        x = q[s:s + batch]
        tbl = samples(len(x), s)
        tbl = tbl.set_column(tbl.schema.get_field_index("label"), "label", pa.array(qlab[s:s + batch]))
        batches.append((tbl, Embeddings(x, None, np.ones(len(x), bool), np.zeros(len(x), bool))))
    t0 = time.perf_counter()
    for tbl, emb in batches:
        sel.select(tbl, emb)
    return len(q) / (time.perf_counter() - t0)


def recall_at_1(idx: VectorIndex, flat: VectorIndex, q: np.ndarray) -> float:
    _, a = idx.search(q[:256], 1)
    _, b = flat.search(q[:256], 1)
    return float((a[:, 0] == b[:, 0]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the figures here (keys as in the table)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(1000, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    qsets = [mixture(np.random.default_rng(1 + r), centers, args.queries) for r in range(args.repeats)]
    q = qsets[0][0]
    rows = []
    print(" | ".join(f"{c:>12}" for c in COLS), flush=True)
    for n in args.sizes:
        flat = None
        flat_speed = None
        for kind in (["flat"] + [k for k in args.kinds if k != "flat"]):
            idx, build = fill(kind, n, centers, seed=2)
            if kind == "flat":
                flat = idx
            speeds = [time_selector(idx, qq, ql, args.batch) for qq, ql in qsets]
            speed = statistics.median(speeds)
            if kind == "flat":
                flat_speed = speed
            row = {"index": kind, "n_indexed": n, "build_s": round(build, 2), "items_per_s": round(speed, 1),
                   "vs_flat": round(speed / flat_speed, 2), "recall_at_1": recall_at_1(idx, flat, q)}
            if kind in args.kinds:
                rows.append(row)
                print(" | ".join(f"{row[c]:>12}" for c in COLS), flush=True)
            if kind != "flat":
                del idx
        del flat
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
