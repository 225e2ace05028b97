"""The InfoBatch pruning rule (Qin et al., ICLR 2024) as plain functions over score arrays.

Kept apart from the sampler so that the rule reads in one place: which samples the rule
sees as prunable, how they are grouped (below the mean, or the multi-band quantiles), and
one epoch's seeded draw of what is kept and how it is weighted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["MAX_PRUNE_RATIO", "MULTI_BAND", "Plan", "check_bands", "draw_plan", "effective_scores", "mid_ranks",
           "prunable_groups"]

#: The paper's multi-band variant: keep 25% below the 20th score percentile, 50% between
#: the 20th and 85th, everything above.
MULTI_BAND: tuple[tuple[float, float], ...] = ((0.2, 0.25), (0.85, 0.5))

#: The paper clamps r here: beyond it the 1/(1-r) weights make the gradient too noisy.
MAX_PRUNE_RATIO = 0.9


def floor_exact(x: float) -> int:
    """floor() that forgives binary rounding: 0.29 * 100 is 28.999999999999996, 29 was meant."""
    return math.floor(x + 1e-9 * max(1.0, abs(x)))


def as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def check_bands(bands: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Validated (quantile, keep_fraction) pairs; keep fractions below 1 - MAX_PRUNE_RATIO are clamped."""
    out: list[tuple[float, float]] = []
    try:
        pairs = [tuple(b) for b in bands]
    except TypeError:
        raise TypeError("bands must be a sequence of (quantile, keep_fraction) pairs") from None
    if not pairs:
        raise ValueError("bands must name at least one (quantile, keep_fraction) pair")
    prev = 0.0
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"each band must be a (quantile, keep_fraction) pair, got {pair!r}")
        q = as_float("band quantile", pair[0])
        f = as_float("band keep_fraction", pair[1])
        if not prev < q <= 1.0:
            raise ValueError(f"band quantiles must increase strictly within (0, 1], got {q} after {prev}")
        if not 0.0 < f <= 1.0:
            raise ValueError(f"band keep_fraction must be in (0, 1], got {f}")
        if f < 1.0 - MAX_PRUNE_RATIO:
            warnings.warn(f"band keep_fraction={f} clamped to {1.0 - MAX_PRUNE_RATIO:.2f} "
                          "(the same limit as prune_ratio <= 0.9)", UserWarning, stacklevel=3)
            f = 1.0 - MAX_PRUNE_RATIO
        out.append((q, f))
        prev = q
    return tuple(out)


def mid_ranks(x: np.ndarray) -> np.ndarray:
    """Quantile of each value in its own distribution, ties sharing their mid rank."""
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    mid = np.cumsum(cnt) - cnt / 2.0
    return (mid[inv.reshape(-1)] / x.size).astype(np.float64)


def effective_scores(scores: np.ndarray, seen: np.ndarray, initial: np.ndarray | None,
                     initial_q: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Scores the rule sees, and which samples may be pruned at all."""
    if initial is None or initial_q is None:
        return scores, seen  # untrained samples: unknown, so always kept
    everyone = np.ones(scores.size, dtype=bool)
    if not seen.any():
        return initial, everyone
    eff = scores.copy()
    unseen = ~seen
    if unseen.any():
        # place an untrained sample at its initial-score quantile of the observed losses
        eff[unseen] = np.quantile(scores[seen], initial_q[unseen])
    return eff, everyone


def prunable_groups(eff: np.ndarray, eligible: np.ndarray, prune_ratio: float,
           bands: tuple[tuple[float, float], ...] | None) -> list[tuple[np.ndarray, float]]:
    """(members, keep_fraction) of each prunable group under the configured rule."""
    if not eligible.any():
        return []
    if bands is None:
        if prune_ratio <= 0.0:
            return []
        if eligible.all():
            return [(np.flatnonzero(eff < eff.mean(dtype=np.float64)), 1.0 - prune_ratio)]
        thr = eff[eligible].mean(dtype=np.float64)  # stale scores included, as published
        return [(np.flatnonzero(eligible & (eff < thr)), 1.0 - prune_ratio)]
    qs = np.quantile(eff[eligible].astype(np.float64), [q for q, _ in bands])
    out = []
    lo = -np.inf
    for hi, (_, f) in zip(qs, bands, strict=True):
        out.append((np.flatnonzero(eligible & (eff >= lo) & (eff < hi)), f))
        lo = hi
    return out


@dataclass
class Plan:
    """One epoch's pruning draw, made once in set_epoch and never redrawn on access."""

    epoch: int
    order: np.ndarray  # int64, the kept indices in visiting order, identical on every rank
    weights: np.ndarray  # float32 [N]: loss weight of each sample this epoch (1 unless kept from a pruned band)
    # weights * float32(1 / B) by batch size B, as tensors: a step's weighted mean is then one dot product
    # whose gradient is bit for bit that of mean(losses * weights)
    scaled: dict[int, torch.Tensor] = field(default_factory=dict)

    def scaled_weights(self, batch: int) -> torch.Tensor:
        w = self.scaled.get(batch)
        if w is None:
            w = self.scaled[batch] = torch.from_numpy(self.weights * (np.float32(1.0) / np.float32(batch)))
        return w


def draw_plan(epoch: int, num_samples: int, seed: int, prunable: list[tuple[np.ndarray, float]],
         shuffle: bool) -> Plan:
    """Keep exactly floor(keep_fraction * |group|) of each group, without replacement, weighted
    1 / keep_fraction; keep everything else with weight 1. The generator is the plan's own,
    seeded by (seed, epoch): every rank draws the same, nothing global is touched."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    weights = np.ones(num_samples, dtype=np.float32)  # fresh every epoch: weights never leak across epochs
    keep = np.ones(num_samples, dtype=bool)
    for members, frac in prunable:
        k = floor_exact(frac * members.size)
        if k >= members.size:
            continue
        kept = members[rng.choice(members.size, size=k, replace=False)]
        keep[members] = False
        keep[kept] = True
        weights[kept] = np.float32(1.0 / frac)
    order = np.flatnonzero(keep).astype(np.int64)
    if shuffle:
        order = rng.permutation(order)
    return Plan(epoch=epoch, order=order, weights=weights)
