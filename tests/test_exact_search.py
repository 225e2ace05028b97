"""The product-then-rescore exact search (`curator.index.exact`) returns what FAISS's per-pair flat
search returns -- the same similarities to the last bit, the same rows, ties in the same order --
on data full of exact copies and near-ties: past the candidates, among the rows its bound allows, and
by the per-pair loop itself where it cannot bound them."""

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


@pytest.mark.parametrize("blocks", [1, 3])
def test_ties_past_the_candidates_are_rescored_among_the_rows_the_bound_allows(
        monkeypatch: pytest.MonkeyPatch, blocks: int) -> None:
    rng = np.random.default_rng(0)
    xb = data(rng, 2500, 512, 0.0, 0.0, False)  # (at 512-d re-scoring 101 rows is worth it: `exact.PAIR_NS`)
    xb[1000:1100] = xb[7]  # 101 copies of row 7: more ties at the cut than candidates
    q = np.stack([xb[7], xb[3]])
    idx = flat(xb)
    want = idx.search(q, 10)
    assert exact._check(512)  # (its probe rescores too)
    if blocks > 1:  # the product in blocks of 1,024 rows: the copies straddle two of them
        monkeypatch.setattr(exact, "BLOCK_BYTES", 4 * len(q) * 1024)
    widths: list[tuple[int, int]] = []
    real = exact.rescore
    monkeypatch.setattr(exact, "rescore", lambda qq, xx, cand, k: widths.append(cand.shape) or real(qq, xx, cand, k))
    looped: list[int] = []
    real_search = faiss.IndexFlatIP.search
    monkeypatch.setattr(faiss.IndexFlatIP, "search", lambda self, x, k, **kw: looped.append(len(x)) or
                        real_search(self, x, k, **kw))
    got = exact.search(idx, q, 10)
    # row 3's query: its 18 candidates; row 7's: exactly its 101 copies, no per-pair loop over all rows
    assert widths == [(1, 10 + exact.EXTRA), (1, 101)] and looped == []
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert sorted(got[1][0]) == [7, *range(1000, 1009)]  # of the tied rows, the first ones (as the flat search)

    # more such rows than the memory bound allows: that query takes the per-pair loop
    widths.clear()
    monkeypatch.setattr(exact, "WITHIN_BYTES", 0)  # room for 4 x 18 rows a query, not 101
    got = exact.search(idx, q, 10)
    assert widths == [(1, 10 + exact.EXTRA)] and looped == [1]
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])

    # a query that is not finite never trusts the product
    widths.clear()
    looped.clear()
    bad = np.stack([xb[3], np.full(512, np.nan, np.float32)])
    got = exact.search(idx, bad, 5)
    assert widths == [(1, 5 + exact.EXTRA)] and looped == [1]
    assert np.array_equal(got[1], real_search(idx, bad, 5)[1])


def test_at_few_dimensions_ties_past_the_candidates_go_to_the_per_pair_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # at 32-d the loop costs ~5 ns a row: finding and re-scoring the tied rows would cost more
    rng = np.random.default_rng(3)
    xb = data(rng, 2500, 32, 0.0, 0.0, False)
    xb[1000:1100] = xb[7]
    idx = flat(xb)
    q = np.stack([xb[7], xb[3]])
    want = idx.search(q, 10)
    monkeypatch.setattr(exact, "within", lambda *a: pytest.fail("the tied rows were looked for"))
    got = exact.search(idx, q, 10)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_an_index_whose_queries_mostly_go_on_to_the_loop_skips_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    rows = data(rng, 2000, 32, 0.0, 0.0, False)
    rows[:1000] = rows[rng.integers(0, 5, 1000)]  # five vectors with ~200 copies each, and 1,000 others
    idx = flat(rows)
    tied = np.ascontiguousarray(rows[rng.integers(0, 5, 64)])
    other = np.ascontiguousarray(rows[1000:1064] + np.float32(1e-3))
    products: list[int] = []
    real = exact.candidates
    monkeypatch.setattr(exact, "candidates", lambda q, *a: products.append(len(q)) or real(q, *a))
    route = exact.Route()
    for _ in range(2 * exact.PROBE):
        got = exact.search(idx, tied, 10, route)
        want = idx.search(tied, 10)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # the first search took the product and every query tied on to the loop; then one in PROBE probes
    assert route.looped == 1.0 and products == [64, 64]
    # queries that stop tying: the next search is a probe, it sees it, and the product is back
    exact.search(idx, other, 10, route)
    assert route.looped < exact.LOOP_SHARE and len(products) == 3  # (a few near a copied vector still tie)
    exact.search(idx, other, 10, route)
    assert len(products) == 4


def test_a_flat_vector_index_searches_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    x = data(rng, 3000, 32, 0.1, 0.0, False)
    vi = VectorIndex(32, IndexConfig(kind="flat"))
    vi.add(x, [f"i{j}" for j in range(3000)], np.zeros(3000, np.int64), np.arange(3000))
    calls: list[int] = []
    real = exact.search
    monkeypatch.setattr(exact, "search", lambda idx, q, k, route: calls.append(len(q)) or real(idx, q, k, route))
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


def flat_of_visible(q: np.ndarray, xb: np.ndarray, k: int, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, FAISS's flat search of just the rows it sees (row numbers into xb; -inf, -1 past them)."""
    sims = np.full((len(q), k), -np.inf, np.float32)
    rows = np.full((len(q), k), -1, np.int64)
    for i in range(len(q)):
        vis = np.flatnonzero(~hidden[i])
        if len(vis):
            s, r = flat(np.ascontiguousarray(xb[vis])).search(q[i:i + 1], k)
            ok = r[0] >= 0
            sims[i, ok], rows[i, ok] = s[0, ok], vis[r[0, ok]]
    return sims, rows


@settings(max_examples=40, deadline=None)
@given(d=st.sampled_from([2, 8, 32, 100, 512]), n=st.integers(1, 700), nq=st.integers(1, 30), k=st.integers(1, 30),
       copies=st.sampled_from([0.0, 0.3, 0.8]), seen=st.sampled_from([0.05, 0.5, 1.0]), seed=st.integers(0, 2**16))
def test_the_window_search_is_a_flat_search_of_the_rows_each_query_sees(d: int, n: int, nq: int, k: int, copies: float,
                                                                         seen: float, seed: int) -> None:
    # the recent window's (`RecentWindow.search`): whatever else it holds, and however queries are batched
    rng = np.random.default_rng(seed)
    xb = data(rng, n, d, copies, 0.2, True)
    q = np.concatenate([data(rng, nq, d, 0.0, 0.0, True), xb[rng.integers(0, n, nq)]])
    hidden = rng.random((len(q), n)) > seen
    want_s, want_r = flat_of_visible(q, xb, k, hidden)
    got_s, got_r = exact.nearest(q, xb, k, hidden)
    assert np.array_equal(got_r, want_r)
    assert np.array_equal(got_s, want_s)
    one_s, one_r = exact.nearest(q[:1], xb, k, hidden[:1])  # alone, not in its batch
    assert np.array_equal(one_s, got_s[:1]) and np.array_equal(one_r, got_r[:1])


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(["flat", "ivf-pq"]), d=st.sampled_from([8, 32, 128]), nq=st.integers(2, 60),
       repeats=st.sampled_from([0.0, 0.5, 0.95]), seed=st.integers(0, 2**16))
def test_a_batch_that_repeats_vectors_answers_each_query_as_alone(kind: str, d: int, nq: int, repeats: float,
                                                               seed: int) -> None:
    """A batch that repeats vectors (the same caption, the same image) gets, for every query, what the
    query gets searched alone -- through the exact product and through an IVF with its window."""
    rng = np.random.default_rng(seed)
    n = 1500
    x = data(rng, n, d, 0.3, 0.1, False)
    vi = VectorIndex(d, IndexConfig(kind=kind, ivf_train_size=600, ivf_nprobe=4, auto_window=256, gpu="off"))
    vi.add(x, [f"i{j}" for j in range(n)], np.zeros(n, np.int64), np.arange(n))
    q = np.concatenate([data(rng, nq, d, 0.0, 0.0, False), x[rng.integers(0, n, nq)]])
    copy = rng.random(len(q)) < repeats
    q[copy] = q[rng.integers(0, len(q), len(q))[copy]]
    q[0] = q[1] = np.nan  # repeated NaN rows (their first column compares unequal) are repeats too
    seqs = n - 200 + rng.integers(0, 400, len(q))  # some queries see the window's rows, some do not
    sims, rows = vi.search(q, 10, seqs)
    for i in range(len(q)):
        s1, r1 = vi.search(q[i:i + 1], 10, seqs[i:i + 1])
        assert np.array_equal(r1, rows[i:i + 1]) and np.array_equal(s1, sims[i:i + 1], equal_nan=True), i


def test_a_batch_without_repeats_is_searched_as_given() -> None:
    from curator.index.vector_index import distinct

    rng = np.random.default_rng(3)
    q = data(rng, 256, 64, 0.0, 0.0, False)
    assert distinct(q) is None
    q[5, 0] = q[9, 0]  # equal in the first column only
    assert distinct(q) is None
    q[[7, 200]] = q[3]
    q[11, 0] = -0.0
    q[12] = q[11]
    q[12, 0] = 0.0  # equal to row 11 as numbers, not bit for bit: searched apart (no harm, no gain)
    once = distinct(q)
    assert once is not None
    u, back = once
    assert len(u) == 256 - 2 and np.array_equal(u[back], q)
