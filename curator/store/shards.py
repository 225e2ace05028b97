"""A selector shard with its rows: the index shard and the Parquet parts of the items whose home it is.

Select and write are one checkpointed stage, and a shard's rows are written where its index is (a Ray
actor on any node writes its own parts), but the index itself knows nothing of Parquet
(`curator.select.shard`). `StoredShard` adds what the commit protocol needs to it: on `setup` it drops
what a crashed run left behind and restores the snapshots the manifest names; between commits it stages
its items' rows; on a commit it writes them (`ShardParts.write`), then each index's snapshot -- the
rows added since the last commit, or now and then the whole index (`curator.store.snapshots`) --
before the manifest names both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from curator.config import IndexConfig
from curator.index import VectorIndex
from curator.select.shard import Done, IndexShard, LocalShard, Pending, ShardClient, ShardStats
from curator.store.writer import ShardCommit, ShardParts


class StoredShard(IndexShard):
    """An index shard that also writes its items' rows and snapshots into a run directory."""

    def __init__(self, shard: int, cfg: IndexConfig, run_dir: str | Path) -> None:
        super().__init__(shard, cfg)
        self.run_dir = Path(run_dir)
        self.parts = ShardParts(self.run_dir, shard)

    def setup(self, manifest: dict[str, Any] | None, node_id: str = "") -> ShardStats:
        """Drop what a crashed run left behind; restore this shard's indexes from the last commit."""
        self.stats.node_id, self.stats.pid = node_id, os.getpid()
        if manifest is not None:
            self.parts.collect_garbage(manifest)
            self.indexes = {m: VectorIndex.load(links[0], self.cfg, links[1:], track=True)
                            for m, links in self.parts.snapshots.resume(manifest).items()}
        return self.describe()

    def stage(self, table: str, rows: pa.Table) -> None:
        self.parts.stage(table, rows)

    def write(self, no: int) -> ShardCommit:
        """Commit `no`: this shard's parts, then its indexes' snapshots (one folder per modality)."""
        done = self.parts.write(no)
        done.snapshots = self.parts.snapshots.write(no, self.indexes)
        return done


class StoredShardClient(ShardClient, Protocol):
    """How the select-and-write stage talks to a shard: the selector's calls, and the commit's."""

    def setup(self, manifest: dict[str, Any] | None) -> ShardStats: ...
    def stage(self, table: str, rows: pa.Table) -> None: ...
    def write(self, no: int) -> Pending: ...


class LocalStoredShard(LocalShard):
    """A stored shard in this process: calls go straight through."""

    target: StoredShard

    def __init__(self, target: StoredShard) -> None:
        super().__init__(target)

    def setup(self, manifest: dict[str, Any] | None) -> ShardStats:
        return self.target.setup(manifest)

    def stage(self, table: str, rows: pa.Table) -> None:
        self.target.stage(table, rows)

    def write(self, no: int) -> Done:
        return Done(self.target.write(no))
