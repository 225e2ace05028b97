"""What every source yields: raw, untrusted records with their positions.

Positions resume a run: a source started with ``start`` (the manifest's positions,
``{source: {partition: next_offset}}``) yields only records at or after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from curator.records import Position, Rejection

#: {source: {partition: next offset to read}} -- JSON-friendly (partition keys are strings in JSON).
Positions = dict[str, dict[int, int]]


@dataclass
class RawBatch:
    """Records as read, before validation. `errors` holds records that could not even be parsed."""

    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records) + len(self.errors)


class Source(Protocol):
    def batches(self, batch_size: int, start: Positions | None = None) -> Iterator[RawBatch]: ...


def advance(positions: Positions, batch_positions: list[Position]) -> None:
    """Move `positions` past every position in a batch (next offset = last + 1)."""
    for p in batch_positions:
        parts = positions.setdefault(p.source, {})
        if p.offset + 1 > parts.get(p.partition, 0):
            parts[p.partition] = p.offset + 1


def positions_from_json(data: dict[str, dict[str, int]] | None) -> Positions:
    return {s: {int(k): int(v) for k, v in parts.items()} for s, parts in (data or {}).items()}
