"""Selector shards as Ray actors: the `curator.store.shards.StoredShard` objects (an index shard and its
rows), placed by Ray across the cluster's nodes, behind the same `StoredShardClient` methods the
select-and-write stage uses in one process.

Calls from the selector/writer actor to a shard run in the order they are made (an actor runs its
calls in submission order). A call that answers nothing -- an insert (`add`), a batch's staged rows
(`stage`) -- is not sent on its own: the client holds it back and sends it with the shard's next call,
ahead of it (`IndexShard.search_after`, `replay`), so an insert still lands before the next search, the
staged rows before the commit's `write`. A search also answers the ids of its nearest rows, which name
the batch's index duplicates (`ids_of` calls only for a row it did not name). So a shard takes one call
per batch that searches it instead of a search, an insert, a staging call and an `ids_of`; a shard no
query searches takes no call, and what it holds back waits for its next one. Searches of one batch go to all
probed shards at once and are awaited together. One client per shard, used by one thread (the
selector/writer actor's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.actor import ActorHandle

from curator.config import IndexConfig, RunConfig
from curator.select.shard import Found, Held, ShardStats
from curator.store.shards import StoredShard
from pipelines.executors.actors import actor_logging


class ShardActor(StoredShard):
    """A StoredShard that knows where it runs (its stats name its node)."""

    def __init__(self, shard: int, cfg: IndexConfig, run_dir: str | Path) -> None:
        actor_logging()
        super().__init__(shard, cfg, run_dir)

    def __repr__(self) -> str:  # Ray's prefix of this actor's log lines
        return f"ShardActor(shard={self.shard})"

    def setup(self, manifest: dict[str, Any] | None, node_id: str = "") -> ShardStats:
        return super().setup(manifest, node_id or ray.get_runtime_context().get_node_id())


@dataclass
class RefResult:
    ref: ray.ObjectRef

    def result(self) -> Any:
        return ray.get(self.ref)


@dataclass
class Searched:
    """A search's answer; the ids of its nearest rows stay with the client (`RayShard.ids_of`)."""

    ref: ray.ObjectRef
    client: RayShard
    m: str

    def result(self) -> Found:
        found, named = ray.get(self.ref)
        self.client.nearest = (self.m, dict(zip(found[1][:, 0].tolist(), named, strict=True)) if len(named) else {})
        return found


class RayShard:
    """The client of one shard actor (picklable: the selector/writer actor holds it; a copy starts with
    nothing held back)."""

    def __init__(self, actor: ActorHandle, shard: int) -> None:
        self.actor = actor
        self.shard = shard
        self.held: list[Held] = []  # calls for the shard's next call to carry, in order
        self.nearest: tuple[str, dict[int, str]] = ("", {})  # the last search's modality, nearest rows' ids

    def __getstate__(self) -> dict[str, Any]:
        return {"actor": self.actor, "shard": self.shard}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["actor"], state["shard"])  # type: ignore[misc]

    def _flush(self) -> None:
        """What is held back, sent before a call that does not carry it."""
        if self.held:
            self.actor.replay.remote(self.held)
            self.held = []

    def setup(self, manifest: dict[str, Any] | None) -> ShardStats:
        self._flush()
        return ray.get(self.actor.setup.remote(manifest))

    def search(self, m: str, q: np.ndarray, k: int, seqs: np.ndarray) -> Searched:
        held, self.held = self.held, []
        self.nearest = ("", {})
        return Searched(self.actor.search_after.remote(held, m, q, k, seqs), self, m)

    def add(self, m: str, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        self.held.append(("add", (m, x, ids, labels, seqs)))

    def ids_of(self, m: str, rows: np.ndarray) -> list[str]:
        """From the last search's nearest rows where it named them all (a batch's index duplicates), else
        a call."""
        known = self.nearest[1] if self.nearest[0] == m else {}
        named = [known.get(r) for r in np.asarray(rows).tolist()]
        if all(n is not None for n in named):
            return named  # type: ignore[return-value]
        self._flush()
        return ray.get(self.actor.ids_of.remote(m, rows))

    def take_all(self, m: str) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
        self._flush()
        return ray.get(self.actor.take_all.remote(m))

    def stage(self, table: str, rows: pa.Table) -> None:
        self.held.append(("stage", (table, rows)))

    def write(self, no: int) -> RefResult:
        self._flush()
        return RefResult(self.actor.write.remote(no))

    def describe(self) -> ShardStats:
        self._flush()
        return ray.get(self.actor.describe.remote())


def start_shards(cfg: RunConfig, num_cpus: float) -> tuple[list[ActorHandle], list[RayShard]]:
    """One actor per `selector.shards`, spread over the cluster's nodes (resources: `num_cpus` each)."""
    cls = ray.remote(ShardActor).options(num_cpus=num_cpus, scheduling_strategy="SPREAD", max_restarts=0)
    actors = [cls.remote(k, cfg.index, cfg.store.out) for k in range(cfg.selector.shards)]
    return actors, [RayShard(a, k) for k, a in enumerate(actors)]
