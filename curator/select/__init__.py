"""InfoGrowth online selection (`selector`), its rules and reasons (`rules`), sketches, kept rows, and
`select_embeddings` (`arrays`): selection from plain numpy / Arrow embeddings."""

from __future__ import annotations

from curator.select.arrays import select_embeddings
from curator.select.jit_cache import drop_stale
from curator.select.kept import kept_table
from curator.select.outcome import Selection
from curator.select.selector import InfoGrowthSelector, load_hook

drop_stale()  # before anything compiled is first called (numba loads its cache then, not at import)

__all__ = ["InfoGrowthSelector", "Selection", "kept_table", "load_hook", "select_embeddings"]
