"""Embeddings, the batch-out container of every embedder, and the protocol embedders follow.

An embedder is a plain object: construct it anywhere, call `setup()` once in the process that
will use it (a Ray actor, a test), then `embed(table)` per batch. Items that cannot be embedded
(an undecodable image, a NaN vector) are reported in `Embeddings.errors` rather than raised, so
one bad item never fails a batch. This module imports neither torch nor open_clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from curator.embed.hashes import ContentHashes
from curator.records import Fault


class EmbedderError(RuntimeError):
    """The embedder cannot do what was asked; the message says why and what to do."""


class ModelLoadError(EmbedderError):
    """The model or its weights could not be loaded (offline, bad path, wrong checkpoint)."""


# --------------------------------------------------------------------------------------
# Embeddings: the batch-out container
# --------------------------------------------------------------------------------------


@dataclass
class Embeddings:
    """Per-row embeddings of one batch, in the batch's row order.

    ``image`` / ``text`` are (n, d) float32 with unit-norm rows where ``has_image`` /
    ``has_text`` is true and zero rows elsewhere; a field is None when no row of the
    batch has that modality (or the embedder has none, like ``text`` for precomputed).
    Rows in ``errors`` could not be embedded: they are zero, flagged false, and the
    caller must reject them with the given code and reason. ``hashes`` are the rows' model-free
    content hashes (`curator.embed.hashes`), where the embedder saw a payload to hash.
    """

    image: np.ndarray | None
    text: np.ndarray | None
    has_image: np.ndarray
    has_text: np.ndarray
    errors: dict[int, Fault] = field(default_factory=dict)
    hashes: ContentHashes | None = None

    def __post_init__(self) -> None:
        n = len(self.has_image)
        if len(self.has_text) != n:
            raise ValueError(f"has_image has {n} rows but has_text has {len(self.has_text)}")
        for name in ("image", "text"):
            x = getattr(self, name)
            if x is not None and (x.ndim != 2 or x.shape[0] != n):
                raise ValueError(f"Embeddings.{name} must be ({n}, d), got {x.shape}")

    def __len__(self) -> int:
        return len(self.has_image)

    @property
    def ok(self) -> np.ndarray:
        """Bool mask of rows that were embedded (not in ``errors``)."""
        mask = np.ones(len(self), dtype=bool)
        if self.errors:
            mask[list(self.errors)] = False
        return mask

    def take(self, rows: Sequence[int] | np.ndarray) -> Embeddings:
        """The given rows (indices or a bool mask), in that order; errors are renumbered."""
        idx = np.asarray(rows)
        if idx.dtype == bool:
            if len(idx) != len(self):
                raise ValueError(f"mask has {len(idx)} entries for {len(self)} rows")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        errors = {new: self.errors[int(old)] for new, old in enumerate(idx) if int(old) in self.errors}
        return Embeddings(
            image=None if self.image is None else self.image[idx],
            text=None if self.text is None else self.text[idx],
            has_image=self.has_image[idx],
            has_text=self.has_text[idx],
            errors=errors,
            hashes=None if self.hashes is None else self.hashes.take(idx),
        )

    @classmethod
    def concat(cls, parts: Sequence[Embeddings]) -> Embeddings:
        """Stack batches in order (e.g. to rebuild stream order after parallel embedding)."""
        if not parts:
            raise ValueError("Embeddings.concat needs at least one part")
        sizes = [len(p) for p in parts]
        starts = np.cumsum([0, *sizes[:-1]])

        def stack(name: str) -> np.ndarray | None:
            xs = [getattr(p, name) for p in parts]
            dims = {x.shape[1] for x in xs if x is not None}
            if not dims:
                return None
            if len(dims) > 1:
                raise ValueError(f"cannot concatenate {name} embeddings of different dimensions {sorted(dims)}")
            d = dims.pop()
            return np.concatenate(
                [x if x is not None else np.zeros((n, d), np.float32) for x, n in zip(xs, sizes, strict=True)]
            )

        errors = {int(s) + r: why for s, p in zip(starts, parts, strict=True) for r, why in p.errors.items()}
        return cls(
            image=stack("image"),
            text=stack("text"),
            has_image=np.concatenate([p.has_image for p in parts]),
            has_text=np.concatenate([p.has_text for p in parts]),
            errors=errors,
            hashes=ContentHashes.concat([p.hashes if p.hashes is not None else ContentHashes.empty(len(p))
                                         for p in parts]) if any(p.hashes is not None for p in parts) else None,
        )


def normalise_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows in float32; returns (normalised, rows that were finite and non-zero)."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    x = np.where(finite[:, None], x, 0.0).astype(np.float32, copy=False)
    norms = np.linalg.norm(x.astype(np.float64), axis=1)
    good = finite & (norms > 0)
    out = np.zeros_like(x)
    out[good] = (x[good] / norms[good, None]).astype(np.float32)
    return out, good


def column(samples: pa.Table, name: str) -> list[Any]:
    if name in samples.column_names:
        return samples.column(name).to_pylist()
    return [None] * samples.num_rows


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """What the pipeline needs from an embedder (see `build_embedder`)."""

    image_dim: int | None
    text_dim: int | None

    @property
    def model_id(self) -> str:
        """Recorded with every decision, e.g. ``open_clip:ViT-B-32/laion2b_s34b_b79k``, ``precomputed:512``."""
        ...

    def setup(self) -> None:
        """Load the model (once; calling again is a no-op)."""
        ...

    def embed(self, samples: pa.Table) -> Embeddings:
        """Embed a batch with `curator.records.SAMPLE_SCHEMA` columns."""
        ...

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm text embeddings (n, text_dim), e.g. to score a proposed recaption."""
        ...
