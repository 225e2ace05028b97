"""The curated set as training data: its committed Parquet parts, datasets over its columns.

The stored ``embedding`` becomes a float tensor, the stored ``image`` PNG/JPEG bytes are
decoded (through curator's guarded decoder) into a tensor.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from curator.train.tasks import TASKS

__all__ = [
    "PRELOAD_BYTES",
    "ArrowEmbeddingDataset",
    "ArrowImageDataset",
    "build_dataset",
    "curated_parts",
    "embedding_matrix",
    "initial_scores",
    "labels_of",
    "read_parts",
    "split_eval",
]

#: Decode every image up front when the decoded set fits in this many bytes.
PRELOAD_BYTES = 1 << 30


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
