"""Embedding: turn a batch of samples into L2-normalised image and text vectors.

One front door, `build_embedder(cfg)`, whatever the source of the vectors: an open_clip model
(`curator.embed.clip`) or embeddings the input already carries (`curator.embed.precomputed`).
"""

from __future__ import annotations

from curator.config import EmbedderConfig
from curator.embed.base import Embedder, EmbedderError, Embeddings, ModelLoadError
from curator.embed.clip import MODEL_CONFIG_DIR, ClipEmbedder, tiny_model_config
from curator.embed.precomputed import PrecomputedEmbedder
from curator.records import Limits

#: Embedder kinds by `embedder.kind`.
EMBEDDERS: dict[str, type] = {"clip": ClipEmbedder, "precomputed": PrecomputedEmbedder}


def build_embedder(cfg: EmbedderConfig, limits: Limits | None = None) -> Embedder:
    """The one way to get an embedder from configuration. The model loads on `setup()`."""
    cls = EMBEDDERS.get(cfg.kind)
    if cls is None:
        raise EmbedderError(f"unknown embedder kind {cfg.kind!r}; use one of {', '.join(EMBEDDERS)}")
    return cls(cfg, limits)


__all__ = ["EMBEDDERS", "MODEL_CONFIG_DIR", "ClipEmbedder", "Embedder", "EmbedderError", "Embeddings",
           "ModelLoadError", "PrecomputedEmbedder", "build_embedder", "tiny_model_config"]
