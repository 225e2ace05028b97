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
kept scores below that, no row outside the candidates can be in the top k. A query for which it does
not hold (many near-ties at the cut) is searched by the per-pair loop, as are non-finite queries.

Checked on first use for each dimension against the flat search itself (a FAISS build whose two
kernels disagreed would keep the per-pair loop).
"""

from __future__ import annotations

import logging

import faiss
import numpy as np

log = logging.getLogger(__name__)

#: candidates kept beyond k: room for the product's rounding before a query falls back
EXTRA = 8
#: rows below which the per-pair loop is as fast (a product's fixed costs)
MIN_ROWS = 512
#: bytes of similarities one block of the product may hold
BLOCK_BYTES = 32 << 20
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


def candidates(q: np.ndarray, xb: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's m best rows by a BLAS product, best first (similarities, rows)."""
    nq = len(q)
    sims = np.empty((nq, m), np.float32)
    rows = np.empty((nq, m), np.int64)
    heaps = faiss.float_minheap_array_t()  # a min-heap keeps the largest
    heaps.nh, heaps.k, heaps.val, heaps.ids = nq, m, faiss.swig_ptr(sims), faiss.swig_ptr(rows)
    heaps.heapify()
    block = max(1024, BLOCK_BYTES // (4 * max(nq, 1)))
    for s in range(0, len(xb), block):
        prod = np.ascontiguousarray(q @ xb[s:s + block].T)
        heaps.addn(prod.shape[1], faiss.swig_ptr(prod), s, 0, nq)
    heaps.reorder()
    return sims, rows


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


def search(idx: faiss.IndexFlat, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``idx.search(q, k)`` returns (the per-pair loop's similarities, rows and order), for a flat
    inner-product index (`applies`); k <= idx.ntotal."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    n, d = int(idx.ntotal), int(idx.d)
    m = k + EXTRA
    if n < max(m, MIN_ROWS) or len(q) == 0 or not _check(d):
        return idx.search(q, k)
    xb = vectors(idx)
    sims, rows = candidates(q, xb, m)
    # every exact top-k row scores at least the k-th candidate - 4g in the product (module docstring)
    gamma = d * _UNIT / (1 - d * _UNIT)
    reach = 4 * gamma * np.linalg.norm(q, axis=1).astype(np.float64) * _max_norm(xb) * SLACK
    sure = np.isfinite(q).all(axis=1) & (sims[:, m - 1].astype(np.float64) < sims[:, k - 1] - reach)
    out_s, out_r = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
    if sure.any():
        out_s[sure], out_r[sure] = rescore(q[sure], xb, np.sort(rows[sure], axis=1), k)
    if not sure.all():
        out_s[~sure], out_r[~sure] = idx.search(np.ascontiguousarray(q[~sure]), k)
    return out_s, out_r


def _max_norm(xb: np.ndarray) -> float:
    """The largest row norm."""
    return float(np.sqrt(np.einsum("ij,ij->i", xb, xb).max()))
