"""One selector shard: the index (per modality) of the items whose home it is.

A shard answers searches for the items that probe it and indexes the accepted items routed to it. In
one process the selector calls it directly (`LocalShard`); on Ray it is an actor on any node, behind the
same `ShardClient` methods. The index knows nothing of Parquet: the rows of a shard's items and its
place in the commit protocol are the store's (`curator.store.shards.StoredShard`), which adds them to
this class where the shard runs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from curator.config import IndexConfig
from curator.index import VectorIndex

#: one search's results for its queries: similarities, local rows, vote labels, rows' stream positions
Found = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
#: a call a remote shard's client held back to send with its next one: (method name, arguments)
Held = tuple[str, tuple[Any, ...]]
#: the calls that answer nothing, so a client may hold them back: nothing reads what they change before
#: the shard's next call, which carries them first
HELD_BACK = frozenset({"add", "stage"})


@dataclass
class ShardStats:
    shard: int
    sizes: dict[str, int]
    kinds: dict[str, str] = field(default_factory=dict)  # the index kind serving each modality now
    searches: int = 0
    search_seconds: float = 0.0
    node_id: str = ""
    pid: int = 0


@dataclass
class IndexShard:
    shard: int
    cfg: IndexConfig
    indexes: dict[str, VectorIndex] = field(default_factory=dict)
    stats: ShardStats = field(init=False)

    def __post_init__(self) -> None:
        self.stats = ShardStats(self.shard, {}, pid=os.getpid())

    def describe(self) -> ShardStats:
        self.stats.sizes = {m: len(i) for m, i in self.indexes.items()}
        self.stats.kinds = {m: i.kind for m, i in self.indexes.items()}
        return self.stats

    # --- the index -------------------------------------------------------------------------
    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> Found:
        t0 = time.perf_counter()
        index = self.indexes.get(m)
        if index is None:
            n = len(q)
            out = (np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64),
                   np.full((n, k), -1, np.int64), np.zeros((n, k), np.int64))
        else:
            sims, rows = index.search(q, k, seqs)
            out = (sims, rows, index.labels_of(rows), np.where(rows >= 0, index.seqs[np.maximum(rows, 0)], 0))
        self.stats.searches += 1
        self.stats.search_seconds += time.perf_counter() - t0
        return out

    def search_after(self, held: list[Held], m: str, q: np.ndarray, k: int,
                     seqs: np.ndarray) -> tuple[Found, list[str]]:
        """The calls a remote client held back since its last one (the last batch's inserts), in their
        order, then the search, with the id of each query's nearest row ("" where none): an index
        duplicate is its nearest accepted item, so the decisions' `dup_of` needs no `ids_of` call. A
        remote shard takes one call per batch where it took three."""
        self.replay(held)
        found = self.search(m, q, k, seqs)
        rows = found[1][:, 0] if found[1].shape[1] else np.zeros(0, np.int64)
        index = self.indexes.get(m)
        named = index.ids_of(np.maximum(rows, 0)) if index is not None and len(rows) else [""] * len(rows)
        return found, [name if r >= 0 else "" for r, name in zip(rows.tolist(), named, strict=True)]

    def replay(self, held: list[Held]) -> None:
        """Held-back calls (`HELD_BACK` methods only), in the order they were made."""
        for name, args in held:
            if name not in HELD_BACK:
                raise ValueError(f"a shard does not replay {name!r}")
            getattr(self, name)(*args)

    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        if m not in self.indexes:
            self.indexes[m] = VectorIndex(x.shape[1], self.cfg)
        self.indexes[m].add(x, ids, labels, seqs)

    def ids_of(self, m: str, rows: np.ndarray) -> list[str]:
        return self.indexes[m].ids_of(rows)

    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        """Every item of modality m, removed (routing was just trained: they move to their homes)."""
        index = self.indexes.pop(m, None)
        if index is None or len(index) == 0:
            return np.zeros((0, 0), np.float32), [], np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.arange(len(index))
        return index.vectors(rows), index.ids_of(rows), index.labels.copy(), index.seqs.copy()

    # --- snapshots ----------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        for m, index in self.indexes.items():
            index.save(Path(directory) / m)

    def load(self, directory: Path) -> None:
        self.indexes = {p.name: VectorIndex.load(p, self.cfg) for p in sorted(Path(directory).iterdir())
                        if (p / "index.json").exists()}


class Pending(Protocol):
    def result(self) -> Any: ...


class ShardClient(Protocol):
    """How the selector talks to a shard: `LocalShard` in this process, or a Ray actor's client."""

    shard: int

    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> Pending: ...
    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None: ...
    def ids_of(self, m: str, rows: np.ndarray) -> list[str]: ...
    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]: ...
    def describe(self) -> ShardStats: ...


@dataclass
class Done:
    value: Any

    def result(self) -> Any:
        return self.value


class LocalShard:
    """A shard in this process: calls go straight through."""

    def __init__(self, target: IndexShard) -> None:
        self.target = target
        self.shard = target.shard

    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> Done:
        return Done(self.target.search(m, q, k, seqs))

    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        self.target.add(m, x, ids, labels, seqs)

    def ids_of(self, m: str, rows: np.ndarray) -> list[str]:
        return self.target.ids_of(m, rows)

    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        return self.target.take_all(m)

    def describe(self) -> ShardStats:
        return self.target.describe()
