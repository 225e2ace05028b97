"""A topic as one stream in a deterministic order, with a bounded buffer: what the Kafka driver reads.

`OrderedStream` polls a `KafkaSource` into an `OrderedMerge` and hands out batches in stream order.
It keeps the merge within its bounds (items and bytes): past a partition's share, the buffered tail
is dropped and the consumer seeks back to it, so it is fetched again when there is room --
backpressure by seeking rather than `consumer.pause()`, because kafka-python 3.0 parks records
fetched for a paused partition and never hands them back after `resume()` once another partition's
records were consumed. It learns where empty partitions stand (so the merge knows what it may still
wait for), brings the group's offsets up to the manifest after an assignment, and counts the offsets
the topic skipped (retention, compaction, transaction markers).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from connectors.kafka.ordering import OrderedMerge
from connectors.kafka.source import KafkaSource, KafkaSourceConfig
from curator.batch import Positions, RawBatch

log = logging.getLogger("curator.service")


@dataclass
class StreamBounds:
    """What the merge may hold: items, and bytes (0 = no byte bound)."""

    items: int
    bytes: int = 0


class OrderedStream:
    """Poll, order, bound. Use from one thread; the rebalance hooks run inside `poll`."""

    def __init__(self, config: KafkaSourceConfig, order: str, bounds: StreamBounds, poll_size: int,
                 on_revoke: Callable[[list[int]], None] | None = None) -> None:
        self.topic = config.topic
        self.bounds = bounds
        self.poll_size = poll_size
        self._on_revoke_hook = on_revoke
        self.src = KafkaSource(config, on_revoke=self._on_revoke, on_assign=self._on_assign, on_lost=self._on_lost)
        self.merge = OrderedMerge(config.topic, order)
        self.start: dict[int, int] = {}
        self.committed: dict[int, int] = {}  # the manifest's positions, as last committed
        self.seek_backs = 0
        self.polls: Counter[bool] = Counter()  # polls, by whether they brought messages
        self.trimmed_last = False
        self.last_poll = 0.0
        self.last_poll_empty = True
        self.last_data = time.monotonic()
        self._gen: Iterator[RawBatch] | None = None
        self._synced: list[int] = []
        self._ends: dict[int, int] = {}
        self._ends_t = 0.0

    # --- resume state -------------------------------------------------------------------
    def seek(self, positions: Positions) -> None:
        self.start = {int(p): int(o) for p, o in (positions.get(self.topic) or {}).items()}
        self.committed = dict(self.start)
        self.src.seek(positions)

    def snapshot(self) -> Positions:
        return self.src.snapshot()

    def commit(self, positions: Positions) -> None:
        """Commit exactly these positions (a durable manifest's) to the consumer group."""
        from kafka.errors import KafkaError

        self.committed = dict(positions.get(self.topic, {}))
        try:
            self.src.commit(positions)
        except KafkaError as exc:  # a rebalance in between: the manifest still holds the positions
            log.warning("could not commit offsets to the group (%s); the manifest has them", exc)

    def caught_up(self) -> bool:
        """Nothing buffered, and every assigned partition read to its end offset."""
        return self.merge.items == 0 and self.src.caught_up()

    def close(self) -> None:
        self.src.close()

    # --- reading --------------------------------------------------------------------------
    def room(self) -> bool:
        """The merge has room for a whole poll."""
        b = self.bounds
        return self.merge.items + self.poll_size <= b.items and (not b.bytes or self.merge.nbytes < b.bytes)

    def blocked(self) -> bool:
        """The merge holds items but waits on a partition that may still deliver an earlier one."""
        return self.merge.items > 0 and bool(self.merge.blockers())

    def available(self, limit: int) -> int:
        return self.merge.available(limit)

    def take(self, max_items: int) -> RawBatch | None:
        return self.merge.pop(max_items)

    def poll(self) -> int | None:
        """One poll into the merge; returns the items it brought (None: the source has ended)."""
        if self._gen is None:
            self._gen = self.src.batches(self.poll_size)
        try:
            raw = next(self._gen)
        except StopIteration:
            return None
        self.last_poll = time.monotonic()
        self.last_poll_empty = len(raw) == 0
        self.polls[not self.last_poll_empty] += 1
        self.trimmed_last = False
        if len(raw):
            self.last_data = self.last_poll
            gaps = sum(self.merge.gaps.values())
            self.merge.add(raw)
            if sum(self.merge.gaps.values()) > gaps:
                self._report_gaps(gaps)
            if self.merge.items > self.bounds.items or (self.bounds.bytes and self.merge.nbytes > self.bounds.bytes):
                self.trimmed_last = self._trim()
        assigned = self.src.assignment()
        if self.merge.partitions != assigned:
            self.merge.assign(assigned, self.start)
        if assigned != self._synced:
            self._sync_group_offsets(assigned)
        if self.merge.items:
            self._check_blockers()
        return len(raw)

    @property
    def gaps(self) -> int:
        return sum(self.merge.gaps.values())

    def lag(self) -> dict[int, int]:
        """End offset minus the committed position, per assigned partition."""
        parts = self.merge.partitions
        if not parts:
            return {}
        ends = self.src.end_offsets(parts)
        return {p: max(0, end - self.committed.get(p, 0)) for p, end in ends.items()}

    # --- internals ------------------------------------------------------------------------
    def _trim(self) -> bool:
        """Keep each partition's buffer within its share of the bounds; the consumer re-reads the rest."""
        parts = self.merge.partitions
        if not parts:
            return False
        share = max(1, self.bounds.items // len(parts))
        share_b = self.bounds.bytes // len(parts) if self.bounds.bytes else 0
        trimmed = False
        for p in parts:
            if self.merge.buffered(p) > share or (share_b and self.merge.buffered_bytes(p) > share_b):
                first = self.merge.trim(p, share, share_b)
                if first is not None:
                    self.src.rewind(p, first)
                    self.seek_backs += 1
                    trimmed = True
        return trimmed

    def _sync_group_offsets(self, assigned: list[int]) -> None:
        """After an assignment: where the manifest is ahead of the group's committed offsets (a crash
        between the manifest and the offset commit), commit the manifest's positions to the group."""
        from kafka.errors import KafkaError

        self._synced = list(assigned)
        if not self.src.config.group_id or not assigned:
            return
        try:
            have = self.src.committed()
            ahead = {p: o for p, o in self.committed.items() if p in assigned and have.get(p, -1) < o}
            if ahead:
                self.src.commit({self.topic: ahead})
                log.info("committed the manifest's positions %s to the group (it was at %s)", ahead,
                         {p: have.get(p) for p in ahead})
        except KafkaError as exc:
            log.warning("could not bring the group's offsets up to the manifest (%s); the manifest has them", exc)

    def _report_gaps(self, before: int) -> None:
        log.warning("%s skipped %d offset(s) (per partition so far: %s): messages deleted by retention before "
                    "they were read (the consumer reset to the earliest offset), compacted away, or transaction "
                    "markers", self.topic, self.gaps - before, dict(sorted(self.merge.gaps.items())))

    def _check_blockers(self) -> None:
        """Empty partitions the merge waits on: learn their position and whether they are caught up."""
        blockers = self.merge.blockers()
        if not blockers:
            return
        now = time.monotonic()
        if now - self._ends_t > 0.2 or any(p not in self._ends for p in blockers):
            self._ends.update(self.src.end_offsets(blockers))
            self._ends_t = now
        for p, pos in self.src.positions(blockers).items():
            if pos is not None:
                self.merge.mark_position(p, pos, pos >= self._ends.get(p, 1 << 62))

    # --- rebalance hooks (inside poll, on kafka-python's IO thread) -------------------------------
    def _on_assign(self, partitions: list[int]) -> None:
        self.merge.assign(partitions, self.start)
        all_parts = self.src.partitions()
        if sorted(self.merge.partitions) != all_parts:
            log.warning("this service owns partitions %s of %s's %s: one service (one selector, one index) "
                        "should own a whole topic; run one instance per consumer group", partitions,
                        self.topic, all_parts)

    def _on_revoke(self, partitions: list[int]) -> None:
        log.info("partitions %s revoked: finishing in-flight batches and committing", partitions)
        if self._on_revoke_hook is not None:
            self._on_revoke_hook(partitions)  # commits while we still own them (see KafkaSource)
        self.merge.revoke(partitions)

    def _on_lost(self, partitions: list[int]) -> None:
        log.warning("partitions %s lost (session expired): committing the manifest only", partitions)
        if self._on_revoke_hook is not None:
            self._on_revoke_hook(partitions)
        self.merge.revoke(partitions)
