"""Kafka source: raw records with (topic, partition, offset) positions, commits under the caller's control.

Delivery is explicit (kafka-python's poll loop, nothing hidden): ``batches()`` polls and yields raw
records; the pipeline writes them durably, then calls ``commit(positions)`` with the next offsets.
Auto-commit is always off, so a crash before the commit replays, never loses.

Messages are JSON or Arrow IPC, never pickle (`connectors.kafka.codec`); one that cannot be decoded
becomes a ``Rejection`` at its position, and the stream never stops for it.

Resuming: records before ``start`` (the manifest's positions) are never yielded, and the consumer
seeks past them; otherwise it reads from the group's committed offset. So the effective start is
``max(start, committed)``: the manifest wins after a crash between manifest and commit, and the
group's commit wins when another member has moved the partition on since.

Rebalances: ``on_revoke(partitions)`` runs before partitions move away, so the pipeline can flush
and commit. kafka-python >= 3 runs it on its IO thread, where blocking consumer calls are refused;
so a ``commit()`` made inside the hook (or positions the hook returns) is collected and committed
by the source, awaited, before the partitions move. Records not yet handed out for revoked
partitions are dropped (the next owner reads them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaConfigurationError, KafkaConnectionError, KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from connectors.kafka.clients import (
    RESERVED,
    KafkaSourceError,
    parse_api_version,
    preflight,
    server_list,
    unreachable,
)
from connectors.kafka.codec import read_message
from curator.batch import Positions, RawBatch, advance

log = logging.getLogger(__name__)


@dataclass
class KafkaSourceConfig:
    bootstrap_servers: str | list[str] = "localhost:9092"
    topic: str = ""
    group_id: str = "curator"  # "" = no group: read every partition, no commits (positions live in the manifest)
    client: dict[str, Any] = field(default_factory=dict)  # passthrough to KafkaConsumer: security_protocol,
    #                                                       sasl_*, ssl_*, client_id, fetch sizes, ...
    api_version: str = ""  # "" = detect; "2.3" for librdkafka's mock cluster
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 0  # 0 = a third of the session timeout
    max_poll_records: int = 500
    poll_timeout_ms: int = 500  # also the interval of empty "idle" batches
    max_message_bytes: int = 32 * 1024 * 1024  # larger messages are rejected, not decoded
    auto_offset_reset: str = "earliest"  # where a partition without a commit or start position begins
    end_after_idle_s: float = 0.0  # > 0: stop when nothing arrived for this long (bounded runs, tests)
    error_timeout_s: float = 60.0  # give up when poll() keeps failing for this long
    connect_timeout_s: float = 30.0  # give up when the brokers cannot be reached at start for this long

    def consumer_settings(self) -> dict[str, Any]:
        """The KafkaConsumer keyword arguments (client passthrough last, minus what curator owns)."""
        if not self.topic:
            raise ValueError("Kafka source needs a topic")
        bad = [k for k in RESERVED if k in self.client]
        if bad:
            raise ValueError(f"Kafka client setting(s) {bad} are set by curator itself; use the source's fields")
        heartbeat = self.heartbeat_interval_ms or max(100, self.session_timeout_ms // 3)
        settings: dict[str, Any] = {
            "bootstrap_servers": server_list(self.bootstrap_servers),
            "group_id": self.group_id or None,
            "enable_auto_commit": False,
            "auto_offset_reset": self.auto_offset_reset,
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": heartbeat,
            "max_poll_records": self.max_poll_records,
        }
        api = parse_api_version(self.api_version)
        if api is not None:
            settings["api_version"] = api
        settings.update(self.client)
        return settings


class _Listener(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO thread: no blocking consumer calls here (they raise RuntimeError)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Any) -> None:
        offsets = self.source._revoked(sorted(tp.partition for tp in revoked), lost=False)
        consumer = self.source._consumer
        if offsets and consumer is not None:
            try:
                await consumer.commit_async(offsets)  # awaitable: the partitions move only after it
                log.info("committed %s before giving partitions up", {tp.partition: o.offset for tp, o in offsets.items()})
            except Exception as exc:  # noqa: BLE001 - the next owner re-reads: duplicates, not loss
                log.warning("commit on revocation failed (%s); the next owner re-reads those records", exc)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._assigned(sorted(tp.partition for tp in assigned))

    async def on_partitions_lost(self, lost: Any) -> None:
        self.source._revoked(sorted(tp.partition for tp in lost), lost=True)


class KafkaSource:
    """A Kafka topic as a Source. Use from one thread (kafka-python's consumer is not thread-safe),
    except ``pause``/``resume``/``stop``, which only set flags that the poll loop applies.

    Hooks run on kafka-python's IO thread, during a poll (heartbeats wait while they run):
    ``on_revoke(partitions)`` before partitions move away -- flush, then call ``commit(positions)``
    or return the durable positions: either is committed before the partitions move (anything
    later is re-read by the next owner); ``on_lost(partitions)`` when the group already evicted this
    member (commits are dropped: they would fail); ``on_assign(partitions)`` after an assignment.
    Other consumer calls are off limits in hooks.

    ``batches()`` yields an empty batch whenever a poll brings nothing (every ``poll_timeout_ms``):
    the caller gets control back to flush on time, drain on shutdown, or wait while paused -- while
    the consumer keeps its group membership.
    """

    def __init__(
        self,
        config: KafkaSourceConfig,
        on_revoke: Callable[[list[int]], Positions | None] | None = None,  # see the class docstring
        on_assign: Callable[[list[int]], None] | None = None,
        on_lost: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.config = config
        self.topic = config.topic
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self.on_lost = on_lost
        self._settings = config.consumer_settings()  # validate early: bad config fails at construction
        self._consumer: KafkaConsumer | None = None
        self._floor: dict[int, int] = {}  # `start`: nothing before it is ever yielded
        self._rows_per_message = 1.0  # records per message in the last poll (an Arrow message holds many)
        self._yielded: Positions = {}  # just after everything yielded so far (`snapshot`)
        self._fresh: set[int] = set()  # assigned since the last poll: seek past `start` if behind
        self._lock = threading.Lock()  # _pending / _fresh are touched by the IO thread's listener
        self._pending = RawBatch()
        self._want_paused = False
        self._paused_applied = False
        self._stop = threading.Event()
        # While a revoke/lost hook runs: commits collected for the listener to make (None otherwise).
        self._deferred: dict[TopicPartition, OffsetAndMetadata] | None = None
        self._deferred_lost = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            self._consumer = self._connect()
        return self._consumer

    def _connect(self) -> KafkaConsumer:
        timeout_ms = int(self.config.connect_timeout_s * 1000)
        if "api_version" in self._settings and not self._settings.get("proxy_url"):
            # With api_version given, kafka-python bootstraps lazily and retries forever: check first.
            preflight(self._settings, self.config.connect_timeout_s)
        consumer: KafkaConsumer | None = None
        try:
            consumer = KafkaConsumer(**{"bootstrap_timeout_ms": timeout_ms, **self._settings})
            # Ask for the topic's metadata before subscribing: without it the first assignment can be empty.
            parts = consumer.partitions_for_topic(self.topic)
        except KafkaConfigurationError as exc:
            raise KafkaSourceError(f"bad Kafka client settings: {exc}") from None
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            if consumer is not None:
                consumer.close(autocommit=False)
            raise KafkaSourceError(unreachable(self._settings, exc)) from None
        if not parts:
            consumer.close(autocommit=False)
            raise KafkaSourceError(f"Kafka topic {self.topic!r} does not exist (or has no partitions)")
        if self._settings["group_id"] is None:
            consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
            self._fresh.update(parts)
        else:
            consumer.subscribe([self.topic], listener=_Listener(self))
            # kafka-python 3.0's group leader snapshots topic metadata only on a metadata update; one
            # before the first join keeps it from assigning against an empty snapshot and then
            # rebalancing again (seconds against the mock cluster) once the update arrives.
            consumer.topics()
        return consumer

    def close(self) -> None:
        """Leave the group (partitions are revoked, so `on_revoke` runs once more) and disconnect."""
        self._stop.set()
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stop(self) -> None:
        """Make `batches()` return after its current poll (thread-safe: for a SIGTERM drain)."""
        self._stop.set()

    # ------------------------------------------------------------------ flow control

    def pause(self) -> None:
        """Stop fetching (backpressure); polling goes on, so group membership is kept."""
        self._want_paused = True

    def resume(self) -> None:
        self._want_paused = False

    @property
    def paused(self) -> bool:
        return self._want_paused

    def _apply_pause(self) -> None:
        consumer = self.consumer
        assigned = list(consumer.assignment() or ())
        if self._want_paused:
            if assigned:
                consumer.pause(*assigned)
            self._paused_applied = True
        elif self._paused_applied:
            if assigned:
                consumer.resume(*assigned)
            self._paused_applied = False

    # ------------------------------------------------------------------ positions (resume state)

    def seek(self, positions: Positions) -> None:
        """Resume from `positions`: no record before them is yielded; assigned partitions seek past them."""
        self._floor = {int(p): int(o) for p, o in ((positions or {}).get(self.topic) or {}).items()}
        self._yielded = {self.topic: dict(self._floor)} if self._floor else {}
        with self._lock:
            self._fresh.update(self.assignment() if self._consumer is not None else ())

    def snapshot(self) -> Positions:
        """The next offsets after everything yielded so far (or the `seek` positions)."""
        return {s: dict(parts) for s, parts in self._yielded.items()}

    def caught_up(self) -> bool:
        """Nothing pending and every assigned partition's position at its end offset."""
        parts = self.assignment()
        if not parts or len(self._pending):
            return False
        ends = self.end_offsets(parts)
        pos = self.positions(parts)
        return all(pos.get(p) is not None and pos[p] >= ends[p] for p in parts)

    def partitions(self) -> list[int]:
        """All partitions of the topic (assigned here or not)."""
        return sorted(self.consumer.partitions_for_topic(self.topic) or ())

    def end_offsets(self, partitions: list[int]) -> dict[int, int]:
        got = self.consumer.end_offsets([TopicPartition(self.topic, p) for p in partitions])
        return {tp.partition: int(o) for tp, o in got.items()}

    def positions(self, partitions: list[int]) -> dict[int, int | None]:
        """The consumer's next fetch offset per partition (None while it is not known yet)."""
        out: dict[int, int | None] = {}
        for p in partitions:
            try:
                pos = self.consumer.position(TopicPartition(self.topic, p), timeout_ms=1000)
            except Exception:  # noqa: BLE001 - not known yet (a reset in progress, or just revoked)
                pos = None
            out[p] = None if pos is None else int(pos)
        return out

    def rewind(self, partition: int, offset: int) -> None:
        """Fetch `partition` again from `offset` (records buffered past it were dropped: backpressure)."""
        self.consumer.seek(TopicPartition(self.topic, partition), offset)

    def assignment(self) -> list[int]:
        return sorted(tp.partition for tp in (self.consumer.assignment() or ()))

    def commit(self, positions: Positions) -> dict[int, int]:
        """Commit exactly the given next-offsets of this topic, synchronously; returns what was committed.

        Only partitions this consumer owns are committed: committing a partition that moved to
        another member would rewind (or skip) its progress. Without a group this does nothing (the
        manifest's positions are the only record). Raises kafka.errors.CommitFailedError when the
        group rebalanced in between (the records are then re-delivered to the new owner). Inside
        ``on_revoke`` the commit is collected and made by the rebalance listener (see the class).
        """
        parts = positions.get(self.topic) or {}
        if not parts or self._settings["group_id"] is None:
            return {}
        deferred = self._deferred
        if deferred is not None:  # inside a revoke/lost hook, on the IO thread: must not block
            if self._deferred_lost:
                log.info("not committing %s: this member was evicted from the group", parts)
                return {}
            for p, off in parts.items():
                deferred[TopicPartition(self.topic, int(p))] = OffsetAndMetadata(int(off), "", -1)
            return {int(p): int(off) for p, off in parts.items()}
        owned = set(self.assignment())
        offsets = {
            TopicPartition(self.topic, int(p)): OffsetAndMetadata(int(off), "", -1)
            for p, off in parts.items()
            if int(p) in owned
        }
        skipped = sorted(int(p) for p in parts if int(p) not in owned)
        if skipped:
            log.warning("not committing partitions %s of %s: no longer assigned to this consumer", skipped, self.topic)
        if offsets:
            try:
                self.consumer.commit(offsets)
            except RuntimeError as exc:  # called from a rebalance hook, on the IO thread
                raise KafkaSourceError(
                    "commit() cannot be called from a rebalance hook; return the positions from on_revoke instead"
                ) from exc
        return {tp.partition: om.offset for tp, om in offsets.items()}

    def committed(self) -> dict[int, int]:
        """The group's committed next-offsets for this topic's partitions (those with a commit)."""
        if self._settings["group_id"] is None:
            return {}
        consumer = self.consumer
        out: dict[int, int] = {}
        for p in sorted(consumer.partitions_for_topic(self.topic) or ()):
            off = consumer.committed(TopicPartition(self.topic, p))
            if off is not None:
                out[p] = int(off)
        return out

    def _assigned(self, partitions: list[int]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        with self._lock:
            self._fresh.update(partitions)
        if self._want_paused and partitions:  # non-blocking: only marks the subscription state
            consumer.pause(*(TopicPartition(self.topic, p) for p in partitions))
            self._paused_applied = True
        log.info("assigned %s partitions %s", self.topic, partitions)
        if self.on_assign is not None:
            self.on_assign(partitions)

    def _revoked(self, partitions: list[int], lost: bool) -> dict[TopicPartition, OffsetAndMetadata]:
        """Drop un-yielded records of these partitions; ask the hook what to commit before they move."""
        gone = set(partitions)
        with self._lock:
            b = self._pending
            keep = [i for i, p in enumerate(b.positions) if p.partition not in gone]
            self._pending = RawBatch(
                [b.records[i] for i in keep],
                [b.positions[i] for i in keep],
                [e for e in b.errors if e.position.partition not in gone],
            )
            self._fresh -= gone
        log.info("%s %s partitions %s", "lost" if lost else "revoked", self.topic, partitions)
        hook = self.on_lost if lost else self.on_revoke
        if hook is None or not partitions:
            return {}
        self._deferred, self._deferred_lost = {}, lost
        try:
            returned = hook(partitions)
            collected = self._deferred
        finally:
            self._deferred, self._deferred_lost = None, False
        if lost:
            return {}
        for p, off in ((returned or {}).get(self.topic) or {}).items():
            collected[TopicPartition(self.topic, int(p))] = OffsetAndMetadata(int(off), "", -1)
        return collected  # still ours until the listener returns, revoked or not (cooperative rebalances)

    def _skip_to_start(self, consumer: KafkaConsumer) -> None:
        """After an assignment: seek partitions that would start before `start` forward (consuming thread)."""
        with self._lock:
            fresh, self._fresh = self._fresh, set()
        for p in sorted(fresh):
            floor = self._floor.get(p)
            if floor is None:
                continue
            tp = TopicPartition(self.topic, p)
            if self._settings["group_id"] is None:  # no commits to weigh against: the manifest decides
                consumer.seek(tp, floor)
                continue
            try:
                pos = consumer.position(tp, timeout_ms=5000)
            except KafkaError:  # unassigned again, or no answer yet: the filter still holds the floor
                continue
            if pos is None or pos < floor:
                consumer.seek(tp, floor)

    # ------------------------------------------------------------------ reading

    def batches(self, batch_size: int, start: Positions | None = None) -> Iterator[RawBatch]:
        """Poll and yield raw batches of about `batch_size` items (an Arrow message is never split): each
        message undecoded (`RawBatch.messages`; `RawBatch.decoded()` makes its records), or its rejection.

        Ends on `stop()`, on `close()`, or after `end_after_idle_s` without messages (when set; time
        spent paused or without any assigned partition does not count as idle); otherwise runs
        forever, yielding an empty batch after each poll that brought nothing.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if start is not None:
            self.seek(start)
        self._stop.clear()
        consumer = self.consumer
        cfg = self.config
        last_message = time.monotonic()
        failing_since: float | None = None
        while not self._stop.is_set() and self._consumer is not None:
            self._apply_pause()
            self._skip_to_start(consumer)
            # a poll is capped in messages, a batch in records: ask for as many messages as fill the batch
            room = max(1, min(cfg.max_poll_records, int((batch_size - len(self._pending)) / self._rows_per_message)))
            try:
                polled = consumer.poll(timeout_ms=cfg.poll_timeout_ms, max_records=room)
                failing_since = None
            except KafkaError as exc:  # rebalances in multi-member groups surface here; keep polling
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > cfg.error_timeout_s:
                    raise KafkaSourceError(f"Kafka poll has failed for {cfg.error_timeout_s:.0f}s: {exc}") from exc
                log.warning("Kafka poll failed (%s); retrying", exc)
                time.sleep(min(1.0, cfg.poll_timeout_ms / 1000))
                continue
            got = read = 0
            with self._lock:
                before = len(self._pending)
                for tp, messages in polled.items():
                    floor = self._floor.get(tp.partition, 0)
                    for msg in messages:
                        if msg.offset >= floor:
                            read_message(tp.topic, tp.partition, msg.offset, msg.value, msg.key, msg.headers,
                                         self._pending, cfg.max_message_bytes)
                            read += 1
                        got += 1
                if read:
                    self._rows_per_message = max(1.0, (len(self._pending) - before) / read)
            now = time.monotonic()
            if got or self._want_paused or not consumer.assignment():
                last_message = now  # idle means: assigned, fetching, and nothing arrives
            if len(self._pending) >= batch_size or (not got and len(self._pending)):
                with self._lock:
                    batch, self._pending = self._pending, RawBatch()
                self._handed_out(batch)
                yield batch
            elif not got:
                if cfg.end_after_idle_s > 0 and now - last_message >= cfg.end_after_idle_s:
                    return
                yield RawBatch()  # idle tick: control back to the caller
        if len(self._pending) and self._consumer is not None:
            with self._lock:
                batch, self._pending = self._pending, RawBatch()
            self._handed_out(batch)
            yield batch

    def _handed_out(self, batch: RawBatch) -> None:
        advance(self._yielded, batch.positions + [e.position for e in batch.errors]
                + [m.position for m in batch.messages])


__all__ = ["KafkaSource", "KafkaSourceConfig", "KafkaSourceError", "parse_api_version"]
