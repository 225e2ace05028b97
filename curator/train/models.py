"""The built-in models: a linear probe and an MLP on standardised embeddings, a small CNN."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from curator.train.datasets import ArrowEmbeddingDataset
from curator.train.tasks import TASKS

__all__ = ["Standardize", "build_model", "feature_stats", "load_model"]


class Standardize(nn.Module):
    """(x - mean) / std with the training split's statistics, saved with the model."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone().float())
        self.register_buffer("std", std.clone().float().clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build_model(task: str, sample_shape: Sequence[int], num_classes: int, hidden: int = 256,
                feature_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """The built-in model of ``task`` for inputs of ``sample_shape`` (without the batch dim)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if task in ("linear", "mlp"):
        (d,) = tuple(sample_shape)
        mean, std = feature_stats if feature_stats is not None else (torch.zeros(d), torch.ones(d))
        norm = Standardize(mean, std)
        if task == "linear":
            return nn.Sequential(norm, nn.Linear(d, num_classes))
        return nn.Sequential(norm, nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                             nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
    if task == "cnn":
        c, h, w = tuple(sample_shape)
        layers: list[nn.Module] = [_conv_block(c, 32), _conv_block(32, 32)]
        if min(h, w) >= 16:
            layers.append(nn.MaxPool2d(2))
        layers += [_conv_block(32, 64), _conv_block(64, 64), nn.MaxPool2d(2), _conv_block(64, 128),
                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes)]
        return nn.Sequential(*layers)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def feature_stats(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Mean and std of an embedding dataset's features (None for images: BatchNorm handles those)."""
    base, idx = ds, None
    if isinstance(ds, Subset):
        base, idx = ds.dataset, torch.as_tensor(list(ds.indices), dtype=torch.int64)
    if not isinstance(base, ArrowEmbeddingDataset):
        return None
    x = base.x if idx is None else base.x[idx]
    return x.mean(0), x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[1])


def load_model(checkpoint_dir: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The trained model from a checkpoint written by :class:`EpochLoop` users (``checkpoint.pt``)."""
    state = torch.load(Path(checkpoint_dir) / "checkpoint.pt", map_location=map_location, weights_only=False)
    meta = state["meta"]
    model = build_model(meta["task"], meta["sample_shape"], meta["num_classes"], meta["hidden"])
    model.load_state_dict(state["model"])
    return model.eval()
