"""The recent window holds exactly the accepted items a later query can compare with exactly: those at
or after the bound of the newest position added, less what was evicted -- in add order, whatever the
batch sizes, gaps and evictions (it appends and evicts in place, in one buffer)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from curator.index.recent import RecentWindow, bounds

DIM = 3

step = st.tuples(
    st.integers(0, 300),  # the batch's size
    st.integers(0, 4),  # the largest gap between its stream positions
    st.booleans(),  # shuffle the batch's positions (bootstrap items need not ascend)
    st.one_of(st.none(), st.integers(0, 300)),  # then evict before (last position - this)
)


@settings(max_examples=150, deadline=None)
@given(window=st.integers(1, 600), steps=st.lists(step, min_size=1, max_size=25), seed=st.integers(0, 2**16))
def test_the_window_holds_what_a_later_query_can_need_in_add_order(window: int, steps: list, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = RecentWindow(DIM, window)
    held: list[tuple[int, int, np.ndarray]] = []  # (seq, row, vector): the model
    seq = row = 0
    for size, gap, shuffle, evict in steps:
        seqs = seq + np.cumsum(rng.integers(0, gap + 1, size))
        if shuffle:
            seqs = rng.permutation(seqs)
        x = rng.normal(size=(len(seqs), DIM)).astype(np.float32)
        rows = np.arange(row, row + len(seqs))
        w.add(x, rows, seqs)
        if len(seqs):
            seq, row = int(seqs.max()) + 1, row + len(seqs)
            bound = int(bounds(np.array([seqs[-1] + 1]), window)[0])
            held = [h for h in held + list(zip(seqs.tolist(), rows.tolist(), x, strict=True)) if h[0] >= bound]
        if evict is not None:
            w.evict(seq - evict)
            held = [h for h in held if h[0] >= seq - evict]
        assert w.seqs.tolist() == [h[0] for h in held]
        assert w.rows.tolist() == [h[1] for h in held]
        assert np.array_equal(w.vecs, np.array([h[2] for h in held], np.float32).reshape(-1, DIM))


def test_a_query_sees_only_the_items_at_or_after_its_bound() -> None:
    w = RecentWindow(DIM, 128)
    x = np.eye(DIM, dtype=np.float32)[[0, 1, 2, 0]]
    w.add(x, np.arange(4), np.array([300, 301, 302, 303]))
    sims, rows = w.search(np.eye(DIM, dtype=np.float32)[[0, 0]], 2, np.array([0, 302]))
    assert sorted(rows[0].tolist()) == [0, 3] and np.allclose(sims[0], 1.0)
    assert rows[1].tolist().count(3) == 1 and 0 not in rows[1].tolist()
