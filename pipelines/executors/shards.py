"""Selector shards as Ray actors: the `curator.store.shards.StoredShard` objects (an index shard and its
rows), placed by Ray across the cluster's nodes, behind the same `StoredShardClient` methods the
select-and-write stage uses in one process.

Calls from the selector/writer actor to a shard run in the order they are made (an actor runs its
calls in submission order), so an `add` always lands before the next `search`; searches of one batch
go to all probed shards at once and are awaited together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.actor import ActorHandle

from curator.config import RunConfig
from curator.select.shard import ShardStats
from curator.store.shards import StoredShard


class ShardActor(StoredShard):
    """A StoredShard that knows where it runs (its stats name its node)."""

    def setup(self, manifest: dict[str, Any] | None, node_id: str = "") -> ShardStats:
        return super().setup(manifest, node_id or ray.get_runtime_context().get_node_id())


@dataclass
class RefResult:
    ref: ray.ObjectRef

    def result(self) -> Any:
        return ray.get(self.ref)


class RayShard:
    """The client of one shard actor (picklable: the selector/writer actor holds it)."""

    def __init__(self, actor: ActorHandle, shard: int) -> None:
        self.actor = actor
        self.shard = shard

    def setup(self, manifest: dict[str, Any] | None) -> ShardStats:
        return ray.get(self.actor.setup.remote(manifest))

    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> RefResult:
        return RefResult(self.actor.search.remote(m, q, k, seqs))

    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        self.actor.add.remote(m, x, ids, labels, seqs)

    def ids_of(self, m: str, rows: np.ndarray) -> list[str]:
        return ray.get(self.actor.ids_of.remote(m, rows))

    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        return ray.get(self.actor.take_all.remote(m))

    def stage(self, table: str, rows: pa.Table) -> None:
        self.actor.stage.remote(table, rows)

    def write(self, no: int) -> RefResult:
        return RefResult(self.actor.write.remote(no))

    def describe(self) -> ShardStats:
        return ray.get(self.actor.describe.remote())


def start_shards(cfg: RunConfig, num_cpus: float) -> tuple[list[ActorHandle], list[RayShard]]:
    """One actor per `selector.shards`, spread over the cluster's nodes (resources: `num_cpus` each)."""
    cls = ray.remote(ShardActor).options(num_cpus=num_cpus, scheduling_strategy="SPREAD", max_restarts=0)
    actors = [cls.remote(k, cfg.index, cfg.store.out) for k in range(cfg.selector.shards)]
    return actors, [RayShard(a, k) for k, a in enumerate(actors)]
