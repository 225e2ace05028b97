"""Exact inner-product search on a CPU flat index, as fast as a matrix product, with FAISS's own answer.

`curator.index.threads` makes every FAISS exhaustive search take its per-pair loop, so that a
similarity does not depend on how many threads or which batch computed it. That loop is a dot
product per (query, row) pair: at 512-d and 8,192 rows, 256 queries take ~90 ms on two threads,
where one BLAS product takes ~26 ms on one. `search` gets the per-pair loop's exact answer at the
product's speed:

1. one BLAS product per block of rows finds each query's ``k + EXTRA`` best *candidates* (FAISS's
   heaps keep them; the product's last bits depend on the BLAS, which is why it only nominates);
2. the candidates are re-scored by FAISS's per-pair kernel (`knn_inner_products_by_idx`, the same
   dot product as the flat search), in row order, so the similarities, the rows and the order of
   ties are the flat search's.

Why the candidates hold the answer: any float32 dot product of d terms is within
``g = gamma_d |q| |x|`` of the true value whatever the order of its sums (``gamma_d = d u / (1 - d
u)``, u = 2^-24), so the product and the per-pair loop differ by at most 2g on a pair. Then every row
of the exact top k scores at least (k-th best candidate) - 4g in the product; when the last candidate
kept scores below that, no row outside the candidates can be in the top k.

A query for which it does not hold has more near-ties at the cut than candidates: copies of one
vector, common where captions repeat ("a photo", a product's name). The same bound still says which
rows can be in its top k: those the product scores at least (k-th best candidate) - 4g. The per-pair
kernel re-scores all of them, in row order -- FAISS's heaps rank ties by row, so a query's top k of
any such superset, taken in row order, is the flat search's. That pays where re-scoring those rows
costs less than the per-pair loop over all rows (`PAIR_NS` ...: at 512-d, up to ~15% of the rows; at
128-d, under 1%; at 64-d and less, never), and where they fit `WITHIN_BYTES`. Other queries past their
candidates, and non-finite queries (or vectors), are searched by the per-pair loop itself.

`nearest` searches a few vectors the same way, each query among the rows it may see: the recent
window beside an approximate index (`curator.index.recent`).

Whether a query ties past its candidates is only known after the product. An index whose last
searched queries mostly went on to the loop (a text index at few dimensions whose captions repeat)
skips the product (`Route`), trying it again every `PROBE`-th search.

Checked on first use for each dimension against the flat search itself (a FAISS build whose two
kernels disagreed would keep the per-pair loop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

#: candidates kept beyond k: room for the product's rounding before a query falls back
EXTRA = 8
#: rows below which the per-pair loop is as fast (a product's fixed costs)
MIN_ROWS = 512
#: bytes of similarities one block of the product may hold
BLOCK_BYTES = 32 << 20
#: bytes of row numbers the queries that fell past their candidates may hold (else the per-pair loop)
WITHIN_BYTES = 32 << 20
#: nanoseconds at d dimensions, (a, b) for a + b d: the per-pair loop's cost per row; re-scoring a row
#: found within the bound (FAISS's kernel takes rows by number; the bookkeeping); and looking at a row
#: for it. Measured on x86 with AVX2, one thread; only the speed depends on them.
PAIR_NS, FOUND_NS, SCAN_NS = (3.5, 0.055), (60.0, 0.15), 10.0
#: the share of rows looked at first, to leave out queries with far too many rows to re-score
SAMPLE = 8
#: the product costs 0.2-0.6 of the per-pair loop at 32-768 d (benchmarks/exact_search.py), so past
#: half the queries going on to the loop anyway, the loop alone is cheaper
LOOP_SHARE = 0.5
#: an index that skips the product still takes it every this many searches (its queries may change)
PROBE = 8
_UNIT = 2.0 ** -24
#: covers the float32 rounding of the norms the bound is computed from (relative ~1e-4 at most)
SLACK = 1.01
_agrees: dict[int, bool] = {}


def applies(idx: object) -> bool:
    """Whether `search` takes `idx`: a CPU FAISS flat inner-product index."""
    return type(idx) in (faiss.IndexFlatIP, faiss.IndexFlat) and \
        idx.metric_type == faiss.METRIC_INNER_PRODUCT  # type: ignore[attr-defined]


def vectors(idx: faiss.IndexFlat) -> np.ndarray:
    """The index's stored vectors, (ntotal, d), without a copy."""
    n, d = int(idx.ntotal), int(idx.d)
    return faiss.rev_swig_ptr(idx.get_xb(), n * d).reshape(n, d)


def rescore(q: np.ndarray, xb: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidate rows (ascending, -1 for none), scored by FAISS's per-pair kernel."""
    nq, m = cand.shape
    sims = np.empty((nq, k), np.float32)
    rows = np.empty((nq, k), np.int64)
    faiss.knn_inner_products_by_idx(faiss.swig_ptr(q), faiss.swig_ptr(xb), faiss.swig_ptr(cand), q.shape[1],
                                    nq, len(xb), m, k, faiss.swig_ptr(sims), faiss.swig_ptr(rows), m)
    return sims, rows


def products(q: np.ndarray, xb: np.ndarray, hidden: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The BLAS product q . xb^T, a block of rows at a time: (first row, (nq, rows) similarities);
    -inf where ``hidden[i, j]`` (query i does not see row j)."""
    block = max(1024, BLOCK_BYTES // (4 * max(len(q), 1)))
    for s in range(0, len(xb), block):
        prod = np.ascontiguousarray(q @ xb[s:s + block].T)
        if hidden is not None:
            prod[hidden[:, s:s + prod.shape[1]]] = -np.inf
        yield s, prod


def candidates(q: np.ndarray, xb: np.ndarray, m: int, hidden: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Each query's m best rows by a BLAS product, best first (similarities, rows; -1 where it sees
    fewer), and the whole product when it fit one block (None otherwise). ``hidden[i, j]``: query i
    does not see row j (its product there is -inf)."""
    nq = len(q)
    sims = np.empty((nq, m), np.float32)
    rows = np.empty((nq, m), np.int64)
    heaps = faiss.float_minheap_array_t()  # a min-heap keeps the largest
    heaps.nh, heaps.k, heaps.val, heaps.ids = nq, m, faiss.swig_ptr(sims), faiss.swig_ptr(rows)
    heaps.heapify()
    whole: np.ndarray | None = None
    for s, prod in products(q, xb, hidden):
        heaps.addn(prod.shape[1], faiss.swig_ptr(prod), s, 0, nq)
        whole = prod if s == 0 else None
    heaps.reorder()
    return sims, rows, (whole if whole is not None and whole.shape[1] == len(xb) else None)


def within(scored: Iterable[tuple[int, np.ndarray]], floor: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's rows whose product score is at least its `floor`, ascending and padded with -1
    ((queries, widest) row numbers), and which queries had more than `cap` of them (their rows are
    left out). `scored`: the product's blocks for these queries (`products`), in row order."""
    nq = len(floor)
    count = np.zeros(nq, np.int64)
    qs: list[np.ndarray] = []
    rs: list[np.ndarray] = []
    for s, prod in scored:
        mask = prod >= floor[:, None]
        count += np.count_nonzero(mask, axis=1)
        alive = np.flatnonzero(count <= cap)  # a query past its cap is not looked at again
        if len(alive) == 0:
            break
        qi, ri = np.nonzero(mask if len(alive) == nq else mask[alive])  # by query, then by row
        qs.append(alive[qi] if len(alive) < nq else qi)
        rs.append(ri + s)
    over = count > cap
    qi, ri = (np.concatenate(qs), np.concatenate(rs)) if qs else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(qs) > 1:  # blocks in row order: a stable sort by query keeps each query's rows ascending
        order = np.argsort(qi, kind="stable")
        qi, ri = qi[order], ri[order]
    keep = ~over[qi]  # the rows found before a query went past its cap
    qi, ri = qi[keep], ri[keep]
    have = np.where(over, 0, count)
    out = np.full((nq, int(have.max(initial=0))), -1, np.int64)
    out[qi, np.arange(len(qi)) - np.repeat(np.cumsum(have) - have, have)] = ri
    return out, over


def _check(d: int) -> bool:
    """Whether the per-pair re-scoring gives the flat search's similarities and rows at dimension d."""
    if d not in _agrees:
        rng = np.random.default_rng(d)
        xb = rng.standard_normal((256, d)).astype(np.float32)
        q = rng.standard_normal((16, d)).astype(np.float32)
        flat = faiss.IndexFlatIP(d)
        flat.add(xb)
        want = flat.search(q, 32)
        got = rescore(q, xb, np.ascontiguousarray(np.broadcast_to(np.arange(256), (16, 256))), 32)
        _agrees[d] = bool(np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1]))
        if not _agrees[d]:
            log.warning("this FAISS build's per-pair kernels disagree at %d-d: exact searches keep the per-pair loop", d)
    return _agrees[d]


@dataclass
class Route:
    """One index's recent searches: the share of their queries that went on to the per-pair loop, and
    how many searches in a row have skipped the product since."""

    looped: float = 0.0
    skipped: int = 0

    def direct(self) -> bool:
        """Whether this search should take the per-pair loop alone."""
        if self.looped > LOOP_SHARE and self.skipped < PROBE - 1:
            self.skipped += 1
            return True
        self.skipped = 0
        return False


def search(idx: faiss.IndexFlat, q: np.ndarray, k: int, route: Route | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What ``idx.search(q, k)`` returns (the per-pair loop's similarities, rows and order), for a flat
    inner-product index (`applies`); k <= idx.ntotal. `route`: the index's, kept between searches."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    n, d = int(idx.ntotal), int(idx.d)
    m = k + EXTRA
    if n < max(m, MIN_ROWS) or len(q) == 0 or not _check(d) or (route is not None and route.direct()):
        return idx.search(q, k)
    xb = vectors(idx)
    sims, rows, whole = candidates(q, xb, m)
    floor = sims[:, k - 1] - _reach(q, xb)
    bounded = np.isfinite(q).all(axis=1) & np.isfinite(floor)
    sure = bounded & (sims[:, m - 1].astype(np.float64) < floor)
    out_s, out_r = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    if sure.any():
        out_s[sure], out_r[sure] = rescore(q[sure], xb, np.sort(rows[sure], axis=1), k)
    past = np.flatnonzero(bounded & ~sure)  # more near-ties at the cut than candidates
    loop = np.flatnonzero(~bounded)
    if len(past):
        done, tie_s, tie_r = _among_ties(q, xb, whole, floor, past, k)
        out_s[done], out_r[done] = tie_s, tie_r
        loop = np.union1d(loop, np.setdiff1d(past, done))
    if len(loop):
        out_s[loop], out_r[loop] = idx.search(np.ascontiguousarray(q[loop]), k)
    if route is not None:
        route.looped = len(loop) / len(q)
    return out_s, out_r


def _among_ties(q: np.ndarray, xb: np.ndarray, whole: np.ndarray | None, floor: np.ndarray, past: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The queries of `past` (more near-ties at the cut than candidates) re-scored among every row the
    bound allows them, where that is cheaper than the per-pair loop over all rows: (those queries,
    their similarities, their rows). The others are left to the loop."""
    n, d = xb.shape
    # past this many rows, re-scoring a query's rows costs more than the per-pair loop over all of them
    worth = int(n * (PAIR_NS[0] + PAIR_NS[1] * d - SCAN_NS) / (FOUND_NS[0] + FOUND_NS[1] * d))
    cap = min(worth, max(4 * (k + EXTRA), WITHIN_BYTES // (8 * len(past))))
    none = np.zeros(0, np.int64), np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    if cap < k:
        return none
    if whole is None:  # the product did not fit one block: again, for these queries
        near, over = within(products(q[past], xb), floor[past], cap)
    else:
        # every SAMPLE-th row first: a query that seems to have more than `cap` rows is not looked at further
        seen = np.count_nonzero(whole[past, ::SAMPLE] >= floor[past, None], axis=1)
        past = past[seen * SAMPLE <= cap]
        if len(past) == 0:
            return none
        near, over = within([(0, whole[past])], floor[past], cap)
    done = past[~over]
    if len(done) == 0:
        return none
    sims, rows = rescore(q[done], xb, near[~over] if over.any() else near, k)
    return done, sims, rows


def nearest(q: np.ndarray, xb: np.ndarray, k: int, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best rows of a few vectors `xb` that it may see (``hidden[i, j]``: query i may not
    see row j), as a flat search of just those rows would return them: FAISS's per-pair similarities,
    ties by row; (similarities, row numbers into `xb`), -inf and -1 past the rows it sees.

    For the recent window beside an approximate index: a BLAS product's last bits and `argpartition`'s
    pick among ties at the cut would depend on the batch (its shape; the other rows held), so that
    decisions would too. The candidates' bound is `search`'s; a query it cannot vouch for has all the
    rows it sees re-scored (they are few)."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    nq, n = len(q), len(xb)
    m = min(k + EXTRA, n)
    if nq == 0 or n == 0:
        return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
    sims, rows, prod = candidates(q, xb, m, hidden)
    seen = n - np.count_nonzero(hidden, axis=1)
    reach = _reach(q, xb)
    kk = min(k, m)
    floor = sims[:, kk - 1] - reach
    # every row it sees is a candidate, or the bound holds (`search`)
    sure = np.isfinite(q).all(axis=1) & ((seen <= m) | (sims[:, m - 1].astype(np.float64) < floor))
    cand = np.sort(np.where(rows < 0, n, rows), axis=1)  # ascending, the empty slots (n) last
    if not sure.all():
        # the rows the bound allows (all it sees where there is no bound: a product that is not finite
        # is not one the per-pair loop keeps either), in order
        lim = np.where(np.isfinite(floor), floor, np.finfo(np.float32).min)[~sure]
        scored = [(0, prod[~sure])] if prod is not None else products(q[~sure], xb, hidden[~sure])
        near, _ = within(scored, lim, n)
        width = max(m, near.shape[1])
        cand = np.pad(cand, ((0, 0), (0, width - m)), constant_values=n)
        cand[~sure] = np.pad(np.where(near < 0, n, near), ((0, 0), (0, width - near.shape[1])), constant_values=n)
    cand = np.ascontiguousarray(np.where(cand == n, -1, cand))  # -1 ends a query's candidates
    out_s, out_r = rescore(q, xb, cand, kk)
    out_s = np.where(out_r < 0, -np.inf, out_s).astype(np.float32)
    if kk < k:
        out_s = np.pad(out_s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        out_r = np.pad(out_r, ((0, 0), (0, k - kk)), constant_values=-1)
    return out_s, out_r


def _reach(q: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """Per query, 4g: every exact top-k row scores at least the k-th candidate less this in the product
    (module docstring)."""
    d = xb.shape[1]
    gamma = d * _UNIT / (1 - d * _UNIT)
    return 4 * gamma * np.linalg.norm(q, axis=1).astype(np.float64) * _max_norm(xb) * SLACK


def _max_norm(xb: np.ndarray) -> float:
    """The largest row norm."""
    return float(np.sqrt(np.einsum("ij,ij->i", xb, xb).max()))
