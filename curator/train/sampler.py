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
        sampler.sync()                                 # the epoch's losses applied (exchanged across ranks)

Because the indices travel inside each batch, losses land on the right samples with
wrapped datasets (``Subset``), custom collate functions and prefetching workers. The
pruning draw comes from the sampler's own generator seeded by ``(seed, epoch)``: every
rank makes the same draw, nothing global is reseeded, and ``state_dict()`` resumes a job
so that it prunes exactly as the uninterrupted one would have. A step costs two small
tensor ops and no collective: losses are kept per rank and applied, or exchanged between
ranks, once per epoch (``scores.py``). Across ranks that exchange, and the next epoch's
draw from its result, run on a background thread that ``sync()`` starts, while the
training loop does its own epoch-end work.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterator, Sequence, Sized
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from curator.train.dist import world_size
from curator.train.rule import (
    MAX_PRUNE_RATIO,
    Plan,
    as_float,
    check_bands,
    draw_plan,
    effective_scores,
    floor_exact,
    mid_ranks,
    prunable_groups,
)
from curator.train.scores import Exchange, ScoreTable

__all__ = ["InfoBatchSampler", "InfoBatchStats"]

_STATE_VERSION = 1

IndexLike = torch.Tensor | np.ndarray | Sequence[int]


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool")
    try:
        return int(value.__index__())
    except AttributeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None


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

    Losses are recorded without a collective: each rank keeps the (index, loss) pairs of
    its own steps, and ``set_epoch`` (or ``sync()``, e.g. at the end of an epoch, before
    rank 0 checkpoints) exchanges them once, with the result a per-step all-gather gives;
    ``sync()`` does it without waiting, so the exchange and the next draw leave the
    training thread.
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
        self.delta = as_float("delta", delta)
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
            self.bands = check_bands(bands)
        else:
            r = 0.5 if prune_ratio is None else as_float("prune_ratio", prune_ratio)
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
        self._table = ScoreTable(n)
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
            self._initial_q = mid_ranks(init)
        self._pruned = np.full(self.num_epochs, -1, dtype=np.int64)  # per planned epoch; -1 = not planned
        self._epoch = 0
        self._plan: Plan | None = None
        self._updates_in_plan = 0
        self._iterated_plan: int | None = None
        self._warned_reiter = False
        self._closed = False  # sync() has exchanged every rank's losses since the last draw
        self._inflight: Exchange[Plan] | None = None  # an exchange sync() started, not yet landed
        self._ahead: Plan | None = None  # the next epoch's draw, made off the training thread after an exchange

    # ----------------------------------------------------------------- configuration
    @property
    def pruning_epochs(self) -> int:
        """floor(delta * C): epochs below this prune, the rest anneal on full data."""
        return min(self.num_epochs, floor_exact(self.delta * self.num_epochs))

    @property
    def epoch(self) -> int:
        return self._epoch

    # ----------------------------------------------------------------- the per-epoch draw
    def set_epoch(self, epoch: int) -> None:
        """Make this epoch's pruning draw (once: calling it again for the same epoch keeps it).

        Under torch.distributed this is collective: ranks exchange the losses recorded since
        the last exchange and check that their score tables, seeds, settings and epochs
        agree, since those are what make every rank draw the same plan.
        """
        epoch = _as_int("epoch", epoch)
        if not 0 <= epoch < self.num_epochs:
            raise ValueError(f"epoch must be in [0, num_epochs={self.num_epochs}), got {epoch}")
        if self._plan is not None and self._plan.epoch == epoch and self._epoch == epoch:
            return
        agreed = self._closed and not self._table.pending and self._exchanges()
        if agreed:  # right after sync(), with nothing recorded since: its exchange checks that the ranks agree
            self._land()
        else:
            self._sync(epoch, wait=True)
        ahead, self._ahead = self._ahead, None  # drawn from the table as it is now, by the same rule
        self._epoch = epoch
        self._plan = self._adopt(ahead if ahead is not None and ahead.epoch == epoch else self._draw(epoch))

    def sync(self) -> None:
        """Bring the score table up to date with every loss recorded so far.

        Under torch.distributed this is collective (call it on every rank), but it does not
        wait: it takes this rank's recorded losses and starts the exchange that ``set_epoch``
        otherwise makes, on a background thread and a process group of its own, where the
        losses are also applied and the next epoch's draw is made while the training loop
        does its own epoch-end work. The next ``set_epoch`` (or ``state_dict()``,
        ``scores()``) waits for it, and raises there if the ranks disagree. At the end of an
        epoch it takes the exchange and the draw off the training thread; before
        ``state_dict()`` on a checkpointing rank it is required. Steps between ``sync()`` and
        ``set_epoch`` must be made on every rank or on none, as with any collective. In one
        process it only applies the recorded losses.
        """
        self._sync(self._epoch, wait=False)
        self._closed = True

    def _exchanges(self) -> bool:
        """Are losses shared with other ranks? (num_replicas > 1 and torch.distributed matches)"""
        if self.num_replicas == 1:
            return False
        world = world_size()
        if world == 1:
            return False
        if world != self.num_replicas:
            raise RuntimeError(f"InfoBatchSampler(num_replicas={self.num_replicas}) but the "
                               f"torch.distributed world size is {world}")
        return True

    def _sync(self, epoch: int, wait: bool) -> None:
        if not self._exchanges():
            self._table.flush()
            return
        self._land()  # the previous exchange first: the next one's check covers the table it leaves
        # records travel with the check in one collective when they fit this rank's share of the epoch
        capacity = 0 if self._plan is None else self._rank_length(self._plan.order.size)
        ahead = None if wait or epoch + 1 >= self.num_epochs else partial(self._draw, epoch + 1)
        self._inflight = self._table.start_exchange([self.seed, epoch, self._settings_crc()], capacity, ahead)
        if wait:
            self._land()

    def _land(self) -> None:
        """Wait for the exchange in flight, if any (no collective: every rank started it)."""
        exchange, self._inflight = self._inflight, None
        if exchange is None:
            return
        agree, self._ahead = self._table.land(exchange)
        if not agree:
            raise RuntimeError("InfoBatchSampler score tables, seeds, settings or epochs differ across ranks, so "
                               "ranks would prune differently: call set_epoch(epoch) with the same epoch on every "
                               "rank with torch.distributed initialised, and give every rank the same settings, "
                               "seed and initial_scores")

    def _settings_crc(self) -> int:
        settings = (self.num_samples, self.num_epochs, self.prune_ratio, self.delta, self.bands, self.shuffle,
                    self.drop_last)
        return zlib.crc32(repr(settings).encode())

    def _current_plan(self) -> Plan:
        if self._plan is None or self._plan.epoch != self._epoch:
            self._up_to_date()
            self._land()
            self._plan = self._adopt(self._draw(self._epoch))
        return self._plan

    def _draw(self, epoch: int) -> Plan:
        """The epoch's plan from the score table and settings alone (also run on the exchange's thread)."""
        prunable = []
        if epoch < self.pruning_epochs:
            eff, eligible = effective_scores(self._table.scores, self._table.seen, self._initial, self._initial_q)
            prunable = prunable_groups(eff, eligible, self.prune_ratio, self.bands)
        return draw_plan(epoch, self.num_samples, self.seed, prunable, self.shuffle)

    def _adopt(self, plan: Plan) -> Plan:
        epoch = plan.epoch
        if 0 <= epoch < self.num_epochs:
            self._pruned[epoch] = self.num_samples - plan.order.size
        self._updates_in_plan = 0
        self._iterated_plan = None
        self._closed = False
        return plan

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
        return self._rank_length(self._current_plan().order.size)

    def _rank_length(self, kept: int) -> int:
        r = self.num_replicas
        return kept // r if self.drop_last else math.ceil(kept / r)

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

    def _index_tensor(self, indices: IndexLike) -> torch.Tensor:
        """The indices as an int64 CPU tensor: a loader's index batch passes through as it is.

        Its range is checked by the weight lookup; anything else is validated and copied.
        """
        if type(indices) is torch.Tensor and indices.dtype is torch.int64 and indices.is_cpu and indices.ndim == 1:
            return indices
        return torch.from_numpy(self._indices(indices).copy())

    def weights(self, indices: IndexLike, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Loss weight of each sample this epoch: 1/(1-r) if kept from the pruned set, else 1."""
        w = torch.from_numpy(self._current_plan().weights[self._indices(indices)])
        return w.to(device=device, dtype=dtype)

    def weighted_mean(self, losses: torch.Tensor, indices: IndexLike) -> torch.Tensor:
        """The batch loss: per-sample losses times their weights, averaged over the batch size."""
        return self._weighted(self._index_tensor(indices), losses)

    def _weighted(self, idx: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """mean(losses * weights) as one dot product. The per-step hot path: it does the work
        first and only when that fails works out what was wrong with the input."""
        plan = self._plan
        if plan is None or plan.epoch != self._epoch:
            plan = self._current_plan()
        try:
            b = idx.shape[0]  # (shape, not len(): Tensor.__len__ is Python, ~1 us on this path)
            if b == 0 or losses.shape[0] != b:
                raise ValueError("empty or mismatched batch")
            w = plan.scaled_weights(b).index_select(0, idx)  # also the range check: it raises outside [0, N)
            if not (losses.is_cpu and losses.dtype is torch.float32):
                w = w.to(device=losses.device, dtype=losses.dtype, non_blocking=True)
            return torch.dot(losses, w)
        except (AttributeError, IndexError, RuntimeError, TypeError, ValueError):
            self._check_losses(losses, idx)
            self._indices(idx)  # raises for a wrong shape or range
            if len(idx) == 0:
                return losses.mean()  # an empty batch: NaN, the mean of nothing
            raise

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

        They are applied to the score table in bulk when it is next read: at ``set_epoch``,
        ``sync()``, ``scores()``, ``stats()`` or ``state_dict()`` -- under torch.distributed
        only at ``set_epoch`` and ``sync()``, which exchange every rank's records (indices as
        int64, exact at any dataset size; losses as float32), so every rank keeps the same
        table. Non-finite losses (e.g. an fp16 overflow step) are skipped then, with a
        warning: the sample keeps its score.
        """
        idx = self._index_tensor(indices)
        if idx.shape[0] and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(f"indices must be in [0, {self.num_samples}); got {int(idx.min())}..{int(idx.max())}")
        loss_t = (losses.detach() if isinstance(losses, torch.Tensor)
                  else torch.tensor(np.asarray(losses, dtype=np.float32)))
        if loss_t.ndim != 1 or loss_t.shape[0] != idx.shape[0]:
            raise ValueError(f"losses must be 1-D with one value per index: got shape {tuple(loss_t.shape)} "
                             f"for {idx.shape[0]} indices")
        self._table.record(idx, loss_t)
        self._updates_in_plan += 1

    def step(self, indices: IndexLike, losses: torch.Tensor) -> torch.Tensor:
        """Record the raw losses and return the batch loss: the one call a training step needs.

        No conversion, synchronisation or collective happens here: the step's indices and
        (detached) losses are kept as they are until the epoch boundary, so do not modify
        them in place afterwards (that is detected, as an error, when they are applied).
        """
        indices = self._index_tensor(indices)
        loss = self._weighted(indices, losses)
        self._table.record(indices, losses.detach())
        self._updates_in_plan += 1
        return loss

    # ----------------------------------------------------------------- accounting
    def _up_to_date(self) -> None:
        """Apply recorded losses before a read, where that needs no collective (one process)."""
        if not self._exchanges():
            self._table.flush()

    def stats(self) -> InfoBatchStats:
        self._up_to_date()
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
            nonfinite_losses_skipped=self._table.nonfinite,
        )

    def scores(self) -> np.ndarray:
        """The latest raw loss of each sample (a copy; 0 where none was recorded yet).

        Under torch.distributed: as of the last exchange (``set_epoch`` or ``sync()``).
        """
        self._up_to_date()
        self._land()
        return self._table.scores.copy()

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed job needs to prune identically, as tensors (torch.save/load-safe).

        Under torch.distributed call ``sync()`` on every rank first (``EpochLoop`` does at
        the end of each epoch): until then the other ranks' recent losses are theirs alone.
        """
        if self._exchanges():
            if self._table.pending:
                raise RuntimeError(f"InfoBatchSampler.state_dict() with {self._table.pending} steps' losses not yet "
                                   "exchanged between ranks: call sampler.sync() on every rank first, so that "
                                   "the checkpoint holds every rank's scores")
            self._land()
        else:
            self._table.flush()
        plan = self._plan
        table = self._table
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
            "scores": torch.from_numpy(table.scores.copy()),
            "seen": torch.from_numpy(table.seen.copy()),
            "initial": None if self._initial is None else torch.from_numpy(self._initial.copy()),
            "pruned": torch.from_numpy(self._pruned.copy()),
            "nonfinite": table.nonfinite,
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
        if self._inflight is not None:  # replaced by the loaded scores, but it writes to the table: let it finish
            self._inflight.job.wait()
        self._inflight = self._ahead = None
        self.seed = int(state["seed"])
        self._epoch = int(state["epoch"])
        self._table.load(state["scores"].numpy(), state["seen"].numpy(), int(state["nonfinite"]))
        if state["initial"] is None:
            self._initial = self._initial_q = None
        else:
            self._initial = state["initial"].numpy().astype(np.float32, copy=True)
            self._initial_q = mid_ranks(self._initial.astype(np.float64))
        pruned = state["pruned"].numpy().astype(np.int64, copy=True)
        self._pruned = np.full(self.num_epochs, -1, dtype=np.int64)
        m = min(pruned.size, self.num_epochs)
        self._pruned[:m] = pruned[:m]
        self._plan = None
        if state["plan_order"] is not None and int(state["plan_epoch"]) == self._epoch:
            self._plan = Plan(epoch=self._epoch,
                               order=state["plan_order"].numpy().astype(np.int64, copy=True),
                               weights=state["plan_weights"].numpy().astype(np.float32, copy=True))
        self._updates_in_plan = 0
        self._iterated_plan = None
        self._closed = False  # the loaded table is checked across ranks at the next set_epoch
