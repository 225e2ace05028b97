"""InfoBatch: unbiased dynamic data pruning at training time (Qin et al., ICLR 2024).

Each epoch, samples whose latest training loss is below the mean loss are pruned at
random (keep exactly ``floor((1 - r) * |below|)``); the kept ones have their loss scaled
by ``1 / (1 - r)`` so the expected gradient equals the full-data gradient. The last
``C - floor(delta * C)`` epochs train on everything with weight 1 ("annealing").

Unlike the official package this is an explicit API, with no hooks into PyTorch: the
sampler yields dataset indices, the dataset wrapper carries them through the loader next
to the data, and the training step hands them back with the per-sample losses::

    sampler = InfoBatchSampler(len(ds), num_epochs=C)
    loader = indexed_loader(ds, sampler, batch_size=128, num_workers=4)
    for epoch in range(C):
        sampler.set_epoch(epoch)                       # prunes once; len(loader) is now exact
        for indices, (x, y) in loader:
            losses = F.cross_entropy(model(x), y, reduction="none")
            loss = sampler.step(indices, losses)       # records raw losses, returns the weighted mean
            opt.zero_grad(); loss.backward(); opt.step()

Because the indices travel inside each batch, losses land on the right samples with
wrapped datasets (``Subset``), custom collate functions and prefetching workers. The
pruning draw comes from the sampler's own generator seeded by ``(seed, epoch)``: every
rank makes the same draw, nothing global is reseeded, and ``state_dict()`` resumes a job
so that it prunes exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterator, Sequence, Sized
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from curator.train.dist import all_gather_cat, collective_device, world_size

__all__ = ["MAX_PRUNE_RATIO", "MULTI_BAND", "InfoBatchSampler", "InfoBatchStats"]

#: The paper's multi-band variant: keep 25% below the 20th score percentile, 50% between
#: the 20th and 85th, everything above.
MULTI_BAND: tuple[tuple[float, float], ...] = ((0.2, 0.25), (0.85, 0.5))

#: The paper clamps r here: beyond it the 1/(1-r) weights make the gradient too noisy.
MAX_PRUNE_RATIO = 0.9

_STATE_VERSION = 1

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


def _floor(x: float) -> int:
    """floor() that forgives binary rounding: 0.29 * 100 is 28.999999999999996, 29 was meant."""
    return math.floor(x + 1e-9 * max(1.0, abs(x)))


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return int(value.__index__())
    except AttributeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v




@dataclass(frozen=True)
class InfoBatchStats:
    """What pruning saved. ``saving`` is the number to report: sum(pruned) / (C * N)."""

    epoch: int
    num_samples: int
    num_epochs: int
    pruning_epochs: int  # floor(delta * C): epochs 0 .. pruning_epochs - 1 prune
    kept_this_epoch: int
    pruned_this_epoch: int
    total_pruned: int  # over every epoch planned so far
    saving: float  # total_pruned / (C * N): the achieved saving so far, against the whole run
    saving_projected: float  # saving if the remaining pruning epochs prune like the latest one
    nonfinite_losses_skipped: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Plan:
    """One epoch's pruning draw, made once in set_epoch and never redrawn on access."""

    epoch: int
    order: np.ndarray  # int64, the kept indices in visiting order, identical on every rank
    weights: np.ndarray  # float32 [N]: loss weight of each sample this epoch (1 unless kept from a pruned band)


class InfoBatchSampler(Sampler[int]):
    """Sampler that prunes low-loss samples each epoch and tells the step how to reweight.

    Args:
        num_samples: size of the (map-style) dataset; pass ``len(dataset)``.
        num_epochs: C, the planned number of epochs (annealing is measured against it).
        prune_ratio: r, the share of below-mean samples dropped each pruning epoch
            (default 0.5; clamped to 0.9 with a warning). Not combinable with ``bands``.
        delta: share of epochs that prune; epochs ``>= floor(delta * C)`` use all data
            with weight 1.
        seed: seeds the sampler's own generator together with the epoch number.
        num_replicas, rank: distributed layout, like ``DistributedSampler``; ``None`` takes
            them from ``torch.distributed`` when it is initialised, else 1 and 0.
        shuffle: visit the kept samples in a random order each epoch.
        drop_last: drop the tail so every rank gets the same count without padding
            (otherwise the tail is padded by repeating indices, as DistributedSampler does).
        initial_scores: optional score per sample before any loss is known, e.g. the
            normalised InfoGrowth gains (``gain_norm``) stored with the curated set: epoch 0
            then already prunes the least informative items. Only their *ranks* are used
            once real losses exist: a sample not yet trained on is placed at the same
            quantile of the observed losses, so gains and losses never mix in the mean.
            Without them, untrained samples are always kept (epoch 0 prunes nothing).
        bands: multi-band variant, e.g. ``MULTI_BAND = ((0.2, 0.25), (0.85, 0.5))``: keep 25%
            of the samples below the 20th score percentile, 50% of those between the 20th and
            85th, all above; kept samples of a band weigh 1 / keep_fraction.

    Call ``set_epoch(epoch)`` at the start of every epoch (collectively on all ranks under
    torch.distributed): it makes the epoch's single pruning draw, after which ``len(self)``
    and ``len(loader)`` are exact.
    """

    def __init__(
        self,
        num_samples: int,
        num_epochs: int,
        prune_ratio: float | None = None,
        delta: float = 0.875,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        initial_scores: Sequence[float] | np.ndarray | torch.Tensor | None = None,
        bands: Sequence[tuple[float, float]] | None = None,
    ) -> None:
        if not hasattr(num_samples, "__index__") and isinstance(num_samples, Sized):
            raise TypeError("num_samples must be an integer: pass len(dataset), not the dataset")
        self.num_samples = _as_int("num_samples", num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        self.num_epochs = _as_int("num_epochs", num_epochs)
        if self.num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive, got {self.num_epochs}")
        self.delta = _as_float("delta", delta)
        if not 0.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must be in [0, 1] (share of epochs that prune), got {self.delta}")
        self.seed = _as_int("seed", seed)
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

        if bands is not None and prune_ratio is not None:
            raise ValueError("pass either prune_ratio (mean-threshold rule) or bands (multi-band rule), not both")
        self.bands: tuple[tuple[float, float], ...] | None = None
        self.prune_ratio = 0.0
        if bands is not None:
            self.bands = self._check_bands(bands)
        else:
            r = 0.5 if prune_ratio is None else _as_float("prune_ratio", prune_ratio)
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"prune_ratio must be in [0, 1] (above 0.9 it is clamped to 0.9), got {r}")
            if r > MAX_PRUNE_RATIO:
                warnings.warn(f"prune_ratio={r} clamped to {MAX_PRUNE_RATIO}: beyond it the 1/(1-r) "
                              "weights make gradients too noisy", UserWarning, stacklevel=2)
                r = MAX_PRUNE_RATIO
            self.prune_ratio = r

        world = world_size()
        self.num_replicas = world if num_replicas is None else _as_int("num_replicas", num_replicas)
        if self.num_replicas <= 0:
            raise ValueError(f"num_replicas must be positive, got {self.num_replicas}")
        if rank is None:
            rank = torch.distributed.get_rank() if world > 1 and self.num_replicas == world else 0
        self.rank = _as_int("rank", rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank must be in [0, {self.num_replicas}), got {self.rank}")
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)

        n = self.num_samples
        self._scores = np.zeros(n, dtype=np.float32)  # latest raw loss of each sample
        self._seen = np.zeros(n, dtype=bool)  # has a real loss been recorded?
        self._initial_q: np.ndarray | None = None
        self._initial: np.ndarray | None = None
        if initial_scores is not None:
            init = np.asarray(
                initial_scores.detach().cpu().numpy() if isinstance(initial_scores, torch.Tensor)
                else initial_scores, dtype=np.float64)
            if init.shape != (n,):
                raise ValueError(f"initial_scores must have shape ({n},), got {init.shape}")
            if not np.isfinite(init).all():
                raise ValueError("initial_scores must be finite (fill missing gains before passing them)")
            self._initial = init.astype(np.float32)
            self._initial_q = self._mid_ranks(init)
        self._pruned = np.full(self.num_epochs, -1, dtype=np.int64)  # per planned epoch; -1 = not planned
        self._nonfinite = 0
        self._epoch = 0
        self._plan: _Plan | None = None
        self._updates_in_plan = 0
        self._iterated_plan: int | None = None
        self._warned_reiter = False
        self._warned_nonfinite = False

    # ----------------------------------------------------------------- configuration
    @staticmethod
    def _check_bands(bands: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
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
            q = _as_float("band quantile", pair[0])
            f = _as_float("band keep_fraction", pair[1])
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

    @staticmethod
    def _mid_ranks(x: np.ndarray) -> np.ndarray:
        """Quantile of each value in its own distribution, ties sharing their mid rank."""
        _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
        mid = np.cumsum(cnt) - cnt / 2.0
        return (mid[inv.reshape(-1)] / x.size).astype(np.float64)

    @property
    def pruning_epochs(self) -> int:
        """floor(delta * C): epochs below this prune, the rest anneal on full data."""
        return min(self.num_epochs, _floor(self.delta * self.num_epochs))

    @property
    def epoch(self) -> int:
        return self._epoch

    # ----------------------------------------------------------------- the per-epoch draw
    def set_epoch(self, epoch: int) -> None:
        """Make this epoch's pruning draw (once: calling it again for the same epoch keeps it).

        Under torch.distributed this is collective: ranks check that their score tables
        agree, since identical tables and seeds are what make every rank draw the same plan.
        """
        epoch = _as_int("epoch", epoch)
        if not 0 <= epoch < self.num_epochs:
            raise ValueError(f"epoch must be in [0, num_epochs={self.num_epochs}), got {epoch}")
        if self._plan is not None and self._plan.epoch == epoch and self._epoch == epoch:
            return
        self._check_ranks_agree()
        self._epoch = epoch
        self._plan = self._draw(epoch)

    def _current_plan(self) -> _Plan:
        if self._plan is None or self._plan.epoch != self._epoch:
            self._plan = self._draw(self._epoch)
        return self._plan

    def _effective_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Scores the rule sees, and which samples may be pruned at all."""
        if self._initial_q is None:
            return self._scores, self._seen  # untrained samples: unknown, so always kept
        if not self._seen.any():
            return self._initial, np.ones(self.num_samples, dtype=bool)  # type: ignore[return-value]
        eff = self._scores.copy()
        unseen = ~self._seen
        if unseen.any():
            # place an untrained sample at its initial-score quantile of the observed losses
            eff[unseen] = np.quantile(self._scores[self._seen], self._initial_q[unseen])
        return eff, np.ones(self.num_samples, dtype=bool)

    def _groups(self, eff: np.ndarray, eligible: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """(members, keep_fraction) of each prunable group under the configured rule."""
        if not eligible.any():
            return []
        if self.bands is None:
            if self.prune_ratio <= 0.0:
                return []
            thr = eff[eligible].mean(dtype=np.float64)  # stale scores included, as published
            return [(np.flatnonzero(eligible & (eff < thr)), 1.0 - self.prune_ratio)]
        qs = np.quantile(eff[eligible].astype(np.float64), [q for q, _ in self.bands])
        groups = []
        lo = -np.inf
        for hi, (_, f) in zip(qs, self.bands, strict=True):
            groups.append((np.flatnonzero(eligible & (eff >= lo) & (eff < hi)), f))
            lo = hi
        return groups

    def _draw(self, epoch: int) -> _Plan:
        n = self.num_samples
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, epoch])))
        weights = np.ones(n, dtype=np.float32)  # fresh every epoch: weights never leak across epochs
        keep = np.ones(n, dtype=bool)
        if epoch < self.pruning_epochs:
            eff, eligible = self._effective_scores()
            for members, frac in self._groups(eff, eligible):
                k = _floor(frac * members.size)
                if k >= members.size:
                    continue
                kept = members[rng.choice(members.size, size=k, replace=False)]
                keep[members] = False
                keep[kept] = True
                weights[kept] = np.float32(1.0 / frac)
        order = np.flatnonzero(keep).astype(np.int64)
        if self.shuffle:
            order = rng.permutation(order)
        if 0 <= epoch < self.num_epochs:
            self._pruned[epoch] = n - order.size
        self._updates_in_plan = 0
        self._iterated_plan = None
        return _Plan(epoch=epoch, order=order, weights=weights)

    def _rank_indices(self, order: np.ndarray) -> np.ndarray:
        """This rank's share, like DistributedSampler: pad (or drop) to a multiple of R, stride by R."""
        k, r = order.size, self.num_replicas
        if self.drop_last:
            total = (k // r) * r
            order = order[:total]
        else:
            total = math.ceil(k / r) * r
            if total > k:
                order = np.resize(order, total)  # repeats from the start, as DistributedSampler pads
        return order[self.rank : total : r]

    def __len__(self) -> int:
        """This rank's number of indices for the current epoch: exact before iteration starts."""
        k, r = self._current_plan().order.size, self.num_replicas
        return k // r if self.drop_last else math.ceil(k / r)

    def __iter__(self) -> Iterator[int]:
        plan = self._current_plan()
        if self._iterated_plan == plan.epoch and self._updates_in_plan and not self._warned_reiter:
            warnings.warn(f"InfoBatchSampler iterated again in epoch {plan.epoch} after training on it: "
                          "call sampler.set_epoch(epoch) at the start of every epoch, or pruning never "
                          "advances", UserWarning, stacklevel=2)
            self._warned_reiter = True
        self._iterated_plan = plan.epoch
        return iter(self._rank_indices(plan.order).tolist())

    @property
    def num_kept(self) -> int:
        """Samples kept this epoch over all ranks (before padding)."""
        return int(self._current_plan().order.size)

    def kept_indices(self) -> np.ndarray:
        """This epoch's kept indices in visiting order, over all ranks (a copy)."""
        return self._current_plan().order.copy()

    # ----------------------------------------------------------------- the training step
    def _indices(self, indices: IndexLike) -> np.ndarray:
        if isinstance(indices, torch.Tensor):
            if indices.is_floating_point() or indices.is_complex():
                raise TypeError(f"indices must be integers, got a {indices.dtype} tensor")
            idx = indices.detach().cpu().numpy().astype(np.int64, copy=False)
        else:
            idx = np.asarray(indices)
            if idx.size and idx.dtype.kind not in "iu":
                raise TypeError(f"indices must be integers, got {idx.dtype}")
            idx = idx.astype(np.int64, copy=False)
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D (one per sample), got shape {tuple(idx.shape)}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise IndexError(f"indices must be in [0, {self.num_samples}); got {idx.min()}..{idx.max()}")
        return idx

    def weights(self, indices: IndexLike, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Loss weight of each sample this epoch: 1/(1-r) if kept from the pruned set, else 1."""
        return self._weights(self._indices(indices), device, dtype)

    def _weights(self, idx: np.ndarray, device: torch.device | str | None, dtype: torch.dtype) -> torch.Tensor:
        w = torch.from_numpy(self._current_plan().weights[idx])
        return w.to(device=device, dtype=dtype)

    def weighted_mean(self, losses: torch.Tensor, indices: IndexLike) -> torch.Tensor:
        """The batch loss: per-sample losses times their weights, averaged over the batch size."""
        losses = self._check_losses(losses, indices)
        return (losses * self._weights(self._indices(indices), losses.device, losses.dtype)).mean()

    @staticmethod
    def _check_losses(losses: torch.Tensor, indices: IndexLike) -> torch.Tensor:
        if not isinstance(losses, torch.Tensor):
            raise TypeError(f"losses must be a tensor of per-sample losses, got {type(losses).__name__}")
        if losses.ndim != 1:
            raise ValueError(f"losses must be 1-D, one per sample (use reduction='none' and reduce per-token "
                             f"losses per sample first), got shape {tuple(losses.shape)}")
        if losses.shape[0] != len(indices):
            raise ValueError(f"got {losses.shape[0]} losses for {len(indices)} indices")
        return losses

    def update(self, indices: IndexLike, losses: torch.Tensor | np.ndarray | Sequence[float]) -> None:
        """Record raw (unweighted) losses as the samples' new scores.

        Under torch.distributed every rank's indices (int64, exact at any dataset size) and
        losses (float32) are all-gathered, so every rank keeps the same score table.
        Non-finite losses (e.g. an fp16 overflow step) are skipped: the sample keeps its score.
        """
        self._update(self._indices(indices), losses)

    def _update(self, idx: np.ndarray, losses: torch.Tensor | np.ndarray | Sequence[float]) -> None:
        hint = losses if isinstance(losses, torch.Tensor) else None
        loss_t = (losses.detach() if isinstance(losses, torch.Tensor)
                  else torch.as_tensor(np.asarray(losses, dtype=np.float32)))
        if loss_t.ndim != 1 or loss_t.shape[0] != idx.size:
            raise ValueError(f"losses must be 1-D with one value per index: got shape {tuple(loss_t.shape)} "
                             f"for {idx.size} indices")
        loss_t = loss_t.float()
        world = world_size()
        if self.num_replicas > 1 and world > 1:
            if world != self.num_replicas:
                raise RuntimeError(f"InfoBatchSampler(num_replicas={self.num_replicas}) but the "
                                   f"torch.distributed world size is {world}")
            device = collective_device(hint)
            # one int64 payload: indices (exact beyond 2**24) and the losses' float32 bits
            bits = loss_t.cpu().contiguous().view(torch.int32).to(torch.int64)
            both = all_gather_cat(torch.stack([torch.from_numpy(idx), bits]), device)
            idx = both[0].numpy()
            vals = both[1].to(torch.int32).view(torch.float32).numpy()
        else:
            vals = loss_t.cpu().numpy()
        ok = np.isfinite(vals)
        if not ok.all():
            self._nonfinite += int((~ok).sum())
            if not self._warned_nonfinite:
                warnings.warn("InfoBatchSampler.update got non-finite losses; those samples keep their "
                              "previous score", UserWarning, stacklevel=2)
                self._warned_nonfinite = True
            idx, vals = idx[ok], vals[ok]
        self._scores[idx] = vals
        self._seen[idx] = True
        self._updates_in_plan += 1

    def step(self, indices: IndexLike, losses: torch.Tensor) -> torch.Tensor:
        """update() then weighted_mean(): the one call a training step needs."""
        losses = self._check_losses(losses, indices)
        idx = self._indices(indices)  # validated once for both halves
        self._update(idx, losses)
        return (losses * self._weights(idx, losses.device, losses.dtype)).mean()

    # ----------------------------------------------------------------- accounting
    def stats(self) -> InfoBatchStats:
        plan = self._current_plan()
        n, c = self.num_samples, self.num_epochs
        planned = self._pruned >= 0
        total = int(self._pruned[planned].sum())
        recent = [e for e in np.flatnonzero(planned) if e < self.pruning_epochs]
        per_epoch = int(self._pruned[recent[-1]]) if recent else 0
        remaining = int((~planned[: self.pruning_epochs]).sum())
        return InfoBatchStats(
            epoch=plan.epoch,
            num_samples=n,
            num_epochs=c,
            pruning_epochs=self.pruning_epochs,
            kept_this_epoch=int(plan.order.size),
            pruned_this_epoch=n - int(plan.order.size),
            total_pruned=total,
            saving=total / (c * n),
            saving_projected=(total + remaining * per_epoch) / (c * n),
            nonfinite_losses_skipped=self._nonfinite,
        )

    def scores(self) -> np.ndarray:
        """The latest raw loss of each sample (a copy; 0 where none was recorded yet)."""
        return self._scores.copy()

    # ----------------------------------------------------------------- distributed consistency
    def _check_ranks_agree(self) -> None:
        world = world_size()
        if not (self.num_replicas > 1 and world == self.num_replicas):
            return
        crc = zlib.crc32(self._scores.tobytes())
        crc = zlib.crc32(self._seen.tobytes(), crc)
        mine = torch.tensor([crc, self.seed], dtype=torch.int64, device=collective_device())
        every = [torch.zeros_like(mine) for _ in range(world)]
        torch.distributed.all_gather(every, mine)
        if any(not torch.equal(e, every[0]) for e in every):
            raise RuntimeError("InfoBatchSampler score tables or seeds differ across ranks, so ranks would "
                               "prune differently: call update() on every rank with torch.distributed "
                               "initialised, and give every rank the same seed and initial_scores")

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed job needs to prune identically, as tensors (torch.save/load-safe)."""
        plan = self._plan
        return {
            "version": _STATE_VERSION,
            "num_samples": self.num_samples,
            "num_epochs": self.num_epochs,
            "prune_ratio": self.prune_ratio,
            "delta": self.delta,
            "bands": None if self.bands is None else [list(b) for b in self.bands],
            "shuffle": self.shuffle,
            "seed": self.seed,
            "epoch": self._epoch,
            "scores": torch.from_numpy(self._scores.copy()),
            "seen": torch.from_numpy(self._seen.copy()),
            "initial": None if self._initial is None else torch.from_numpy(self._initial.copy()),
            "pruned": torch.from_numpy(self._pruned.copy()),
            "nonfinite": self._nonfinite,
            # the current epoch's draw, so a job resumed mid-epoch visits the same samples
            "plan_epoch": -1 if plan is None else plan.epoch,
            "plan_order": None if plan is None else torch.from_numpy(plan.order.copy()),
            "plan_weights": None if plan is None else torch.from_numpy(plan.weights.copy()),
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restore scores, epoch, seed, counters and the current draw.

        With ``strict`` the pruning hyperparameters must match the saved ones (otherwise the
        resumed job would not prune as the original); ``strict=False`` keeps this sampler's.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported InfoBatchSampler state version {state.get('version')!r}")
        if state["num_samples"] != self.num_samples:
            raise ValueError(f"state is for {state['num_samples']} samples, this sampler has {self.num_samples}")
        if strict:
            mine = {"num_epochs": self.num_epochs, "prune_ratio": self.prune_ratio, "delta": self.delta,
                    "shuffle": self.shuffle,
                    "bands": None if self.bands is None else [list(b) for b in self.bands]}
            diff = {k: (state[k], v) for k, v in mine.items() if state[k] != v}
            if diff:
                raise ValueError("state was saved with different settings (saved, here): "
                                 + ", ".join(f"{k}={a!r}/{b!r}" for k, (a, b) in diff.items())
                                 + "; pass strict=False to keep this sampler's settings")
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._scores = state["scores"].numpy().astype(np.float32, copy=True)
        self._seen = state["seen"].numpy().astype(bool, copy=True)
        if state["initial"] is None:
            self._initial = self._initial_q = None
        else:
            self._initial = state["initial"].numpy().astype(np.float32, copy=True)
            self._initial_q = self._mid_ranks(self._initial.astype(np.float64))
        pruned = state["pruned"].numpy().astype(np.int64, copy=True)
        self._pruned = np.full(self.num_epochs, -1, dtype=np.int64)
        m = min(pruned.size, self.num_epochs)
        self._pruned[:m] = pruned[:m]
        self._nonfinite = int(state["nonfinite"])
        self._plan = None
        if state["plan_order"] is not None and int(state["plan_epoch"]) == self._epoch:
            self._plan = _Plan(epoch=self._epoch,
                               order=state["plan_order"].numpy().astype(np.int64, copy=True),
                               weights=state["plan_weights"].numpy().astype(np.float32, copy=True))
        self._updates_in_plan = 0
        self._iterated_plan = None
