"""What an exact search of a flat index costs, by the per-pair loop and by `curator.index.exact`,
on rows with and without many copies of one vector (repeated captions).

    python benchmarks/exact_search.py [--rows 8192] [--queries 256] [--k 10] [--dims 32 128 512 768]
        [--tied 0 0.02 0.1 0.3] [--repeats 7] [--json FILE]

`auto` keeps an index flat, and searched exactly, up to 8,192 accepted items; every service starts
there. Each index holds --rows unit vectors in d dimensions (one FAISS thread, as index processes
run). With a tied share t > 0 the rows are copies of 1/t distinct vectors, so each query (one of
them) ties at the cut with a share t of the index -- the text index of a stream whose captions
repeat; with t = 0 they are distinct, and the queries new vectors near them. Milliseconds per
--queries queries, k neighbours, medians of --repeats interleaved runs; every method returns the
per-pair loop's similarities and rows (checked each run):

- ``per_pair_ms``: FAISS's flat search, one (query, row) dot product at a time -- what
  `curator.index.threads` makes every exhaustive search take;
- ``ties_to_loop_ms``: `exact.search` with the queries whose ties outnumber the candidates sent
  to the per-pair loop (the product was computed for nothing: what it did before it re-scored ties);
- ``exact_ms``: `exact.search` as it is, on its own;
- ``routed_ms``: the same with the index's `exact.Route` kept between searches, as `VectorIndex` keeps
  it -- where most queries went on to the loop the last time, the product is skipped but for one
  search in `exact.PROBE` (the mean of PROBE searches in a row, after as many);
- ``vs_per_pair`` and ``vs_ties_to_loop``: per_pair_ms and ties_to_loop_ms over routed_ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import curator.index.exact as exact  # noqa: E402
from curator.index.threads import configure_process  # noqa: E402

COLS = ("dim", "tied_share", "per_pair_ms", "ties_to_loop_ms", "exact_ms", "routed_ms", "vs_per_pair",
        "vs_ties_to_loop")


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def case(rng: np.random.Generator, rows: int, queries: int, d: int, tied: float) -> tuple[np.ndarray, np.ndarray]:
    """(index rows, queries) for a tied share: copies of 1/tied vectors, queries among them; or, at 0,
    distinct rows and queries near rows."""
    if tied > 0:
        base = unit(rng.standard_normal((max(1, round(1 / tied)), d)))
        return base[rng.integers(0, len(base), rows)], base[rng.integers(0, len(base), queries)]
    xb = unit(rng.standard_normal((rows, d)))
    return xb, unit(xb[rng.integers(0, rows, queries)] + 0.3 / np.sqrt(d) * rng.standard_normal((queries, d)))


def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1e3, out


def ties_to_loop(idx: faiss.IndexFlatIP, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`exact.search` with re-scoring ties never worth it (its cost model's per-pair loop made free)."""
    kept = exact.PAIR_NS
    exact.PAIR_NS = (0.0, 0.0)
    try:
        return exact.search(idx, q, k)
    finally:
        exact.PAIR_NS = kept


def measure(rows: int, queries: int, k: int, d: int, tied: float, repeats: int) -> dict[str, Any]:
    xb, q = case(np.random.default_rng(d * 1000 + round(tied * 100)), rows, queries, d, tied)
    idx = faiss.IndexFlatIP(d)
    idx.add(xb)
    route = exact.Route()

    def routed() -> tuple[np.ndarray, np.ndarray]:
        outs = [exact.search(idx, q, k, route) for _ in range(exact.PROBE)]
        return outs[-1]

    methods = {"per_pair_ms": lambda: idx.search(q, k), "ties_to_loop_ms": lambda: ties_to_loop(idx, q, k),
               "exact_ms": lambda: exact.search(idx, q, k), "routed_ms": routed}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats + 1):  # the first round warms up (and is dropped)
        want = None
        for name, fn in methods.items():
            ms, got = timed(fn)
            times[name].append(ms / (exact.PROBE if name == "routed_ms" else 1))
            if want is None:
                want = got
            elif not (np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])):
                raise RuntimeError(f"{name} differs from the per-pair loop at d={d}, tied share {tied}")
    med = {m: statistics.median(t[1:]) for m, t in times.items()}
    return {"dim": d, "tied_share": tied, **{m: round(v, 2) for m, v in med.items()},
            "vs_per_pair": round(med["per_pair_ms"] / med["routed_ms"], 2),
            "vs_ties_to_loop": round(med["ties_to_loop_ms"] / med["routed_ms"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192, help="vectors in each index")
    ap.add_argument("--queries", type=int, default=256, help="queries per search (a batch)")
    ap.add_argument("--k", type=int, default=10, help="neighbours (selector.k_label's default)")
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 128, 512, 768])
    ap.add_argument("--tied", type=float, nargs="+", default=[0.0, 0.02, 0.1, 0.3],
                    help="shares of the index each query ties with (0: distinct rows)")
    ap.add_argument("--repeats", type=int, default=7, help="runs per figure (the table gives medians)")
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    configure_process()
    faiss.omp_set_num_threads(1)
    print(" | ".join(f"{c:>15}" for c in COLS), flush=True)
    rows = []
    for d in args.dims:
        for tied in args.tied:
            row = measure(args.rows, args.queries, args.k, d, tied, args.repeats)
            rows.append(row)
            print(" | ".join(f"{row[c]:>15}" for c in COLS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
