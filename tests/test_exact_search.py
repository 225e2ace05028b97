"""The product-then-rescore exact search (`curator.index.exact`) returns what FAISS's per-pair flat
search returns -- the same similarities to the last bit, the same rows, ties in the same order --
on data full of exact copies and near-ties, and takes the per-pair loop itself where its bound
cannot vouch for the candidates."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curator.index.exact as exact
from curator.config import IndexConfig
from curator.index.threads import configure_process
from curator.index.vector_index import VectorIndex

configure_process()  # the per-pair loop, as every process that holds an index uses


def flat(xb: np.ndarray) -> faiss.IndexFlatIP:
    idx = faiss.IndexFlatIP(xb.shape[1])
    idx.add(xb)
    return idx


def data(rng: np.random.Generator, n: int, d: int, copies: float, near: float, scale: bool) -> np.ndarray:
    """Unit rows (or rows of norm 0.5-2 with `scale`), with a share of exact copies of earlier rows and
    a share of rows a rounding error away from one."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src = rng.integers(0, max(1, n // 4), n)
    dup = rng.random(n) < copies
    x[dup] = x[src[dup]]
    tweak = rng.random(n) < near
    x[tweak] = x[src[tweak]] + np.float32(1e-7) * rng.standard_normal((int(tweak.sum()), d)).astype(np.float32)
    if scale:
        x *= rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)
    return np.ascontiguousarray(x)


@settings(max_examples=40, deadline=None)
@given(d=st.sampled_from([1, 2, 3, 8, 17, 32, 33, 64, 100, 512]), n=st.integers(exact.MIN_ROWS, 2500),
       nq=st.integers(1, 40), k=st.integers(1, 40), copies=st.sampled_from([0.0, 0.1, 0.5]),
       near=st.sampled_from([0.0, 0.2]), scale=st.booleans(), seed=st.integers(0, 2**16))
def test_the_answer_is_the_per_pair_loops_to_the_last_bit(d: int, n: int, nq: int, k: int, copies: float,
                                                          near: float, scale: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xb = data(rng, n, d, copies, near, scale)
    # queries: new vectors, stored rows themselves (ties at the top) and a rounding error from them
    q = np.concatenate([data(rng, nq, d, 0.0, 0.0, scale), xb[rng.integers(0, n, nq)],
                        xb[rng.integers(0, n, nq)] + np.float32(1e-7)])
    idx = flat(xb)
    want_s, want_r = idx.search(q, k)
    got_s, got_r = exact.search(idx, q, k)
    assert np.array_equal(got_s, want_s)
    assert np.array_equal(got_r, want_r)


def test_candidates_the_bound_cannot_vouch_for_go_to_the_per_pair_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    xb = data(rng, 2000, 16, 0.0, 0.0, False)
    xb[1000:1100] = xb[7]  # 101 copies of row 7: more ties at the cut than candidates
    q = np.stack([xb[7], xb[3]])
    rescored: list[int] = []
    assert exact._check(16)  # (its probe rescores too)
    real = exact.rescore
    monkeypatch.setattr(exact, "rescore", lambda qq, *a: rescored.append(len(qq)) or real(qq, *a))
    idx = flat(xb)
    want = idx.search(q, 10)
    got = exact.search(idx, q, 10)
    assert rescored == [1]  # row 3's candidates were rescored; row 7's query was searched pair by pair
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert sorted(got[1][0]) == [7, *range(1000, 1009)]  # of the tied rows, the first ones (as the flat search)
    # a query that is not finite never trusts the product
    rescored.clear()
    bad = np.stack([xb[3], np.full(16, np.nan, np.float32)])
    got = exact.search(idx, bad, 5)
    assert rescored == [1]
    assert np.array_equal(got[1], idx.search(bad, 5)[1])


def test_a_flat_vector_index_searches_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = data(rng, 3000, 32, 0.1, 0.0, False)
    vi = VectorIndex(32, IndexConfig(kind="flat"))
    vi.add(x, [f"i{j}" for j in range(3000)], np.zeros(3000, np.int64), np.arange(3000))
    calls: list[int] = []
    real = exact.search
    monkeypatch.setattr(exact, "search", lambda idx, q, k: calls.append(len(q)) or real(idx, q, k))
    q = x[:64] + np.float32(1e-3)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims, rows = vi.search(q, 8)
    assert calls == [64]
    want_s, want_r = flat(x).search(q, 8)
    assert np.array_equal(rows, want_r) and np.array_equal(sims, want_s)


def test_small_indexes_keep_the_per_pair_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    idx = flat(data(rng, exact.MIN_ROWS - 1, 8, 0.0, 0.0, False))
    monkeypatch.setattr(exact, "candidates", lambda *a: pytest.fail("a small index took the product"))
    q = data(rng, 4, 8, 0.0, 0.0, False)
    assert np.array_equal(exact.search(idx, q, 3)[1], idx.search(q, 3)[1])
