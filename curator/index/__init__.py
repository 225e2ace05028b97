"""The index of accepted items: `VectorIndex` (kinds by `curator.index.kinds`, rebuilt as it grows)."""

from __future__ import annotations

from curator.index.vector_index import IdColumn, VectorIndex, gpu_count

__all__ = ["IdColumn", "VectorIndex", "gpu_count"]
