"""The typed batches that flow between the stages, and the source positions they cover.

    RawBatch --validate--> ValidBatch --embed--> EmbeddedBatch --select--> SelectedBatch --write--> BatchOutcome

with, when the run has [[filters]], a filter stage from ValidBatch to ValidBatch between validate and embed.

Every batch carries the positions of all its items (records and rejections), so the write stage
can advance the run's resume positions whatever happened to each item, and the `items` count of
the raw batch it came from, so every input item ends as exactly one decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from curator.embed.base import Embeddings
from curator.records import Position, Rejection
from curator.wire import Message, PackedMessages, decode_messages

#: {source: {partition: next offset to read}} -- JSON-friendly (partition keys are strings in JSON).
Positions = dict[str, dict[int, int]]


@dataclass
class RawBatch:
    """Records as read, before validation. `errors` holds records that could not even be parsed.

    ``messages`` are a stream's message values not decoded yet (`curator.wire`): they travel to the
    embedder actors as the bytes they arrived as (pickled as columns, `curator.wire.PackedMessages`),
    and `decoded()` turns them into records there.
    ``trusted`` marks a bootstrap batch (inserted unjudged; its positions are not the stream's).
    ``embedding_dim`` is the stream's precomputed-embedding dimension once it is known, so that
    parallel embedders agree on which vectors have the wrong size.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)
    trusted: bool = False
    embedding_dim: int | None = None
    messages: list[Message] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.errors) + sum(m.rows for m in self.messages)

    def nbytes(self) -> int:
        """About what the batch weighs in memory: its payloads (images, texts, vectors) and previews."""
        return (sum(map(record_nbytes, self.records)) + sum(map(rejection_nbytes, self.errors))
                + sum(m.nbytes for m in self.messages))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to an embedder actor) with its messages as columns (`curator.wire.PackedMessages`)."""
        state = dict(self.__dict__)
        if self.messages:
            state["messages"] = PackedMessages.pack(self.messages)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("messages"), PackedMessages):
            state["messages"] = state["messages"].unpack()
        self.__dict__.update(state)

    def decoded(self) -> RawBatch:
        """The batch with its messages decoded into records (after its other records) or rejections."""
        if not self.messages:
            return self
        records, positions, errors = list(self.records), list(self.positions), list(self.errors)
        decode_messages(self.messages, records, positions, errors)
        return RawBatch(records, positions, errors, self.trusted, self.embedding_dim)


@dataclass
class ValidBatch:
    """Validated samples (`curator.records.SAMPLE_SCHEMA`; with a `filters` column of scores once the filter
    stage has run) and the batch's rejections so far."""

    samples: pa.Table
    rejects: list[Rejection]
    positions: list[Position]  # every position the raw batch covered
    items: int  # items of the raw batch: each ends as exactly one decision
    trusted: bool = False
    embedding_dim: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage so far
    filtered: pa.Table | None = None  # decision rows of items a filter dropped (`curator.ops.stage`)


@dataclass
class EmbeddedBatch:
    """Samples that could be embedded, with their embeddings (row for row), and all rejections."""

    samples: pa.Table
    emb: Embeddings | None  # None when no sample is left
    rejects: list[Rejection]
    positions: list[Position]
    items: int
    model_id: str  # recorded with every decision
    trusted: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # per stage so far
    filtered: pa.Table | None = None  # decision rows of items a filter dropped, passed on to the select stage


@dataclass
class SelectedBatch:
    """What the selector decided: one decision row per item, the curated rows, and the rejections."""

    decisions: pa.Table  # selection decisions, then the rejections' decision rows
    kept: pa.Table | None
    rejects: list[Rejection]
    positions: list[Position]
    items: int
    index_size: int
    trusted: bool = False
    homes: np.ndarray | None = None  # per decision row, the shard that writes it (None: shard 0)
    kept_homes: np.ndarray | None = None  # per kept row
    shards: dict[int, tuple[int, float]] = field(default_factory=dict)  # shard -> (items, search seconds)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage so far


@dataclass
class BatchOutcome:
    """What one batch did once staged for the next commit: for progress, metrics and dead letters."""

    items: int
    counts: dict[str, int]
    rejects: list[Rejection]
    index_size: int
    index_dim: int | None = None  # the primary index's dimension, once there is one
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    shards: dict[int, tuple[int, float]] = field(default_factory=dict)  # shard -> (items, search seconds)


def record_nbytes(record: dict[str, Any]) -> int:
    """About what a raw record weighs in memory (its payloads: images, texts, vectors)."""
    n = 64
    for v in record.values():
        if isinstance(v, (bytes, bytearray, str)):
            n += len(v)
        elif isinstance(v, (list, tuple)):
            n += 8 * len(v)
    return n


def rejection_nbytes(r: Rejection) -> int:
    return 128 + len(r.raw or b"") + len(r.reason)


def advance(positions: Positions, batch_positions: list[Position]) -> None:
    """Move `positions` past every position in a batch (next offset = last + 1)."""
    for p in batch_positions:
        parts = positions.setdefault(p.source, {})
        if p.offset + 1 > parts.get(p.partition, 0):
            parts[p.partition] = p.offset + 1


def positions_from_json(data: dict[str, dict[str, int]] | None) -> Positions:
    return {s: {int(k): int(v) for k, v in parts.items()} for s, parts in (data or {}).items()}


def positions_to_json(positions: Positions) -> dict[str, dict[str, int]]:
    return {s: {str(p): int(o) for p, o in parts.items()} for s, parts in positions.items()}
