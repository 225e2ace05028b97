"""Training on a curated set with the InfoBatch sampler: datasets, models, the epoch loop.

Everything a training worker needs that does not need Ray: the curated set's committed
Parquet parts read with pyarrow, datasets over Arrow columns (the stored ``embedding``
as a float tensor, the stored ``image`` PNG/JPEG bytes decoded into a tensor), the three
built-in models, and :class:`EpochLoop`, one epoch of training plus evaluation with the
sampler. ``pipelines/train.py`` runs it inside Ray Train workers; the InfoBatch benchmark
runs it in-process. It works the same in one process and under ``torch.distributed``
(the sampler shares losses across ranks; the loop all-reduces the epoch's metrics).

Built-in tasks:

- ``linear``: a linear probe on the stored embeddings (standardised with the training
  split's mean and std, kept as buffers so a checkpoint carries them);
- ``mlp``: two hidden layers on the same standardised embeddings;
- ``cnn``: a small BatchNorm CNN (three conv blocks, global average pooling) on the
  stored images, any size from 8x8 up.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from curator.infobatch import MULTI_BAND, InfoBatchSampler, indexed_loader

__all__ = [
    "TASKS",
    "ArrowEmbeddingDataset",
    "ArrowImageDataset",
    "EpochLoop",
    "TimedSampler",
    "TrainSettings",
    "build_dataset",
    "build_model",
    "curated_parts",
    "initial_scores",
    "load_model",
    "parse_bands",
    "read_parts",
    "split_eval",
]

TASKS = ("linear", "mlp", "cnn")

#: Columns each task reads from the curated set (besides the label).
TASK_COLUMNS = {"linear": ["id", "label", "embedding", "gain_norm"],
                "mlp": ["id", "label", "embedding", "gain_norm"],
                "cnn": ["id", "label", "image", "gain_norm"]}

#: Decode every image up front when the decoded set fits in this many bytes.
PRELOAD_BYTES = 1 << 30


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
        return [list(b) for b in MULTI_BAND]
    out = []
    for part in spec.split(","):
        q, sep, f = part.partition(":")
        if not sep:
            raise ValueError(f"bands must look like 'paper' or 'QUANTILE:KEEP,...' (e.g. 0.2:0.25,0.85:0.5), "
                             f"got {spec!r}")
        out.append([float(q), float(f)])
    return out


# --------------------------------------------------------------------- reading the curated set
def curated_parts(run_dir: str | Path) -> list[str]:
    """The committed Parquet parts of a run's ``kept`` table: a fixed snapshot to train on.

    Parts are append-only and never rewritten, so a list taken once names the same rows
    for as long as the run exists, even while an ingest keeps committing: every worker
    (and a restarted one) reads exactly this list.
    """
    from curator.store import committed_parts

    parts = committed_parts(run_dir)["kept"]
    if not parts:
        raise ValueError(f"{run_dir} has no committed kept items yet: nothing to train on")
    return [str(p.resolve()) for p in parts]


def read_parts(parts: Sequence[str | Path], columns: Sequence[str] | None = None) -> pa.Table:
    """Concatenate Parquet files (only ``columns`` that exist), dropping rows without a label."""
    tables = []
    for p in parts:
        schema = pq.read_schema(p)
        cols = None if columns is None else [c for c in columns if c in schema.names]
        tables.append(pq.read_table(p, columns=cols))
    tbl = pa.concat_tables(tables, promote_options="default")
    if "label" not in tbl.column_names:
        raise ValueError("the curated set has no 'label' column: the built-in tasks are classification")
    return tbl.filter(pc.is_valid(tbl.column("label")))


def split_eval(tbl: pa.Table, share: float) -> tuple[pa.Table, pa.Table]:
    """A deterministic held-out share by a hash of each item's id: (train, eval).

    The same id always lands on the same side, whatever the seed, the row order or the
    number of workers, so runs with different settings evaluate on the same items.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"eval share must be in [0, 1), got {share}")
    if share == 0.0:
        return tbl, tbl.slice(0, 0)
    ids = tbl.column("id").to_pylist()
    bucket = np.fromiter((zlib.crc32(str(i).encode()) % 10_000 for i in ids), dtype=np.int64, count=len(ids))
    held = bucket < int(round(share * 10_000))
    return tbl.filter(pa.array(~held)), tbl.filter(pa.array(held))


def labels_of(tbl: pa.Table) -> np.ndarray:
    return np.array(tbl.column("label").to_numpy(zero_copy_only=False), dtype=np.int64, copy=True)


def embedding_matrix(tbl: pa.Table, column: str = "embedding") -> np.ndarray:
    """A fixed-size-list (or list) float column as a float32 [N, D] array."""
    col = tbl.column(column).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), np.float32)
    if col.null_count:
        raise ValueError(f"{col.null_count} rows have no {column!r}; re-run ingest or pick the cnn task")
    if pa.types.is_fixed_size_list(col.type):
        dim = col.type.list_size
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return np.array(flat.reshape(len(col), dim), dtype=np.float32, copy=True)
    return np.asarray(col.to_pylist(), dtype=np.float32)


def initial_scores(tbl: pa.Table, column: str = "gain_norm") -> np.ndarray:
    """The sampler's initial scores from the stored InfoGrowth gains (missing -> 1.0, i.e. informative)."""
    if column not in tbl.column_names:
        raise ValueError(f"the curated set has no {column!r} column to initialise scores from")
    g = tbl.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    return np.where(np.isfinite(g), g, 1.0)


# --------------------------------------------------------------------- datasets
class ArrowEmbeddingDataset(Dataset):
    """(embedding, label) pairs from the curated set's ``embedding`` column."""

    def __init__(self, tbl: pa.Table, column: str = "embedding") -> None:
        self.x = torch.from_numpy(embedding_matrix(tbl, column))
        self.y = torch.from_numpy(labels_of(tbl))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        t = torch.as_tensor(idx, dtype=torch.int64)
        return list(zip(self.x[t], self.y[t], strict=True))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _image_mode(data: bytes) -> str:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.mode


class ArrowImageDataset(Dataset):
    """(image tensor in [0, 1], label) pairs from the stored ``image`` bytes.

    Decoding goes through curator's guarded decoder (allowed formats, pixel limits).
    ``channels`` None: 1 when the first image is grayscale, else 3. ``size`` None: the
    first image's size; others are resized to it. Small sets are decoded once up front;
    larger ones item by item (use loader workers then).
    """

    def __init__(self, tbl: pa.Table, size: tuple[int, int] | None = None, channels: int | None = None,
                 preload: bool | None = None) -> None:
        from curator.embed.images import decode_image

        self._decode_image = decode_image
        self.images = tbl.column("image").combine_chunks()
        if self.images.null_count:
            raise ValueError(f"{self.images.null_count} rows carry no image bytes (stored by URI only?); "
                             "the cnn task needs store.store_images = true")
        self.y = torch.from_numpy(labels_of(tbl))
        n = len(self.images)
        if n == 0:
            raise ValueError("no images to train on")
        first = self.images[0].as_py()
        if channels is None:
            channels = 1 if _image_mode(first) in ("1", "L", "LA", "I", "I;16", "F") else 3
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels
        if size is None:
            w, h = decode_image(first).size
            size = (h, w)
        self.size = (int(size[0]), int(size[1]))
        self._cache: torch.Tensor | None = None
        if preload is None:
            preload = n * channels * self.size[0] * self.size[1] <= PRELOAD_BYTES
        if preload:
            self._cache = torch.stack([self._decode(i) for i in range(n)])

    def _decode(self, i: int) -> torch.Tensor:
        im = self._decode_image(self.images[i].as_py())
        if self.channels == 1:
            im = im.convert("L")
        if (im.size[1], im.size[0]) != self.size:
            im = im.resize((self.size[1], self.size[0]))
        arr = np.asarray(im, dtype=np.uint8)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.array(arr, copy=True))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self._cache[i] if self._cache is not None else self._decode(i)
        return img.float().div_(255.0), self.y[i]

    def __getitems__(self, idx: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._cache is None:
            return [self[i] for i in idx]
        t = torch.as_tensor(idx, dtype=torch.int64)
        return list(zip(self._cache[t].float().div_(255.0), self.y[t], strict=True))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, *self.size)


def build_dataset(task: str, tbl: pa.Table, image_size: tuple[int, int] | None = None,
                  channels: int | None = None) -> ArrowEmbeddingDataset | ArrowImageDataset:
    if task in ("linear", "mlp"):
        return ArrowEmbeddingDataset(tbl)
    if task == "cnn":
        return ArrowImageDataset(tbl, size=image_size, channels=channels)
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


# --------------------------------------------------------------------- models
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


# --------------------------------------------------------------------- the sampler, timed
class TimedSampler(InfoBatchSampler):
    """An InfoBatchSampler that adds up the wall time spent inside its own calls.

    Counted: ``set_epoch`` (the draw), ``__iter__`` (handing the loader its indices) and
    ``step`` (recording losses -- an all-gather under torch.distributed -- and weighting
    the batch loss). ``seconds`` is what the sampler costs a training loop.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0

    def set_epoch(self, epoch: int) -> None:
        t = time.perf_counter()
        try:
            super().set_epoch(epoch)
        finally:
            self.seconds += time.perf_counter() - t

    def __iter__(self) -> Iterator[int]:
        t = time.perf_counter()
        try:
            return super().__iter__()
        finally:
            self.seconds += time.perf_counter() - t

    def step(self, indices: Any, losses: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        try:
            return super().step(indices, losses)
        finally:
            self.seconds += time.perf_counter() - t


def make_sampler(n: int, s: TrainSettings, num_replicas: int = 1, rank: int = 0,
                 init: np.ndarray | None = None) -> TimedSampler:
    kw: dict[str, Any] = {"bands": [tuple(b) for b in s.bands]} if s.bands else {"prune_ratio": s.prune_ratio}
    return TimedSampler(n, s.epochs, delta=s.delta, seed=s.seed, num_replicas=num_replicas, rank=rank,
                        initial_scores=init if s.init_from_gain else None, **kw)


# --------------------------------------------------------------------- the epoch loop
def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not _dist():
        return values
    dev = device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(t)
    return t.cpu().tolist()


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
        sampler_before = self.sampler.seconds
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
        train_s = time.perf_counter() - t0
        sampler_s = self.sampler.seconds - sampler_before
        loss_sum, correct, seen, sampler_s_all, train_s_all = _all_reduce_sum(
            [loss_sum, correct, seen, sampler_s, train_s], self.device)
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
        loss_sum, correct, n = _all_reduce_sum([loss_sum, correct, n], self.device)
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
