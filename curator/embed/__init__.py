"""Embedding: turn a batch of samples into L2-normalised image and text vectors.

One front door, `build_embedder(cfg)`, whatever the source of the vectors: an open_clip model
(`curator.embed.clip`), embeddings the input already carries (`curator.embed.precomputed`), or a
user's own class named by `embedder.kind` through the registry (`curator.registry.EMBEDDERS`).
"""

from __future__ import annotations

from curator.config import EmbedderConfig
from curator.embed.base import Embedder, EmbedderError, Embeddings, ModelLoadError
from curator.embed.clip import MODEL_CONFIG_DIR, ClipEmbedder, tiny_model_config
from curator.embed.precomputed import PrecomputedEmbedder
from curator.records import Limits
from curator.registry import EMBEDDERS, RegistryError


def build_embedder(cfg: EmbedderConfig, limits: Limits | None = None) -> Embedder:
    """The one way to get an embedder from configuration: the class `embedder.kind` names, constructed
    with (cfg, limits). The model loads on `setup()`."""
    try:
        cls = EMBEDDERS.get(cfg.kind)
    except RegistryError as exc:
        raise EmbedderError(f"embedder.kind: {exc}") from None
    return cls(cfg, limits)


__all__ = ["EMBEDDERS", "MODEL_CONFIG_DIR", "ClipEmbedder", "Embedder", "EmbedderError", "Embeddings",
           "ModelLoadError", "PrecomputedEmbedder", "build_embedder", "tiny_model_config"]
