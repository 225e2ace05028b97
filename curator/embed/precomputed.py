"""Precomputed embeddings: the input's ``embedding`` column (e.g. LAION-style CLIP features)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from curator.config import EmbedderConfig
from curator.embed.base import EmbedderError, Embeddings, normalise_rows
from curator.records import Fault, Limits


class PrecomputedEmbedder:
    """Uses the input's ``embedding`` column as the (image / primary) modality.

    The dimension is fixed by ``setup(dim=...)`` or else by the first valid vector seen.
    When several embedders run in parallel (an actor pool), pass ``dim`` so they cannot
    disagree about which rows are the wrong size.
    """

    text_dim: int | None = None

    def __init__(self, cfg: EmbedderConfig | None = None, limits: Limits | None = None) -> None:
        self.cfg = cfg or EmbedderConfig(kind="precomputed")
        self.limits = limits or Limits()
        self.image_dim: int | None = self.limits.embedding_dim
        self._dim_source = "Limits.embedding_dim" if self.image_dim else ""

    @property
    def model_id(self) -> str:
        return f"precomputed:{self.image_dim}" if self.image_dim else "precomputed"

    def setup(self, dim: int | None = None) -> None:
        """Nothing to load; optionally fix the dimension up front."""
        if dim is None:
            return
        if dim < 1:
            raise EmbedderError(f"precomputed embedding dimension must be >= 1, got {dim}")
        if self.image_dim is not None and self.image_dim != dim:
            raise EmbedderError(
                f"precomputed embedding dimension already fixed at {self.image_dim} (by {self._dim_source}), "
                f"cannot change it to {dim}"
            )
        self.image_dim, self._dim_source = dim, "setup(dim=...)"

    def embed(self, samples: pa.Table) -> Embeddings:
        n = samples.num_rows
        errors: dict[int, Fault] = {}
        vecs: list[np.ndarray | None] = [None] * n
        if "embedding" not in samples.column_names:
            raw: Sequence[Any] = [None] * n
        else:
            raw = samples.column("embedding").to_numpy(zero_copy_only=False)
        for i, v in enumerate(raw):
            if v is None:
                errors[i] = Fault("bad-embedding", "no precomputed embedding in this record; the precomputed "
                                  "embedder needs an 'embedding' list (or use --embedder.kind clip to embed images "
                                  "and text)")
                continue
            a = np.asarray(v, dtype=np.float32).reshape(-1)
            if a.size == 0:
                errors[i] = Fault("bad-embedding", "embedding is empty")
            elif not np.isfinite(a).all():
                errors[i] = Fault("bad-embedding", "embedding contains NaN or infinite values")
            elif not np.any(a):
                errors[i] = Fault("bad-embedding", "embedding is all zeros (it has no direction to normalise)")
            elif self.image_dim is None:
                self.image_dim, self._dim_source = int(a.size), "the first embedding seen"
                vecs[i] = a
            elif a.size != self.image_dim:
                errors[i] = Fault("bad-embedding", f"embedding has {a.size} values, expected {self.image_dim} "
                                                   f"(fixed by {self._dim_source})")
            else:
                vecs[i] = a
        has = np.array([v is not None for v in vecs], dtype=bool)
        image = None
        if has.any():
            assert self.image_dim is not None
            mat = np.zeros((n, self.image_dim), np.float32)
            mat[has] = np.stack([v for v in vecs if v is not None])
            image, good = normalise_rows(mat)
            for j in np.flatnonzero(has & ~good):  # overflowed to inf in float32
                errors[int(j)] = Fault("bad-embedding", "embedding norm is not finite in float32")
            has &= good
        return Embeddings(image=image, text=None, has_image=has, has_text=np.zeros(n, bool), errors=errors)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise EmbedderError(
            "the precomputed embedder has no text model, so it cannot embed new captions (recaption scoring); "
            "use --embedder.kind clip, or turn the recaption hook off"
        )
