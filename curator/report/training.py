"""Training runs on a curated set, read from the summaries `curator train` writes.

``curator train RUN_DIR`` stores ``RUN_DIR/train/<name>/train_summary.json`` with a per-epoch
``history``. The reader is tolerant: a summary another version wrote (more fields, fewer
fields, a half-written file) yields what it can and never fails the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY = "train_summary.json"
#: Per-epoch fields drawn as curves when present (others are listed in the table only).
CURVES = ("eval_acc", "train_loss")
#: Columns of the per-epoch table, when present, in this order.
COLUMNS = ("epoch", "train_loss", "eval_acc", "kept", "pruned", "saving", "epoch_s")


@dataclass
class TrainingRun:
    name: str
    path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    workers: Any = None
    use_gpu: Any = None
    wall_s: float | None = None

    @property
    def epochs(self) -> list[int]:
        return [int(h["epoch"]) if _num(h.get("epoch")) is not None else i for i, h in enumerate(self.history)]

    def series(self, key: str) -> list[float | None]:
        return [_num(h.get(key)) for h in self.history]

    @property
    def saving(self) -> float | None:
        """The achieved InfoBatch saving, sum(pruned) / (C * N), as of the last epoch."""
        vals = [v for v in self.series("saving") if v is not None]
        return vals[-1] if vals else None

    @property
    def final_accuracy(self) -> float | None:
        vals = [v for v in self.series("eval_acc") if v is not None]
        return vals[-1] if vals else None

    def columns(self) -> list[str]:
        present = {k for h in self.history for k in h}
        return [c for c in COLUMNS if c in present]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def training_runs(run_dir: str | Path) -> list[TrainingRun]:
    """Every readable training summary under RUN_DIR/train (one or two folders deep), oldest first."""
    root = Path(run_dir) / "train"
    if not root.is_dir():
        return []
    found = sorted({*root.glob(f"*/{SUMMARY}"), *root.glob(f"*/*/{SUMMARY}")}, key=lambda p: (p.stat().st_mtime, p))
    runs = []
    for p in found:
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        hist = [h for h in data.get("history") or [] if isinstance(h, dict)] if isinstance(
            data.get("history"), list) else []
        runs.append(TrainingRun(name=str(data.get("name") or p.parent.name), path=p, history=hist,
                                workers=data.get("workers"), use_gpu=data.get("use_gpu"),
                                wall_s=_num(data.get("wall_s"))))
    return runs
