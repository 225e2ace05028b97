"""What an executor tells the rest of a run as it happens, beside the commit protocol.

An `Observer` hears four things: a batch's rejections, a batch leaving the stages upstream of
select-and-write (their seconds), a batch's outcome, and a durable commit. The metrics, the status
page and a bounded run's progress bar are observers; none of them can change what is decided or
committed (dead letters and offsets are the commit protocol's, `curator.commit`, not observers).
"""

from __future__ import annotations

from curator.batch import BatchOutcome
from curator.commit import Committed
from curator.records import Rejection


class Observer:
    """Each note does nothing unless a subclass says otherwise."""

    def note_rejections(self, rejects: list[Rejection]) -> None:
        """A batch's rejected input, as soon as the stages upstream of selection are done with it."""

    def note_upstream(self, seconds: dict[str, float]) -> None:
        """A batch left the upstream stages (validate, embed, ...): each one's seconds on it, by role."""

    def note_outcome(self, out: BatchOutcome, trusted: bool, end_to_end_s: float) -> None:
        """A batch was decided and staged for the next commit (`trusted`: a bootstrap batch)."""

    def note_commit(self, done: Committed) -> None:
        """A commit is durable (its manifest written, dead letters flushed, offsets committed)."""
