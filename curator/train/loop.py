"""One epoch of training and evaluation with the InfoBatch sampler, in one process or under DDP."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from curator.train.dist import all_reduce_sum
from curator.train.loader import indexed_loader
from curator.train.sampler import InfoBatchSampler
from curator.train.tasks import TrainSettings

__all__ = ["SAMPLER_PARTS", "EpochLoop", "TimedSampler", "make_sampler"]

_T = TypeVar("_T")


# --------------------------------------------------------------------- the sampler, timed
#: The sampler's calls, timed apart: ``draw`` (set_epoch's pruning draw), ``iter`` (handing the
#: loader its indices), ``step`` (recording losses and weighting the batch loss), ``sync`` (the
#: epoch's losses applied -- under torch.distributed packed and their exchange started) and
#: ``land`` (waiting for that exchange and applying it, wherever that happens).
SAMPLER_PARTS = ("draw", "iter", "step", "sync", "land")


class TimedSampler(InfoBatchSampler):
    """An InfoBatchSampler that adds up the wall time spent inside its own calls, per part.

    ``seconds`` is what the sampler costs a training loop; ``part_seconds`` says where
    (keys: :data:`SAMPLER_PARTS`; a call inside another counts only for its own part), so a
    cost can be traced to the per-step or the per-epoch work. ``background_cpu_s`` is the CPU
    time the exchanges took on their background thread, off the training thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.part_seconds = dict.fromkeys(SAMPLER_PARTS, 0.0)
        self.background_cpu_s = 0.0
        self._inner = 0.0  # time of the timed calls made inside the one being timed

    @property
    def seconds(self) -> float:
        return sum(self.part_seconds.values())

    def _timed(self, part: str, fn: Callable[..., _T], *args: Any) -> _T:
        outer, self._inner = self._inner, 0.0
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            dt = time.perf_counter() - t
            self.part_seconds[part] += dt - self._inner
            self._inner = outer + dt

    def set_epoch(self, epoch: int) -> None:
        self._timed("draw", super().set_epoch, epoch)

    def sync(self) -> None:
        self._timed("sync", super().sync)

    def __iter__(self) -> Iterator[int]:
        return self._timed("iter", super().__iter__)

    def step(self, indices: Any, losses: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()  # timed inline: the per-step path, and it calls no other timed part
        try:
            return super().step(indices, losses)
        finally:
            self.part_seconds["step"] += time.perf_counter() - t

    def _land(self) -> None:
        exchange = self._inflight
        self._timed("land", super()._land)
        if exchange is not None:
            self.background_cpu_s += exchange.job.cpu_s


def make_sampler(n: int, s: TrainSettings, num_replicas: int = 1, rank: int = 0,
                 init: np.ndarray | None = None) -> TimedSampler:
    kw: dict[str, Any] = {"bands": [tuple(b) for b in s.bands]} if s.bands else {"prune_ratio": s.prune_ratio}
    return TimedSampler(n, s.epochs, delta=s.delta, seed=s.seed, num_replicas=num_replicas, rank=rank,
                        initial_scores=init if s.init_from_gain else None, **kw)


@dataclass
class EpochLoop:
    """Trains ``model`` on ``train_ds`` with an InfoBatch sampler, one epoch per :meth:`run_epoch`.

    ``model`` may already be wrapped for data parallelism (DDP); ``sampler`` decides this
    rank's share. The learning rate follows a cosine over the whole run, stepped per batch
    with the *exact* length of each (pruned) epoch, after ``warmup_epochs`` of linear warm-up.
    ``eval_ds`` is sharded across ranks without padding and the sums all-reduced, so
    the reported accuracy is over every held-out item exactly once.
    """

    model: nn.Module
    train_ds: Dataset
    eval_ds: Dataset | None
    settings: TrainSettings
    sampler: TimedSampler
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        world, rank = self.sampler.num_replicas, self.sampler.rank
        self.local_batch = max(1, s.batch_size // world)
        pin = self.device.type == "cuda"
        self.loader = indexed_loader(self.train_ds, self.sampler, batch_size=self.local_batch,
                                     num_workers=s.loader_workers, pin_memory=pin,
                                     persistent_workers=s.loader_workers > 0)
        self.eval_loader: DataLoader | None = None
        if self.eval_ds is not None and len(self.eval_ds) > 0:  # type: ignore[arg-type]
            shard = Subset(self.eval_ds, range(rank, len(self.eval_ds), world))  # type: ignore[arg-type]
            self.eval_loader = DataLoader(shard, batch_size=max(256, self.local_batch), shuffle=False,
                                          num_workers=s.loader_workers, pin_memory=pin)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if s.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=s.lr, momentum=0.9, nesterov=True, weight_decay=s.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)

    def lr_at(self, t: float) -> float:
        """Learning rate at fractional epoch ``t``."""
        s = self.settings
        if s.warmup_epochs > 0 and t < s.warmup_epochs:
            return s.lr * (t + 1e-3) / s.warmup_epochs
        span = max(1e-9, s.epochs - s.warmup_epochs)
        return 0.5 * s.lr * (1.0 + math.cos(math.pi * min(1.0, (t - s.warmup_epochs) / span)))

    def run_epoch(self, epoch: int, evaluate: bool = True) -> dict[str, Any]:
        """Train one epoch, evaluate (unless told not to), and return the epoch's metrics.

        The metrics are identical on every rank; ``train_s`` excludes the evaluation.
        """
        t0 = time.perf_counter()
        parts_before = dict(self.sampler.part_seconds)
        background_before = self.sampler.background_cpu_s
        self.sampler.set_epoch(epoch)
        steps = len(self.loader)
        self.model.train()
        loss_sum = correct = seen = 0.0
        for i, (idx, (x, y)) in enumerate(self.loader):
            lr = self.lr_at(epoch + i / max(1, steps))
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits = self.model(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            loss = self.sampler.step(idx, losses)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                loss_sum += float(losses.sum())
                correct += float((logits.argmax(1) == y).sum())
                seen += int(y.shape[0])
        self.sampler.sync()  # the epoch's losses applied (exchanged between ranks) before anyone checkpoints
        train_s = time.perf_counter() - t0
        parts = [self.sampler.part_seconds[k] - parts_before[k] for k in SAMPLER_PARTS]
        background = self.sampler.background_cpu_s - background_before
        loss_sum, correct, seen, train_s_all, background_all, *parts_all = all_reduce_sum(
            [loss_sum, correct, seen, train_s, background, *parts], self.device)
        sampler_s_all = sum(parts_all)
        ev_loss, ev_acc, ev_n = self.evaluate() if evaluate else (float("nan"), float("nan"), 0)
        st = self.sampler.stats()
        world = self.sampler.num_replicas
        m = {
            "epoch": epoch,
            "train_loss": loss_sum / max(1.0, seen),
            "train_acc": correct / max(1.0, seen),
            "eval_loss": ev_loss,
            "eval_acc": ev_acc,
            "eval_items": ev_n,
            "kept": st.kept_this_epoch,
            "pruned": st.pruned_this_epoch,
            "total_pruned": st.total_pruned,
            "saving": st.saving,  # achieved so far: sum(pruned) / (C * N)
            "saving_projected": st.saving_projected,
            "steps": steps,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_s": train_s_all / world,
            "sampler_s": sampler_s_all / world,
            "sampler_overhead": sampler_s_all / max(1e-12, train_s_all),
            **{f"sampler_{k}_s": v / world for k, v in zip(SAMPLER_PARTS, parts_all, strict=True)},
            "sampler_background_cpu_s": background_all / world,  # the exchanges' thread, off the training thread
            "epoch_s": time.perf_counter() - t0,
        }
        self.history.append(m)
        return m

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float, int]:
        """(mean loss, accuracy, items) over the held-out set, across all ranks."""
        if self.eval_loader is None:
            return float("nan"), float("nan"), 0
        self.model.eval()
        loss_sum = correct = n = 0.0
        for x, y in self.eval_loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits = self.model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            n += int(y.shape[0])
        loss_sum, correct, n = all_reduce_sum([loss_sum, correct, n], self.device)
        return loss_sum / max(1.0, n), correct / max(1.0, n), int(n)

    # ----------------------------------------------------------------- checkpoints
    def _bare_model(self) -> nn.Module:
        return getattr(self.model, "module", self.model)  # unwrap DDP

    def state_dict(self, epoch: int, meta: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": epoch, "model": self._bare_model().state_dict(),
                "optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict(),
                "history": list(self.history), "settings": self.settings.as_dict(), "meta": meta}

    def save(self, directory: str | Path, epoch: int, meta: dict[str, Any]) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(epoch, meta), d / "checkpoint.pt")
        return d

    def load(self, directory: str | Path) -> int:
        """Restore from a checkpoint directory; returns the next epoch to run."""
        state = torch.load(Path(directory) / "checkpoint.pt", map_location=self.device, weights_only=False)
        self._bare_model().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.history = list(state["history"])
        return int(state["epoch"]) + 1
