"""What every source offers a driver: batches of raw, untrusted records, and its resume state.

Positions are the resume state (``{source: {partition: next_offset}}``, `curator.batch.Positions`):
``seek(positions)`` makes the source yield only records at or after them, ``snapshot()`` says where
the records yielded so far end, and ``caught_up()`` whether there is nothing left to read right now.
Drivers use only these methods, never a client object inside a source.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from curator.batch import Positions, RawBatch


class Source(Protocol):
    def batches(self, batch_size: int, start: Positions | None = None) -> Iterator[RawBatch]:
        """Raw records in stream order, about `batch_size` items per batch (from `start` when given)."""
        ...

    def seek(self, positions: Positions) -> None:
        """Resume from these positions: nothing before them is yielded."""
        ...

    def snapshot(self) -> Positions:
        """The positions just after everything yielded so far (what a resumed source would start at)."""
        ...

    def caught_up(self) -> bool:
        """Nothing more can be read right now (a file source: the end; Kafka: every partition's end)."""
        ...
