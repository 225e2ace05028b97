"""curator: streaming data curation -- embed, select online (InfoGrowth), store, train (InfoBatch).

The library's front door for embeddings you already have is `curator.select_embeddings` (see the
README, "Use as a library"). It is imported on first use, so `import curator.config` (and the
`curator` command's start) stays free of the selector's FAISS and numba imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["select_embeddings"]


def __getattr__(name: str) -> Any:
    if name == "select_embeddings":
        from curator.select.arrays import select_embeddings

        return select_embeddings
    raise AttributeError(f"module 'curator' has no attribute {name!r}")
