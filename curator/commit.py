"""The commit protocol: the one order in which a run makes its work durable and tells its source.

    1. parts     the staged Parquet parts (kept, decisions, quarantine)
    2. snapshot  the FAISS index snapshot and the selector's state
    3. manifest  naming 1 and 2 with the source positions they cover (temp file, fsync, rename)
    4. dead letters of everything the manifest covers, flushed to their sink
    5. offsets   exactly the manifest's positions, committed to the source (a Kafka consumer group)

A crash before 3 leaves the previous manifest, which a restart replays from; a crash between 3 and 5
replays nothing twice, because the restarted run starts from the manifest, not the group's offsets.
Dead letters are at-least-once (a crash between 3 and 4 resends them); everything else is exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from curator.batch import Positions

#: A run directory's committed state, as `curator.store.writer` writes it (JSON).
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Committed:
    """What a durable commit covers: its number and the source positions it made durable."""

    commit: int
    positions: Positions
    seconds: float = 0.0


class DeadLetters(Protocol):
    def flush(self) -> None: ...


class Offsets(Protocol):
    def commit(self, positions: Positions) -> Any: ...


def commit(durable: Callable[[], Committed], dead_letters: DeadLetters | None = None,
           offsets: Offsets | None = None) -> Committed:
    """Run the protocol. `durable` is the write stage's commit (steps 1-3, in `StoreWriter.commit`),
    called here, or finished on an actor and handed over."""
    done = durable()  # 1-3: parts -> index snapshot + selector state -> manifest (atomic rename)
    if dead_letters is not None:
        dead_letters.flush()  # 4: the rejections the manifest covers are in the dead-letter sink
    if offsets is not None:
        offsets.commit(done.positions)  # 5: exactly the manifest's positions, never ahead of it
    return done
