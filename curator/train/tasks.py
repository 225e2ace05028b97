"""The built-in training tasks and the settings of one training run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TASKS", "TASK_COLUMNS", "TrainSettings", "parse_bands"]

TASKS = ("linear", "mlp", "cnn")

#: Columns each task reads from the curated set (besides the label).
TASK_COLUMNS = {"linear": ["id", "label", "embedding", "gain_norm"],
                "mlp": ["id", "label", "embedding", "gain_norm"],
                "cnn": ["id", "label", "image", "gain_norm"]}


# --------------------------------------------------------------------- settings
@dataclass
class TrainSettings:
    """One training run. ``batch_size`` is global: each of R workers takes batch_size // R."""

    task: str = "mlp"
    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9, nesterov)
    warmup_epochs: float = 0.0
    hidden: int = 256
    prune_ratio: float = 0.5  # 0 = full data (the sampler still runs, nothing is pruned)
    delta: float = 0.875
    bands: list[list[float]] | None = None  # multi-band rule instead of prune_ratio
    init_from_gain: bool = False  # initial scores from the stored InfoGrowth gain_norm
    seed: int = 0
    loader_workers: int = 0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_bands(spec: str | None) -> list[list[float]] | None:
    """``"paper"`` -> the paper's multi-band rule; ``"0.2:0.25,0.85:0.5"`` -> those (quantile, keep) pairs."""
    if not spec:
        return None
    if spec.strip().lower() in ("paper", "multi", "default"):
        from curator.train.rule import MULTI_BAND  # needs torch: only when asked for

        return [list(b) for b in MULTI_BAND]
    out = []
    for part in spec.split(","):
        q, sep, f = part.partition(":")
        if not sep:
            raise ValueError(f"bands must look like 'paper' or 'QUANTILE:KEEP,...' (e.g. 0.2:0.25,0.85:0.5), "
                             f"got {spec!r}")
        out.append([float(q), float(f)])
    return out
