"""Items/s of the whole InfoGrowth selector (search + decide + insert) against index size and kind,
beside the raw search of the same index, with the decisions compared to exact search.

    python benchmarks/selector_speed.py [--sizes 10000 100000 1000000 10000000] [--kinds auto]
        [--queries 2048] [--batch 256] [--repeats 3] [--threads 2] [--faiss-blas-from N] [--json FILE]

The index is filled with N unit 512-d vectors from a mixture of Gaussian clusters (CLIP embeddings
are clustered, not uniform), labelled by cluster (`VectorIndex.bulk_build`: the kind its policy
gives N, as growing to N would end with). Then `--repeats` sets of `--queries` new items go through
`InfoGrowthSelector.select` in batches: from the same mixture, 10% near-duplicates of indexed items,
5% near-duplicates of earlier queries, 10% wrong labels -- so dedup, relabelling and gains are all
exercised. Columns:

- ``items_per_s``: the selector, median over the repeats;
- ``search_only_items_per_s``: the same index's batched search of the same queries alone, in the same
  run (the physical limit); ``ratio``: the first over the second (median of the per-repeat ratios);
- ``search_share``, ``votes_share``: of the selector's time, the part inside the index search, and
  the part redoing the leave-one-out label votes (`curator.select.trust.LooVotes`: a fresh selector
  without a bootstrap takes its first accepted items as the label evidence) -- what bounds `ratio`;
- ``steady_items_per_s``, ``steady_ratio``: the same selector two query sets later (another
  `--queries` items, searched alone just before on the same index), once it holds its LOO_CAP
  evidence items and the votes are no longer redone; ``steady_search_share`` as ``search_share``;
- ``decision_agreement``: share of items whose decision (and corrected label, and duplicate) equals
  a run of the same queries with exact search (brute force over the same N vectors, regenerated);
- ``recall_at_4``: overlap of the 4 nearest indexed items with the exact 4 nearest;
- ``bytes_per_item``: the index's codes and its id/label/position columns per item;
- ``build_s``, ``rss_mb``: filling time, and this process's resident memory after the repeats.

Sizes above what fits uncompressed are skipped for kinds that store vectors exactly ("flat" needs
2 KB/item: 10M would need 20 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curator.config import IndexConfig, SelectorConfig, apply_section  # noqa: E402
from curator.embed import Embeddings  # noqa: E402
from curator.index import VectorIndex  # noqa: E402
from curator.records import SAMPLE_SCHEMA  # noqa: E402
from curator.select import InfoGrowthSelector  # noqa: E402
from curator.select.trust import LooVotes  # noqa: E402

DIM, CLUSTERS, CHUNK = 512, 2000, 200_000
COLS = ["index", "kind", "n_indexed", "build_s", "items_per_s", "search_only_items_per_s", "ratio", "search_share",
        "votes_share", "steady_items_per_s", "steady_ratio", "steady_search_share", "decision_agreement", "recall_at_4", "bytes_per_item",
        "rss_mb"]


def centers() -> np.ndarray:
    c = np.random.default_rng(0).normal(size=(CLUSTERS, DIM)).astype(np.float32)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def mixture(rng: np.random.Generator, c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    lab = rng.integers(0, len(c), n)
    x = c[lab] + rng.normal(0, 0.9 / np.sqrt(DIM), (n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), lab


def base_chunks(n: int, c: np.ndarray) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
    """The indexed items, chunk by chunk, the same every time (seeded per chunk)."""
    for s in range(0, n, CHUNK):
        x, lab = base_chunk(n, c, s // CHUNK)
        yield x, [f"i{s + j}" for j in range(len(x))], lab


def base_chunk(n_base: int, c: np.ndarray, ch: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk `ch` of the indexed items (vectors, labels), as `base_chunks` yields it."""
    return mixture(np.random.default_rng(1000 + ch), c, min(CHUNK, n_base - ch * CHUNK))


def queries(n_base: int, c: np.ndarray, n: int, seed: int,
            chunk: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """New items: the mixture, 10% near-copies of indexed items, 5% of earlier queries, 10% wrong labels.
    `chunk(ch)` regenerates chunk `ch` of the indexed items (default: `base_chunk`; another generator
    of the base -- e.g. on a GPU -- passes its own)."""
    chunk = chunk or (lambda ch: base_chunk(n_base, c, ch))
    rng = np.random.default_rng(seed)
    x, lab = mixture(rng, c, n)
    dup_base = np.flatnonzero(rng.random(n) < 0.10)
    targets = np.sort(rng.integers(0, n_base, len(dup_base)))
    by_chunk: dict[int, list[int]] = {}
    for qi, t in zip(dup_base, targets, strict=True):
        by_chunk.setdefault(int(t) // CHUNK, []).append(int(qi))
    tmap = dict(zip(dup_base.tolist(), targets.tolist(), strict=True))
    for ch, qis in by_chunk.items():  # regenerate only the chunks holding a target
        bx, blab = chunk(ch)
        for qi in qis:
            x[qi], lab[qi] = bx[tmap[qi] - ch * CHUNK], blab[tmap[qi] - ch * CHUNK]
    for qi in np.flatnonzero(rng.random(n) < 0.05):
        if qi:
            j = int(rng.integers(0, qi))
            x[qi], lab[qi] = x[j], lab[j]
    x = x + rng.normal(0, 0.003 / np.sqrt(DIM), x.shape).astype(np.float32)  # near, not identical
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    given = np.where(rng.random(n) < 0.10, rng.integers(0, len(c), n), lab)
    return x.astype(np.float32), given


class ExactIndex:
    """Exact search with the VectorIndex interface the selector uses: the base's exact top-k for each
    query (brute force, computed once by chunks) merged with exact search over the items added since."""

    def __init__(self, n_base: int, base_labels: np.ndarray, top_s: np.ndarray, top_r: np.ndarray) -> None:
        self.n_base, self.base_labels, self.top_s, self.top_r = n_base, base_labels, top_s, top_r  # seq0 = n_base
        self.added = VectorIndex(DIM, IndexConfig(kind="flat"))
        self.kind = "exact"

    def __len__(self) -> int:
        return self.n_base + len(self.added)

    def search(self, q: np.ndarray, k: int, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from curator.index.recent import merge

        s, r = self.top_s[seqs - self.n_base, :k], self.top_r[seqs - self.n_base, :k]
        if len(self.added):
            s2, r2 = self.added.search(q, k)
            s, r = merge(s, r, s2, np.where(r2 >= 0, r2 + self.n_base, -1), k)
        return s, r

    def search_labelled(self, q: np.ndarray, k: int, seqs: np.ndarray) -> tuple[np.ndarray, ...]:
        sims, rows = self.search(q, k, seqs)
        return sims, rows, self.labels_of(rows)

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        extra = self.added.labels
        lab = np.concatenate([self.base_labels, extra])
        return np.where(rows >= 0, lab[np.maximum(rows, 0)], -1)

    def ids_of(self, rows: np.ndarray) -> list[str]:
        return [f"i{r}" if r < self.n_base else self.added.ids[r - self.n_base] for r in rows]

    def add(self, x: np.ndarray, ids: list[str], labels: np.ndarray | None = None, seqs: np.ndarray | None = None) -> None:
        self.added.add(x, ids, labels, seqs)


def exact_topk(n_base: int, c: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_r = np.full((len(q), k), -1, np.int64)
    labels = np.zeros(n_base, np.int64)
    row = 0
    for x, _, lab in base_chunks(n_base, c):
        labels[row:row + len(x)] = lab
        s = q @ x.T
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        cs = np.concatenate([best_s, np.take_along_axis(s, part, axis=1)], axis=1)
        cr = np.concatenate([best_r, part + row], axis=1)
        o = np.argsort(-cs, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cs, o, axis=1), np.take_along_axis(cr, o, axis=1)
        row += len(x)
    return best_s, best_r, labels


def samples(n: int, start: int, labels: np.ndarray) -> pa.Table:
    return pa.table({"id": [f"q{start + i}" for i in range(n)], "image": pa.nulls(n, pa.binary()),
                     "image_uri": pa.nulls(n, pa.string()), "text": pa.nulls(n, pa.string()),
                     "label": pa.array(labels.astype(np.int64)), "metadata": pa.nulls(n, pa.string()),
                     "source": ["bench"] * n, "partition": pa.array(np.zeros(n, np.int32)),
                     "offset": pa.array(np.arange(start, start + n)), "embedding": pa.nulls(n, pa.list_(pa.float32()))},
                    schema=SAMPLE_SCHEMA)


class Timed:
    """Time spent inside a callable (a phase of the selector), summed over calls."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.s = fn, 0.0

    def __call__(self, *args: object, **kw: object) -> object:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kw)
        finally:
            self.s += time.perf_counter() - t0


def run_selector(index: object, q: np.ndarray, given: np.ndarray, batch: int,
                 sel: InfoGrowthSelector | None = None, phases: dict[str, float] | None = None,
                 ) -> tuple[float, list[tuple]]:
    """Items/s of `sel` (default: a fresh one over `index`) deciding `q`, and its decisions; `phases`:
    filled with the seconds inside the index search and the leave-one-out votes."""
    if sel is None:
        sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
        sel.indexes["image"] = index  # type: ignore[assignment]
        sel.seq = len(index)  # the queries come after the indexed items in the stream
    search, votes = Timed(index.search_labelled), Timed(LooVotes.evidence)  # type: ignore[attr-defined]
    if phases is not None:
        index.search_labelled, LooVotes.evidence = search, lambda self: votes(self)  # type: ignore[attr-defined,method-assign]
    work = [(samples(len(q[s:s + batch]), s, given[s:s + batch]),
             Embeddings(q[s:s + batch], None, np.ones(len(q[s:s + batch]), bool),
                        np.zeros(len(q[s:s + batch]), bool))) for s in range(0, len(q), batch)]
    t0 = time.perf_counter()
    decided = [sel.select(tbl, emb).decisions for tbl, emb in work]
    speed = len(q) / (time.perf_counter() - t0)  # the selector's time, not this function's reading of its tables
    out: list[tuple] = []
    for d in decided:
        out += list(zip(d.column("decision").to_pylist(), d.column("label_out").to_pylist(),
                        d.column("dup_of").to_pylist(), strict=True))
    if phases is not None:
        del index.search_labelled  # type: ignore[attr-defined]
        LooVotes.evidence = votes.fn  # type: ignore[method-assign]
        phases.update(search=search.s, votes=votes.s, total=len(q) / speed)
    return speed, out


def search_only(index: VectorIndex, q: np.ndarray, batch: int, k: int) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(q), batch):
        index.search(q[s:s + batch], k, len(index) + np.arange(s, s + len(q[s:s + batch])))
    return len(q) / (time.perf_counter() - t0)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    ap.add_argument("--kinds", nargs="+", default=["auto"], help="auto (the default kind), flat, ivf, ivf-pq, hnsw")
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="FAISS/BLAS threads (0 = all cores)")
    ap.add_argument("--faiss-blas-from", type=int, default=0, metavar="N",
                    help="let FAISS's exhaustive searches take BLAS products from N query elements (queries x "
                         "dims; FAISS's own: 128000) instead of curator's per-pair loop (curator.index.threads): "
                         "what thread-count-independent results cost")
    ap.add_argument("--index", action="append", default=[], metavar="FIELD=VALUE",
                    help="an [index] setting for every kind, e.g. --index ivf_nprobe=8 (repeatable)")
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    overrides = dict(kv.split("=", 1) for kv in args.index)
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    c = centers()
    k = max(SelectorConfig().k_gain, SelectorConfig().k_label)
    warm = VectorIndex(DIM, IndexConfig(kind="flat"))  # load the compiled loop before anything is timed
    if args.faiss_blas_from:  # after the process's own setting, which the first index made
        import faiss

        faiss.cvar.distance_compute_blas_threshold = args.faiss_blas_from
    warm.bulk_build(lambda: base_chunks(1000, c), 1000)
    run_selector(warm, *queries(1000, c, 256, 1), args.batch)
    rows = []
    print(" | ".join(f"{h:>12}" for h in COLS), flush=True)
    for n in args.sizes:
        qsets = [queries(n, c, args.queries, 7 + r) for r in range(args.repeats)]
        exact = [exact_topk(n, c, qx, k) if r == 0 else (None, None, None) for r, (qx, _) in enumerate(qsets)]
        for kind in args.kinds:
            if kind in ("flat", "hnsw", "ivf") and n * DIM * 4 > 8 * 2**30:
                continue  # uncompressed vectors would not fit the 8 GB the 10M target allows
            cfg = IndexConfig(kind=kind, ivf_train_size=min(n, 50_000))
            apply_section(cfg, "index", overrides, "--index")
            t0 = time.perf_counter()
            idx = VectorIndex(DIM, cfg)
            idx.bulk_build(lambda n=n: base_chunks(n, c), n)
            build = time.perf_counter() - t0
            search, speeds, agree, recall, shares, steady = [], [], [], [], [], []
            for r, ((qx, given), (ts, tr, labels)) in enumerate(zip(qsets, exact, strict=True)):
                _, ar = idx.search(qx[:256], 4, len(idx) + np.arange(256))
                if r == 0:
                    recall.append(np.mean([len(set(a) & set(b)) / 4 for a, b in zip(ar, tr[:256, :4], strict=True)]))
                search.append(search_only(idx, qx, args.batch, k))  # back to back: the same machine load
                sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
                sel.indexes["image"], sel.seq = idx, len(idx)  # type: ignore[assignment]
                phases: dict[str, float] = {}
                speed, dec = run_selector(idx, qx, given, args.batch, sel, phases)
                speeds.append(speed)
                shares.append((phases["search"] / phases["total"], phases["votes"] / phases["total"]))
                run_selector(idx, *queries(n, c, args.queries, 107 + r), args.batch, sel)  # it goes on: past LOO_CAP
                nx, ngiven = queries(n, c, args.queries, 207 + r)
                so = search_only(idx, nx, args.batch, k)
                late: dict[str, float] = {}
                steady.append((run_selector(idx, nx, ngiven, args.batch, sel, late)[0], so, late["search"] / late["total"]))
                if r == 0:  # the exact run starts from the same index contents: the base alone
                    _, ref = run_selector(ExactIndex(n, labels, ts, tr), qx, given, args.batch)
                    agree.append(np.mean([a == b for a, b in zip(dec, ref, strict=True)]))
            so = statistics.median(search)
            row = {"index": kind, "kind": idx.kind, "n_indexed": n, "build_s": round(build, 1),
                   "items_per_s": round(statistics.median(speeds)), "search_only_items_per_s": round(so),
                   "ratio": round(statistics.median([a / b for a, b in zip(speeds, search, strict=True)]), 2),
                   "search_share": round(statistics.median(a for a, _ in shares), 2),
                   "votes_share": round(statistics.median(b for _, b in shares), 2),
                   "steady_items_per_s": round(statistics.median(a for a, _, _ in steady)),
                   "steady_ratio": round(statistics.median(a / b for a, b, _ in steady), 2),
                   "steady_search_share": round(statistics.median(sh for _, _, sh in steady), 2),
                   "decision_agreement": round(float(np.mean(agree)), 4), "recall_at_4": round(float(np.mean(recall)), 3),
                   "bytes_per_item": round(idx.bytes_per_item()), "rss_mb": round(rss_mb())}
            rows.append(row)
            print(" | ".join(f"{row[h]:>12}" for h in COLS), flush=True)
            del idx
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
