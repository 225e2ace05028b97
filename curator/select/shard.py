"""One selector shard: the index (per modality) of the items whose home it is, and their rows.

A shard answers searches for the items that probe it, indexes the accepted items routed to it,
stages the decision and curated rows of its items, and on a commit writes them and its index
snapshot (`ShardParts`) before the manifest names them. In one process the selector calls it
directly (`LocalShard`); on Ray it is an actor on any node, behind the same `ShardClient` methods.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from curator.config import IndexConfig
from curator.index import VectorIndex
from curator.store.writer import ShardCommit, ShardParts, shard_checkpoint

#: one search's results for its queries: similarities, local rows, vote labels, rows' stream positions
Found = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


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
    run_dir: str | None = None  # None: no rows to write (a selector used on its own)
    indexes: dict[str, VectorIndex] = field(default_factory=dict)
    stats: ShardStats | None = None

    def __post_init__(self) -> None:
        self.parts = ShardParts(self.run_dir, self.shard) if self.run_dir else None
        self.stats = ShardStats(self.shard, {})

    def setup(self, manifest: dict[str, Any] | None, node_id: str = "") -> ShardStats:
        """Drop what a crashed run left behind; restore this shard's indexes from the last commit."""
        assert self.stats is not None
        self.stats.node_id, self.stats.pid = node_id, os.getpid()
        if manifest is not None and self.parts is not None and self.run_dir is not None:
            self.parts.collect_garbage(manifest)
            ck = shard_checkpoint(manifest, self.shard)
            if ck:
                self.load(Path(self.run_dir) / ck)
        return self.describe()

    def describe(self) -> ShardStats:
        assert self.stats is not None
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
        assert self.stats is not None
        self.stats.searches += 1
        self.stats.search_seconds += time.perf_counter() - t0
        return out

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

    # --- rows and commits ------------------------------------------------------------------
    def stage(self, table: str, rows: pa.Table) -> None:
        if self.parts is None:
            raise RuntimeError("this shard has no run directory to write rows to")
        self.parts.stage(table, rows)

    def write(self, no: int) -> ShardCommit:
        """Commit `no`: this shard's parts, then its index snapshot (one folder per modality)."""
        if self.parts is None:
            raise RuntimeError("this shard has no run directory to write to")
        return self.parts.write(no, self.save)

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

    def setup(self, manifest: dict[str, Any] | None) -> ShardStats: ...
    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> Pending: ...
    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None: ...
    def ids_of(self, m: str, rows: np.ndarray) -> list[str]: ...
    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]: ...
    def stage(self, table: str, rows: pa.Table) -> None: ...
    def write(self, no: int) -> Pending: ...
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

    def setup(self, manifest: dict[str, Any] | None) -> ShardStats:
        return self.target.setup(manifest)

    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> Done:
        return Done(self.target.search(m, q, k, seqs))

    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        self.target.add(m, x, ids, labels, seqs)

    def ids_of(self, m: str, rows: np.ndarray) -> list[str]:
        return self.target.ids_of(m, rows)

    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        return self.target.take_all(m)

    def stage(self, table: str, rows: pa.Table) -> None:
        self.target.stage(table, rows)

    def write(self, no: int) -> Done:
        return Done(self.target.write(no))

    def describe(self) -> ShardStats:
        return self.target.describe()
