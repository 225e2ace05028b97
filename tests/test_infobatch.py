"""Properties of the InfoBatch sampler: unbiased, exact, annealed, rank-consistent, resumable."""

from __future__ import annotations

import io
import math
import os
import random
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from curator.train import (
    MULTI_BAND,
    IndexedCollate,
    IndexedDataset,
    InfoBatchSampler,
    TimedSampler,
    indexed_loader,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _below(scores: np.ndarray) -> np.ndarray:
    """The published rule's prunable set: strictly below the mean of all scores."""
    s = np.asarray(scores, dtype=np.float32)
    return s < s.mean(dtype=np.float64)


def _scored(scores: np.ndarray, **kw: object) -> InfoBatchSampler:
    s = InfoBatchSampler(len(scores), **kw)  # type: ignore[arg-type]
    s.update(np.arange(len(scores)), torch.as_tensor(scores, dtype=torch.float32))
    return s


# ------------------------------------------------------------------ unbiasedness
def _linear_model_grads(rng: np.random.Generator, scores: np.ndarray, d: int = 3) -> np.ndarray:
    """Per-sample gradients of 0.5 * (x.theta - y)^2 for a linear model whose losses are `scores`."""
    x = rng.normal(size=(scores.size, d)) + 0.5
    res = np.sqrt(2.0 * scores) * rng.choice([-1.0, 1.0], size=scores.size)  # loss_i = 0.5 res_i^2 = score_i
    return res[:, None] * x  # d/dtheta of the loss


def _monte_carlo(s: InfoBatchSampler, grads: np.ndarray, draws: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weighted, unweighted = [], []
    for e in range(draws):
        s.set_epoch(e)
        kept = s.kept_indices()
        w = s.weights(kept).numpy().astype(np.float64)
        weighted.append((w[:, None] * grads[kept]).sum(0))
        unweighted.append(grads[kept].sum(0))
    return np.array(weighted), np.array(unweighted), grads.sum(0)


def test_expected_weighted_gradient_equals_full_gradient() -> None:
    rng = np.random.default_rng(0)
    # 400 low-loss samples (below the mean) and 200 high-loss ones: floor((1 - 0.5) * 400) = 200 exactly
    scores = np.concatenate([rng.uniform(0.01, 1.0, 400), rng.uniform(10.0, 11.0, 200)]).astype(np.float32)
    grads = _linear_model_grads(rng, scores)
    draws = 2000
    s = _scored(scores, num_epochs=draws, prune_ratio=0.5, delta=1.0, seed=5)
    weighted, unweighted, full = _monte_carlo(s, grads, draws)
    assert _below(scores).sum() == 400
    se = weighted.std(0, ddof=1) / math.sqrt(draws)
    assert (se > 0).all()  # the draws really differ
    assert np.all(np.abs(weighted.mean(0) - full) < 5 * se), (weighted.mean(0), full, se)
    # the test has power: without the 1/(1-r) rescale the estimate is far off
    se_u = unweighted.std(0, ddof=1) / math.sqrt(draws)
    assert np.any(np.abs(unweighted.mean(0) - full) > 20 * se_u)


def test_multi_band_expected_gradient_equals_full_gradient() -> None:
    rng = np.random.default_rng(1)
    scores = np.sort(rng.exponential(1.0, 1000)).astype(np.float32) + np.float32(1e-3) * np.arange(1000, dtype=np.float32)
    grads = _linear_model_grads(rng, scores)
    draws = 1500
    s = _scored(scores, num_epochs=draws, delta=1.0, seed=2, bands=MULTI_BAND)
    s.set_epoch(0)
    w = s.weights(np.arange(1000)).numpy()
    kept = np.zeros(1000, dtype=bool)
    kept[s.kept_indices()] = True
    # 200 below the 20th percentile keep 25% = 50; 650 in the 20th-85th band keep 50% = 325; 150 above all
    assert kept[:200].sum() == 50 and kept[200:850].sum() == 325 and kept[850:].all()
    assert set(w[:200][kept[:200]]) == {4.0} and set(w[200:850][kept[200:850]]) == {2.0}
    assert set(w[850:]) == {1.0} and set(w[~kept]) == {1.0}
    weighted, _, full = _monte_carlo(s, grads, draws)
    se = weighted.std(0, ddof=1) / math.sqrt(draws)
    assert np.all(np.abs(weighted.mean(0) - full) < 5 * se)


# ------------------------------------------------------------------ exact counts and weights
scores_st = st.lists(st.floats(0.0, 50.0, allow_nan=False, width=32), min_size=1, max_size=300)


@FAST
@given(scores=scores_st, pct=st.integers(0, 90), seed=st.integers(0, 2**32), shuffle=st.booleans())
def test_kept_count_is_exact_and_weights_are_right(scores: list[float], pct: int, seed: int,
                                                  shuffle: bool) -> None:
    sc = np.array(scores, dtype=np.float32)
    n = sc.size
    s = _scored(sc, num_epochs=3, prune_ratio=pct / 100, seed=seed, shuffle=shuffle)
    s.set_epoch(1)
    below = _below(sc)
    n_below = int(below.sum())
    expect_kept_below = math.floor((1 - Fraction(pct, 100)) * n_below)
    order = s.kept_indices()
    assert len(set(order.tolist())) == order.size  # without replacement
    kept = np.zeros(n, dtype=bool)
    kept[order] = True
    assert kept[below].sum() == expect_kept_below
    assert kept[~below].all()  # at or above the mean: always kept
    assert order.size == expect_kept_below + (n - n_below) == len(s) == len(list(s))
    if not shuffle:
        assert np.all(np.diff(order) > 0)
    w = s.weights(np.arange(n)).numpy()
    assert np.allclose(w[kept & below], 1 / (1 - pct / 100), rtol=1e-6)
    assert np.all(w[~(kept & below)] == 1.0)
    st_ = s.stats()
    assert st_.pruned_this_epoch == n - order.size and st_.kept_this_epoch == order.size


@FAST
@given(scores=st.lists(st.floats(0.0, 50.0, allow_nan=False, width=32), min_size=1, max_size=300),
       seed=st.integers(0, 2**32))
def test_multi_band_counts_are_exact(scores: list[float], seed: int) -> None:
    sc = np.array(scores, dtype=np.float32)
    s = _scored(sc, num_epochs=3, seed=seed, bands=MULTI_BAND)
    s.set_epoch(1)
    kept = np.zeros(sc.size, dtype=bool)
    kept[s.kept_indices()] = True
    w = s.weights(np.arange(sc.size)).numpy()
    q20, q85 = np.quantile(sc.astype(np.float64), [0.2, 0.85])
    low, mid = sc < q20, (sc >= q20) & (sc < q85)
    assert kept[low].sum() == math.floor(low.sum() / 4)
    assert kept[mid].sum() == math.floor(mid.sum() / 2)
    assert kept[~(low | mid)].all()
    assert np.all(w[kept & low] == 4.0) and np.all(w[kept & mid] == 2.0)
    assert np.all(w[~kept | ~(low | mid)] == 1.0)


def test_epoch_zero_prunes_nothing_without_initial_scores() -> None:
    s = InfoBatchSampler(50, num_epochs=4)
    s.set_epoch(0)
    assert len(s) == 50 and s.stats().pruned_this_epoch == 0
    # a sample never trained on is kept, whatever the others' losses
    s.update(np.arange(1, 50), torch.linspace(0.0, 5.0, 49))
    s.set_epoch(1)
    assert 0 in set(s.kept_indices().tolist())


# ------------------------------------------------------------------ annealing
@pytest.mark.parametrize("c,delta,pruning", [(90, 0.875, 78), (100, 0.29, 29), (10, 0.3, 3), (7, 1.0, 7), (5, 0.0, 0)])
def test_pruning_epochs_is_floor_delta_c(c: int, delta: float, pruning: int) -> None:
    assert InfoBatchSampler(10, c, delta=delta).pruning_epochs == pruning


@settings(max_examples=200, deadline=None)
@given(c=st.integers(1, 400), permille=st.integers(0, 1000))
def test_pruning_epochs_matches_exact_arithmetic(c: int, permille: int) -> None:
    s = InfoBatchSampler(3, c, delta=permille / 1000)
    assert s.pruning_epochs == math.floor(Fraction(permille, 1000) * c)


def test_annealing_uses_all_data_with_weight_one_for_c90_delta0875() -> None:
    n, c = 500, 90
    rng = np.random.default_rng(3)
    base = rng.exponential(1.0, n)  # right-skewed losses, as in training
    s = InfoBatchSampler(n, num_epochs=c, prune_ratio=0.5, delta=0.875, seed=11)
    assert s.pruning_epochs == 78
    had_weight_two: set[int] = set()
    kept_counts = []
    for e in range(c):
        s.set_epoch(e)
        order = list(s)
        assert len(order) == len(s)
        kept_counts.append(len(order))
        idx = np.array(order)
        w = s.weights(idx).numpy()
        if e < 78:
            had_weight_two |= set(idx[w == 2.0].tolist())
        else:
            assert sorted(order) == list(range(n)), e
            assert np.all(s.weights(np.arange(n)).numpy() == 1.0), e
        s.step(torch.from_numpy(idx), torch.as_tensor(base[idx] * (1 + 0.1 * np.sin(e + idx)), dtype=torch.float32))
    assert len(had_weight_two) > 100  # these all train with weight 1 from epoch 78 on (checked above)
    assert all(k < n for k in kept_counts[1:78]) and kept_counts[0] == n
    stats = s.stats()
    assert stats.total_pruned == sum(n - k for k in kept_counts)
    assert stats.saving == pytest.approx(sum(n - k for k in kept_counts) / (c * n))
    assert stats.saving_projected == pytest.approx(stats.saving)
    assert 0.2 < stats.saving < 0.5 * 78 / 90  # well under r, as reproductions report


# ------------------------------------------------------------------ epoch lengths, no re-pruning on access
@FAST
@given(n=st.integers(1, 120), replicas=st.integers(1, 4), drop_last=st.booleans(), batch=st.integers(1, 9),
       loader_drop_last=st.booleans(), seed=st.integers(0, 1000))
def test_len_is_true_before_iteration(n: int, replicas: int, drop_last: bool, batch: int,
                                      loader_drop_last: bool, seed: int) -> None:
    losses = torch.as_tensor(np.random.default_rng(seed).exponential(1.0, n), dtype=torch.float32)
    per_rank = []
    for rank in range(replicas):
        s = InfoBatchSampler(n, 4, seed=seed, num_replicas=replicas, rank=rank, drop_last=drop_last)
        s.update(torch.arange(n), losses)
        s.set_epoch(1)
        loader = DataLoader(IndexedDataset(list(range(n))), batch_size=batch, sampler=s,
                            drop_last=loader_drop_last)
        expect_len, expect_batches = len(s), len(loader)  # asked before iterating
        batches = [b for b in loader]
        assert sum(len(b[0]) for b in batches) == (expect_batches * batch if loader_drop_last else expect_len)
        assert len(batches) == expect_batches
        assert len(list(s)) == expect_len
        per_rank.append(list(s))
        kept = s.kept_indices().tolist()
    assert len({len(p) for p in per_rank}) == 1  # equal per-rank lengths, as DDP needs
    flat = [i for p in per_rank for i in p]
    if drop_last:
        assert len(set(flat)) == len(flat) and set(flat) <= set(kept)
    else:
        assert set(flat) == set(kept)


@pytest.mark.filterwarnings("ignore:InfoBatchSampler iterated again")
def test_repeated_access_does_not_reprune() -> None:
    s = _scored(np.random.default_rng(0).exponential(1.0, 200).astype(np.float32), num_epochs=5, seed=4)
    s.set_epoch(1)
    first, n = list(s), len(s)
    for _ in range(3):
        assert list(s) == first and len(s) == n
    s.update(np.arange(200), torch.zeros(200))  # scores change mid-epoch...
    s.set_epoch(1)  # ...but the epoch's draw is made once
    assert list(s) == first and len(s) == n
    s.set_epoch(2)
    assert list(s) != first  # a new epoch draws anew


def test_iterating_again_without_set_epoch_warns() -> None:
    s = InfoBatchSampler(20, 3)
    idx = list(s)
    s.step(torch.tensor(idx), torch.rand(20))
    with pytest.warns(UserWarning, match="set_epoch"):
        list(s)


def test_same_seed_same_plan_different_seed_different_plan() -> None:
    sc = np.random.default_rng(0).exponential(1.0, 300).astype(np.float32)
    a, b, c = (_scored(sc, num_epochs=3, seed=k) for k in (1, 1, 2))
    for x in (a, b, c):
        x.set_epoch(1)
    assert list(a) == list(b)
    assert list(a) != list(c)


def test_global_rngs_are_untouched() -> None:
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(123)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    s = InfoBatchSampler(300, 5, seed=9, bands=MULTI_BAND, initial_scores=np.linspace(0, 1, 300))
    for e in range(5):
        s.set_epoch(e)
        idx = torch.tensor(list(s))
        s.step(idx, idx.float() / 300)
    s.load_state_dict(s.state_dict())
    after = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert before[0] == after[0]
    assert all(np.array_equal(x, y) for x, y in zip(before[1], after[1], strict=True))
    assert torch.equal(before[2], after[2])


# ------------------------------------------------------------------ the training-step API
def test_step_records_raw_losses_and_returns_weighted_mean() -> None:
    s = _scored(np.array([0.1, 0.2, 5.0, 6.0], dtype=np.float32), num_epochs=3, prune_ratio=0.5, shuffle=False)
    s.set_epoch(1)  # below mean: {0, 1}; one of them kept with weight 2
    idx = torch.tensor(list(s))
    assert len(idx) == 3
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = s.step(idx, losses)
    w = s.weights(idx)
    assert sorted(w.tolist()) == [1.0, 1.0, 2.0]
    assert loss.item() == pytest.approx(float((losses.detach() * w).mean()))
    loss.backward()
    assert torch.allclose(losses.grad, w / 3)
    assert np.allclose(s.scores()[idx.numpy()], [1.0, 2.0, 3.0])  # raw, not weighted


@pytest.mark.parametrize("batch", [64, 45, 7])
def test_step_gradient_is_bit_for_bit_that_of_the_weighted_mean(batch: int) -> None:
    rng = np.random.default_rng(batch)
    s = _scored(rng.exponential(1.0, 300).astype(np.float32), num_epochs=3, prune_ratio=0.3, seed=1)
    s.set_epoch(1)
    idx = torch.tensor(list(s)[:batch])
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(batch))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    loss = s.step(idx, (a ** 2).sum(1))
    ref = ((b ** 2).sum(1) * s.weights(idx)).mean()  # the textbook form
    loss.backward()
    ref.backward()
    assert set(s.weights(idx).tolist()) == {1.0, np.float32(1 / 0.7)}  # a batch with both weights
    assert torch.equal(a.grad, b.grad)  # the same updates, so the same training run
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_step_accepts_other_index_and_loss_types() -> None:
    s = _scored(np.linspace(0.1, 5.0, 20, dtype=np.float32), num_epochs=3, shuffle=False)
    s.set_epoch(1)
    kept = s.kept_indices()[:4]
    expect = float((torch.arange(1.0, 5.0) * s.weights(kept)).mean())
    strided = torch.from_numpy(np.repeat(kept, 2))[::2]  # not contiguous
    for indices in (kept, kept.tolist(), torch.from_numpy(kept).int(), strided):
        assert s.step(indices, torch.arange(1.0, 5.0)).item() == pytest.approx(expect)
    loss64 = s.step(torch.from_numpy(kept), torch.arange(1.0, 5.0, dtype=torch.float64))
    assert loss64.dtype == torch.float64 and loss64.item() == pytest.approx(expect)
    assert np.allclose(s.scores()[kept], [1.0, 2.0, 3.0, 4.0])  # the last record of each sample


def test_indices_modified_in_place_before_they_are_applied_are_an_error() -> None:
    s = InfoBatchSampler(10, 3)
    s.set_epoch(0)
    buf = torch.tensor([0, 1, 2])
    s.step(buf, torch.tensor([1.0, 2.0, 3.0]))
    buf.copy_(torch.tensor([3, 4, 5]))  # a reused index buffer: the recorded step would now read 3, 4, 5
    with pytest.raises(RuntimeError, match="modified in place"):
        s.set_epoch(1)
    assert not s.scores().any()  # nothing was attributed to the wrong samples


def test_nonfinite_losses_are_skipped_with_a_warning() -> None:
    s = InfoBatchSampler(4, 3)
    s.update([0, 1, 2, 3], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    s.update([0, 1], torch.tensor([float("nan"), float("inf")]))
    with pytest.warns(UserWarning, match="non-finite"):  # when the recorded losses are applied
        assert s.scores().tolist() == [1.0, 2.0, 3.0, 4.0]
    assert s.stats().nonfinite_losses_skipped == 2


def test_initial_scores_prune_epoch_zero_and_rank_untrained_samples() -> None:
    n = 200
    gain = np.random.default_rng(0).uniform(0.0, 1.0, n)  # e.g. InfoGrowth gain_norm from the curated set
    s = InfoBatchSampler(n, 10, prune_ratio=0.5, initial_scores=gain, seed=1)
    s.set_epoch(0)
    below = gain < gain.mean()
    kept = np.zeros(n, dtype=bool)
    kept[s.kept_indices()] = True
    assert kept[below].sum() == below.sum() // 2 and kept[~below].all()
    # losses on another scale, increasing with gain; pruned items keep only their gain
    idx = np.flatnonzero(kept)
    s.update(idx, torch.as_tensor(100.0 + 10.0 * gain[idx], dtype=torch.float32))
    s.set_epoch(1)
    pruned = np.setdiff1d(np.arange(n), s.kept_indices())
    # untrained items were placed by their gain rank among the real losses rather than compared raw
    # (0..1 against 100..110, which would make them alone the below-mean set): the rule then prunes
    # about as many as it would with every loss known
    informed = 100.0 + 10.0 * gain
    assert abs(pruned.size - np.count_nonzero(informed < informed.mean()) // 2) <= 5
    assert gain[pruned].max() < np.quantile(gain, 0.7)


# ------------------------------------------------------------------ resume
def _losses(idx: np.ndarray, epoch: int) -> torch.Tensor:
    return torch.as_tensor(np.exp(np.sin(idx * 0.37 + epoch)) + 0.01 * epoch, dtype=torch.float32)


def _run_epoch(s: InfoBatchSampler, epoch: int, batch: int = 16, stop_after: int | None = None) -> list[int]:
    s.set_epoch(epoch)
    order = list(s)
    for b, start in enumerate(range(0, len(order), batch)):
        if stop_after is not None and b == stop_after:
            break
        idx = np.array(order[start:start + batch])
        s.step(torch.from_numpy(idx), _losses(idx, epoch))
    return order


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # a plain tensor checkpoint: no pickled numpy


def test_resume_from_state_dict_prunes_identically() -> None:
    kw = dict(num_samples=250, num_epochs=12, prune_ratio=0.5, delta=0.875)
    a = InfoBatchSampler(**kw, seed=3)  # type: ignore[arg-type]
    for e in range(4):
        _run_epoch(a, e)
    b = InfoBatchSampler(**kw, seed=999)  # type: ignore[arg-type] # the seed comes from the state
    b.load_state_dict(_roundtrip(a.state_dict()))
    assert b.seed == 3
    for e in range(4, 12):
        oa, ob = _run_epoch(a, e), _run_epoch(b, e)
        assert oa == ob and len(a) == len(b)
        assert torch.equal(a.weights(np.arange(250)), b.weights(np.arange(250)))
        assert np.array_equal(a.scores(), b.scores())
    assert a.stats() == b.stats()


def test_resume_mid_epoch_keeps_the_epochs_draw() -> None:
    kw = dict(num_samples=250, num_epochs=6, seed=5)
    a = InfoBatchSampler(**kw)  # type: ignore[arg-type]
    for e in range(2):
        _run_epoch(a, e)
    order = _run_epoch(a, 2, stop_after=5)  # interrupted: scores already moved since the draw
    b = InfoBatchSampler(**kw)  # type: ignore[arg-type]
    b.load_state_dict(_roundtrip(a.state_dict()))
    b.set_epoch(2)
    assert list(b) == order and torch.equal(a.weights(order), b.weights(order))
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)


def test_load_state_dict_rejects_other_settings() -> None:
    state = InfoBatchSampler(10, 5).state_dict()
    with pytest.raises(ValueError, match="state is for 10 samples, this sampler has 11"):
        InfoBatchSampler(11, 5).load_state_dict(state)
    with pytest.raises(ValueError, match="num_epochs=5/6"):
        InfoBatchSampler(10, 6).load_state_dict(state)
    InfoBatchSampler(10, 6).load_state_dict(state, strict=False)


# ------------------------------------------------------------------ loaders: wrapped datasets, collate, prefetch
class _Base(Dataset):
    """Item i carries i in its data, and workers finish in a scrambled order."""

    def __len__(self) -> int:
        return 200

    def __getitem__(self, i: int) -> dict:
        time.sleep(((i * 7919) % 5) * 2e-4)
        return {"x": torch.tensor([float(i)]), "tag": f"item{i}"}


class _Batch:
    def __init__(self, x: torch.Tensor, tags: list[str]) -> None:
        self.x, self.tags = x, tags


def _collate(items: list[dict]) -> _Batch:
    return _Batch(torch.stack([it["x"] for it in items]), [it["tag"] for it in items])


def _loss_of(base_index: torch.Tensor) -> torch.Tensor:
    return ((base_index * 37) % 101) / 10 + 0.1


def test_prefetching_loader_with_subset_and_custom_collate_attributes_losses_right() -> None:
    base_positions = np.random.default_rng(0).permutation(200)[:150]
    ds = Subset(_Base(), base_positions.tolist())
    s = InfoBatchSampler(len(ds), num_epochs=3, seed=2)
    loader = indexed_loader(ds, s, collate_fn=_collate, batch_size=7, num_workers=2, prefetch_factor=4,
                            in_order=False)
    seen: set[int] = set()
    for e in range(3):
        s.set_epoch(e)
        n_batches, n_items = len(loader), len(s)
        got_b = got_i = 0
        for indices, batch in loader:
            assert isinstance(batch, _Batch) and indices.dtype == torch.int64
            loss = s.step(indices, _loss_of(batch.x[:, 0]))  # the loss comes from the data itself
            assert loss.ndim == 0
            got_b, got_i = got_b + 1, got_i + len(indices)
            seen |= set(indices.tolist())
        assert (got_b, got_i) == (n_batches, n_items)
    assert len(seen) == 150
    pos = np.array(sorted(seen))
    expected = _loss_of(torch.as_tensor(base_positions[pos], dtype=torch.float32)).numpy()
    assert np.allclose(s.scores()[pos], expected)  # each score belongs to the sample that produced it
    assert s.stats().total_pruned > 0


def test_indexed_dataset_with_default_collate_and_batched_fetch() -> None:
    ds = IndexedDataset(Subset(list(range(100, 120)), list(range(19, -1, -1))))
    loader = DataLoader(ds, batch_size=4, sampler=InfoBatchSampler(20, 2, shuffle=False))
    idx, items = next(iter(loader))
    assert idx.tolist() == [0, 1, 2, 3] and items.tolist() == [119, 118, 117, 116]
    idx2, items2 = IndexedCollate()(ds.__getitems__([5, 6]))
    assert idx2.dtype == torch.int64 and idx2.tolist() == [5, 6] and items2.tolist() == [114, 113]


# ------------------------------------------------------------------ distributed: two real gloo ranks
BIG = 2**24 + 5  # beyond float32's exact integers


def _rank_losses(idx: np.ndarray, epoch: int, step: int, rank: int) -> torch.Tensor:
    """Losses that differ by step and rank (so the order records apply in matters), with a few non-finite."""
    out = _losses(idx, epoch) + 1e-3 * step + 1e-4 * rank
    if (epoch, step, rank) == (1, 0, 1):
        out[0] = float("nan")
    if (epoch, step, rank) == (3, 1, 0):
        out[-1] = float("inf")
    return out


def _per_step_gather(ref: np.ndarray, idx: np.ndarray, losses: torch.Tensor) -> int:
    """The old per-step exchange, as a reference: all-gather (index, loss) and apply in rank order."""
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(2)]
    torch.distributed.all_gather(sizes, torch.tensor([idx.size]))
    m = int(max(sizes))
    pad_i, pad_l = torch.zeros(m, dtype=torch.int64), torch.zeros(m)
    pad_i[: idx.size], pad_l[: idx.size] = torch.from_numpy(idx), losses
    every_i, every_l = [torch.empty_like(pad_i) for _ in range(2)], [torch.empty_like(pad_l) for _ in range(2)]
    torch.distributed.all_gather(every_i, pad_i)
    torch.distributed.all_gather(every_l, pad_l)
    gi = torch.cat([t[: int(n)] for t, n in zip(every_i, sizes, strict=True)]).numpy()
    gl = torch.cat([t[: int(n)] for t, n in zip(every_l, sizes, strict=True)]).numpy()
    ok = np.isfinite(gl)
    ref[gi[ok]] = gl[ok]
    return int((~ok).sum())


def _train(s: InfoBatchSampler, rank: int, epochs: range, first_step: int = 0,
           on_step: object = None) -> list[dict]:
    out = []
    for e in epochs:
        s.set_epoch(e)
        mine = list(s)
        out.append({"kept": s.kept_indices().tolist(), "mine": mine, "len": len(s),
                    "weights": s.weights(np.arange(s.num_samples)).numpy().copy()})
        for step, start in enumerate(range(0, len(mine), 8)):  # each rank only sees its own share
            if e == epochs[0] and step < first_step:
                continue
            idx = np.array(mine[start:start + 8])
            losses = _rank_losses(idx, e, step, rank)
            s.step(torch.from_numpy(idx), losses)
            if on_step is not None:
                on_step(e, step, idx, losses)  # type: ignore[operator]
        s.sync()  # the epoch's one exchange (set_epoch would make it otherwise)
        out[-1]["scores"] = s.scores()
    return out


def _dist_worker(rank: int, tmp: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    try:
        s = InfoBatchSampler(103, num_epochs=6, seed=7)  # num_replicas and rank from torch.distributed
        assert (s.num_replicas, s.rank) == (2, rank)
        drawn_on, draw = [], s._draw

        def tracked_draw(epoch: int) -> object:
            drawn_on.append((epoch, threading.current_thread().name))
            return draw(epoch)

        s._draw = tracked_draw  # type: ignore[method-assign]
        ref = np.zeros(103, dtype=np.float32)
        skipped = [0]

        def on_step(e: int, step: int, idx: np.ndarray, losses: torch.Tensor) -> None:
            skipped[0] += _per_step_gather(ref, idx, losses)
            if (e, step) == (2, 3):  # a mid-epoch checkpoint: exchange first, then rank 0 saves
                s.sync()
                if rank == 0:
                    torch.save(s.state_dict(), f"{tmp}/mid.pt")

        epochs = _train(s, rank, range(6), on_step=on_step)
        stats = s.stats()

        # one sample recorded by both ranks: rank 1 at step 0, rank 0 at step 1 (rank 0's is the later
        # one, though rank 0 comes first); another by both in the same step (rank 1's is the later one)
        order, order_ref = InfoBatchSampler(10, 2), np.zeros(10, dtype=np.float32)
        for step, per_rank in enumerate([([6], [5]), ([5], [7]), ([8], [8])]):
            idx, losses = np.array(per_rank[rank]), torch.tensor([1.0 + 2 * step + rank])
            order.step(torch.from_numpy(idx), losses)
            _per_step_gather(order_ref, idx, losses)
        order.sync()

        # resumed from the mid-epoch checkpoint on both ranks: the rest of epoch 2, then epochs 3-5
        torch.distributed.barrier()
        resumed = InfoBatchSampler(103, num_epochs=6, seed=7)
        resumed.load_state_dict(torch.load(f"{tmp}/mid.pt", weights_only=True))
        rest = _train(resumed, rank, range(2, 6), first_step=4)

        # collectives the sampler makes: one check at the first draw, none per step, one at the epoch end
        # (started by sync() on a background thread, landed by the next set_epoch)
        gathers, real_all_gather = [0], torch.distributed.all_gather

        def counting_all_gather(*args: object, **kwargs: object) -> object:
            gathers[0] += 1
            return real_all_gather(*args, **kwargs)  # type: ignore[arg-type]

        torch.distributed.all_gather = counting_all_gather  # type: ignore[assignment]
        counted = InfoBatchSampler(103, num_epochs=6, seed=7)
        collectives = []

        def count(call: object) -> None:
            before = gathers[0]
            call()  # type: ignore[operator]
            collectives.append(gathers[0] - before)

        def steps() -> None:
            mine = list(counted)
            for start in range(0, len(mine), 8):
                batch = torch.tensor(mine[start:start + 8])
                counted.step(batch, torch.rand(len(batch)))

        def epoch_end() -> None:
            counted.sync()
            counted.set_epoch(1)

        for call in (lambda: counted.set_epoch(0), steps, epoch_end):
            count(call)
        torch.distributed.all_gather = real_all_gather

        pending = ""
        try:
            resumed.step(torch.tensor([rank]), torch.tensor([1.0]))
            resumed.state_dict()
        except RuntimeError as err:
            pending = str(err)
        resumed.sync()
        resumed.state_dict()  # fine once exchanged

        big = InfoBatchSampler(BIG, 2)
        idx = [BIG - 4] if rank == 0 else [BIG - 3, BIG - 2]  # unequal batch sizes across ranks
        big.update(idx, torch.tensor([7.0] if rank == 0 else [8.0, 9.0]))
        big.sync()
        tail = big.scores()[BIG - 5:].tolist()
        # sync() does not wait for the other ranks: rank 1 reaches it 1 s after rank 0, whose sync()
        # returns at once; rank 0's next set_epoch waits for (lands) the exchange, the draw itself does not
        late = TimedSampler(10, 2)
        late.set_epoch(0)
        late.step(torch.tensor([rank]), torch.tensor([1.0 + rank]))
        torch.distributed.barrier()
        if rank == 1:
            time.sleep(1.0)
        before = dict(late.part_seconds)
        late.sync()
        late.set_epoch(1)
        late_parts = {k: v - before[k] for k, v in late.part_seconds.items()}
        late_scores = late.scores()[:2].tolist()
        snapshot = late.state_dict()
        late.step(torch.tensor([2 + rank]), torch.tensor([5.0]))
        late.sync()  # an exchange in flight, which the loaded state replaces: it must not land on top of it
        late.load_state_dict(snapshot)
        replaced = late.scores()[:4].tolist()

        mismatch = ""
        try:
            InfoBatchSampler(10, 3, seed=rank).set_epoch(1)
        except RuntimeError as err:
            mismatch = str(err)
        torch.save({"epochs": epochs, "ref": ref, "skipped": skipped[0], "stats": stats, "rest": rest,
                    "order": order.scores(), "order_ref": order_ref, "collectives": collectives,
                    "pending": pending, "tail": tail, "late_parts": late_parts, "late_scores": late_scores,
                    "replaced": replaced,
                    "drawn_on": drawn_on,
                    "mismatch": mismatch}, f"{tmp}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_prune_identically_and_share_scores_once_per_epoch(tmp_path: Path) -> None:
    mp.spawn(_dist_worker, args=(str(tmp_path),), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for e, (a, b) in enumerate(zip(r0["epochs"], r1["epochs"], strict=True)):
        assert a["kept"] == b["kept"], e  # the same draw on every rank
        assert np.array_equal(a["weights"], b["weights"])
        assert a["len"] == b["len"] == math.ceil(len(a["kept"]) / 2)
        assert set(a["mine"]) | set(b["mine"]) == set(a["kept"])
        assert len(set(a["mine"]) & set(b["mine"])) <= 1  # at most the one padding repeat
        assert (len(a["kept"]) < 103) == (1 <= e < 5)  # C=6, delta=0.875: epochs 1-4 prune, 5 anneals
        assert np.array_equal(a["scores"], b["scores"])  # exchanged: each rank saw only its half
    # exactly the scores a per-step all-gather gives: the padded repeat's later loss wins, NaN/inf skipped
    last = r0["epochs"][-1]["scores"]
    assert np.array_equal(last, r0["ref"]) and np.array_equal(last, r1["ref"])
    assert r0["order"].tolist() == r1["order"].tolist() == r0["order_ref"].tolist() == [0, 0, 0, 0, 0, 3, 1, 4, 6, 0]
    assert r0["skipped"] == r1["skipped"] == 2
    assert r0["stats"].nonfinite_losses_skipped == r1["stats"].nonfinite_losses_skipped == 2
    # resumed mid-epoch from rank 0's checkpoint: the same draws and scores as the uninterrupted job
    for rank_out in (r0, r1):
        for a, b in zip(rank_out["epochs"][2:], rank_out["rest"], strict=True):
            assert a["kept"] == b["kept"] and a["mine"] == b["mine"]
            assert np.array_equal(a["weights"], b["weights"]) and np.array_equal(a["scores"], b["scores"])
    assert r0["collectives"] == r1["collectives"] == [1, 0, 1]
    assert "call sampler.sync() on every rank" in r0["pending"] and "sync()" in r1["pending"]
    assert r0["tail"] == r1["tail"] == [0.0, 7.0, 8.0, 9.0, 0.0]  # int64 indices: exact above 2**24
    assert "differ across ranks" in r0["mismatch"] and "differ across ranks" in r1["mismatch"]
    # epochs after the first are drawn on the exchange's thread, ahead of set_epoch: the rule's draws from
    # the exchanged scores all the same
    assert {e for e, thread in r0["drawn_on"] if thread != "curator-infobatch-exchange"} == {0}
    assert {e for e, _ in r0["drawn_on"]} == set(range(6))
    for e in range(1, 6):
        ref = InfoBatchSampler(103, num_epochs=6, seed=7)
        ref.update(np.arange(103), r0["epochs"][e - 1]["scores"])
        ref.set_epoch(e)
        assert ref.kept_indices().tolist() == r0["epochs"][e]["kept"], e
        assert np.array_equal(ref.weights(np.arange(103)).numpy(), r0["epochs"][e]["weights"]), e
    early = r0["late_parts"]  # rank 0 started its exchange 1 s before rank 1 did
    assert early["sync"] < 0.5 and early["land"] > 0.5 and early["draw"] < 0.5, early
    assert r0["late_scores"] == r1["late_scores"] == [1.0, 2.0]
    assert r0["replaced"] == r1["replaced"] == [1.0, 2.0, 0.0, 0.0]


# ------------------------------------------------------------------ argument errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(num_samples=0, num_epochs=3), ValueError, "num_samples must be positive"),
    (dict(num_samples=list(range(5)), num_epochs=3), TypeError, r"len\(dataset\)"),
    (dict(num_samples=5.0, num_epochs=3), TypeError, "num_samples must be an integer"),
    (dict(num_samples=5, num_epochs=0), ValueError, "num_epochs must be positive"),
    (dict(num_samples=5, num_epochs=3, prune_ratio=-0.1), ValueError, "prune_ratio must be in"),
    (dict(num_samples=5, num_epochs=3, prune_ratio=1.5), ValueError, "prune_ratio must be in"),
    (dict(num_samples=5, num_epochs=3, prune_ratio=float("nan")), ValueError, "finite"),
    (dict(num_samples=5, num_epochs=3, delta=1.2), ValueError, "delta must be in"),
    (dict(num_samples=5, num_epochs=3, seed=-1), ValueError, "seed must be non-negative"),
    (dict(num_samples=5, num_epochs=3, num_replicas=2, rank=2), ValueError, "rank must be in"),
    (dict(num_samples=5, num_epochs=3, num_replicas=0), ValueError, "num_replicas must be positive"),
    (dict(num_samples=5, num_epochs=3, prune_ratio=0.3, bands=MULTI_BAND), ValueError, "not both"),
    (dict(num_samples=5, num_epochs=3, bands=[(0.5, 0.5), (0.4, 0.5)]), ValueError, "increase strictly"),
    (dict(num_samples=5, num_epochs=3, bands=[(0.5, 0.0)]), ValueError, "keep_fraction must be in"),
    (dict(num_samples=5, num_epochs=3, bands=[(0.5,)]), ValueError, "pair"),
    (dict(num_samples=5, num_epochs=3, bands=[]), ValueError, "at least one"),
    (dict(num_samples=5, num_epochs=3, initial_scores=[1.0, 2.0]), ValueError, r"shape \(5,\)"),
    (dict(num_samples=2, num_epochs=3, initial_scores=[1.0, float("nan")]), ValueError, "finite"),
])
def test_constructor_errors_are_clear(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        InfoBatchSampler(**kwargs)


def test_prune_ratio_above_0_9_is_clamped_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="clamped to 0.9"):
        s = InfoBatchSampler(10, 3, prune_ratio=0.95)
    assert s.prune_ratio == 0.9
    with pytest.warns(UserWarning, match="clamped"):
        assert InfoBatchSampler(10, 3, bands=[(0.5, 0.05)]).bands == ((0.5, pytest.approx(0.1)),)


def test_step_errors_are_clear() -> None:
    s = InfoBatchSampler(10, 3)
    with pytest.raises(ValueError, match="epoch must be in"):
        s.set_epoch(3)
    with pytest.raises(TypeError, match="indices must be integers"):
        s.update(torch.tensor([1.0, 2.0]), torch.ones(2))
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        s.update([3, 10], torch.ones(2))
    for bad in ([3, 10], [-1, 2]):  # the loader's int64 tensors take the fast path: still checked
        with pytest.raises(IndexError, match=r"\[0, 10\)"):
            s.step(torch.tensor(bad), torch.ones(2))
        with pytest.raises(IndexError, match=r"\[0, 10\)"):
            s.update(torch.tensor(bad), torch.ones(2))
    with pytest.raises(ValueError, match="1-D"):
        s.step(torch.tensor([1, 2]), torch.ones(2, 4))
    with pytest.raises(ValueError, match="2 losses for 3 indices"):
        s.step(torch.tensor([1, 2, 3]), torch.ones(2))
    with pytest.raises(TypeError, match="tensor of per-sample losses"):
        s.step([1, 2], [0.5, 0.5])  # type: ignore[arg-type]


def test_loader_helper_errors_are_clear() -> None:
    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield 1

    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(Stream())
    with pytest.raises(ValueError, match="built for 5"):
        indexed_loader(list(range(6)), InfoBatchSampler(5, 2))
    with pytest.raises(ValueError, match="shuffle"):
        indexed_loader(list(range(5)), InfoBatchSampler(5, 2), shuffle=True)
