"""Stream order for a multi-partition topic: partitions interleaved by (offset, partition).

Decisions depend on the order of items, so the order must not depend on timing. Message (o, p) is
emitted only once every other partition has either delivered a message at a larger key or is caught
up (its consumer position has reached its end offset). For data that is in the topic when it is read
(a backfill, a replay after a crash) this is a pure function of the topic's contents, so a restarted
run makes exactly the uninterrupted run's decisions; and because `curator produce` spreads records
round-robin, it is also the order of the produced file. For data still arriving, a caught-up
partition is skipped rather than waited for, so only items that arrive while another partition is
ahead can interleave differently on a replay (still each exactly once). ``order = "arrival"`` trades
the guarantee for never waiting on a slow partition.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from curator.batch import RawBatch, record_nbytes, rejection_nbytes
from curator.records import Position, Rejection
from curator.wire import Message


@dataclass
class _Unit:
    """One source message: undecoded (`curator.wire.Message`), its rows (an Arrow message has
    several), or its rejection."""

    offset: int
    records: list[dict[str, Any]] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    errors: list[Rejection] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.records) + len(self.errors) + sum(m.rows for m in self.messages)


class OrderedMerge:
    """Interleaves the partitions of one topic into one stream, message by message.

    ``order="offset"``: by (offset, partition), waiting for a partition that may still deliver a
    smaller key unless it is marked caught up; ``order="arrival"``: as added. Messages are never
    split, so a batch (and so a commit) always ends between messages.
    """

    def __init__(self, topic: str, order: str = "offset") -> None:
        if order not in ("offset", "arrival"):
            raise ValueError(f"order must be 'offset' or 'arrival', got {order!r}")
        self.topic = topic
        self.order = order
        self.buf: dict[int, deque[_Unit]] = {}
        self.next: dict[int, int | None] = {}  # smallest offset a partition can still deliver (None = unknown)
        self.caught_up: dict[int, bool] = {}
        self._arrival: deque[tuple[int, _Unit]] = deque()
        self.items = 0
        self.nbytes = 0  # what the buffered messages weigh (`curator.batch.record_nbytes`)
        self._seen_next: dict[int, int | None] = {}  # offset after the last message added, per partition
        self.gaps: Counter[int] = Counter()  # offsets skipped by the source (retention, compaction, markers)

    # --- partitions -----------------------------------------------------------------
    def assign(self, partitions: list[int], start: dict[int, int] | None = None) -> None:
        for p in partitions:
            if p not in self.buf:
                self.buf[p] = deque()
                self.next[p] = (start or {}).get(p)
                self._seen_next[p] = self.next[p]
                self.caught_up[p] = False

    def revoke(self, partitions: list[int]) -> None:
        gone = set(partitions)
        for p in gone:
            for u in self.buf.pop(p, deque()):
                self.items -= len(u)
                self.nbytes -= u.nbytes
            self.next.pop(p, None)
            self._seen_next.pop(p, None)
            self.caught_up.pop(p, None)
        self._arrival = deque((p, u) for p, u in self._arrival if p not in gone)

    @property
    def partitions(self) -> list[int]:
        return sorted(self.buf)

    def buffered(self, p: int) -> int:
        return sum(len(u) for u in self.buf.get(p, ()))

    def buffered_bytes(self, p: int) -> int:
        return sum(u.nbytes for u in self.buf.get(p, ()))

    # --- input ----------------------------------------------------------------------
    def add(self, batch: RawBatch) -> int:
        """Buffer a polled batch (undecoded messages, records and rejections of any partitions); returns
        the items added (an Arrow message counts its rows)."""
        items: list[tuple[Position, dict[str, Any] | Message | Rejection]] = [
            *zip(batch.positions, batch.records, strict=True), *((e.position, e) for e in batch.errors),
            *((m.position, m) for m in batch.messages)]
        items.sort(key=lambda t: (t[0].partition, t[0].offset))  # stable: rows of a message keep their order
        added = 0
        for pos, it in items:
            p = pos.partition
            if p not in self.buf:
                self.assign([p])
            q = self.buf[p]
            if q and q[-1].offset == pos.offset:
                u = q[-1]
            else:
                if q and pos.offset < q[-1].offset:
                    raise ValueError(f"partition {p} went back from offset {q[-1].offset} to {pos.offset}")
                u = _Unit(pos.offset)
                q.append(u)
                seen = self._seen_next.get(p)
                if seen is not None and pos.offset > seen:
                    self.gaps[p] += pos.offset - seen
                self._seen_next[p] = pos.offset + 1
                if self.order == "arrival":
                    self._arrival.append((p, u))
            n = 1
            if isinstance(it, Message):
                u.messages.append(it)
                size, n = it.nbytes, it.rows
            elif isinstance(it, Rejection):
                u.errors.append(it)
                size = rejection_nbytes(it)
            else:
                u.records.append(it)
                u.positions.append(pos)
                size = record_nbytes(it)
            u.nbytes += size
            self.nbytes += size
            self.caught_up[p] = False
            self.items += n
            added += n
        return added

    def mark_position(self, p: int, position: int, caught_up: bool) -> None:
        """The consumer's next offset for an empty partition, and whether it reached the end offset."""
        if p in self.buf and not self.buf[p]:
            nxt = self.next.get(p)
            self.next[p] = position if nxt is None else max(nxt, position)
            self.caught_up[p] = caught_up

    # --- output ---------------------------------------------------------------------
    def _head(self) -> tuple[int, int] | None:
        heads = [(q[0].offset, p) for p, q in self.buf.items() if q]
        return min(heads) if heads else None

    def _waits(self) -> Iterator[tuple[tuple[float, int], int]]:
        """(the smallest key it may still deliver, partition) for each empty partition not caught up:
        -inf for one whose next offset is unknown (it may deliver anything)."""
        for p, q in self.buf.items():
            if not q and not self.caught_up.get(p):
                nxt = self.next.get(p)
                yield (float("-inf") if nxt is None else nxt, p), p

    def blockers(self) -> list[int]:
        """Empty partitions that may still deliver a message ordered before the current head."""
        if self.order == "arrival":
            return []
        head = self._head()
        return sorted(p for key, p in self._waits() if head is None or key < head)

    def _in_order(self, limit: int) -> tuple[list[int], int]:
        """The partitions whose head messages `pop(limit)` would emit, in stream order, and their items.

        A heap of the partitions' heads, and the smallest key an empty partition (not caught up) may
        still deliver: the walk stops at it. Emitting a message only ever adds such a bound (its
        partition ran dry), so both are kept up to date in O(log partitions) a message, not the
        O(partitions) of a look at every head and every blocker each time (~8 us an item with 12)."""
        wait = min((key for key, _ in self._waits()), default=None)  # the smallest key a blocker may deliver
        heads = [(q[0].offset, p) for p, q in self.buf.items() if q]
        heapq.heapify(heads)
        idx = dict.fromkeys(self.buf, 0)
        order: list[int] = []
        n = 0
        while n < limit and heads and (wait is None or wait >= heads[0]):
            off, p = heads[0]
            q = self.buf[p]
            u = q[idx[p]]
            idx[p] += 1
            order.append(p)
            n += len(u)
            if idx[p] < len(q):
                heapq.heapreplace(heads, (q[idx[p]].offset, p))
            else:
                heapq.heappop(heads)
                if not self.caught_up.get(p) and (wait is None or (off + 1, p) < wait):
                    wait = (off + 1, p)
        return order, n

    def available(self, limit: int) -> int:
        """How many items (whole messages, up to about `limit`) `pop` could emit right now."""
        if self.order == "arrival":
            return min(self.items, limit)
        return self._in_order(limit)[1]

    def pop(self, max_items: int) -> RawBatch | None:
        """Up to `max_items` items (whole messages) that can go now, in stream order; None if none."""
        if self.order == "arrival":
            order: list[int] = []
            n = 0
            for p, u in self._arrival:
                if n >= max_items:
                    break
                order.append(p)
                n += len(u)
        else:
            order, n = self._in_order(max_items)
        if not n:
            return None
        out = RawBatch()
        for p in order:
            if self.order == "arrival":
                self._arrival.popleft()
            u = self.buf[p].popleft()
            self.next[p] = u.offset + 1
            self.items -= len(u)
            self.nbytes -= u.nbytes
            out.records += u.records
            out.positions += u.positions
            out.errors += u.errors
            out.messages += u.messages
        return out

    def trim(self, p: int, keep_items: int, keep_bytes: int = 0) -> int | None:
        """Drop the tail of partition `p`'s buffer beyond `keep_items` items (and `keep_bytes` bytes, when
        set; at least its head message is kept); returns the first dropped offset, to seek the consumer
        back to, or None."""
        q = self.buf.get(p)
        if not q:
            return None
        kept, kept_b, cut = 0, 0, None
        for i, u in enumerate(q):
            if i > 0 and (kept + len(u) > keep_items or (keep_bytes and kept_b + u.nbytes > keep_bytes)):
                cut = i
                break
            kept += len(u)
            kept_b += u.nbytes
        if cut is None:
            return None
        first = q[cut].offset
        self._seen_next[p] = first
        while len(q) > cut:
            u = q.pop()
            self.items -= len(u)
            self.nbytes -= u.nbytes
        if self.order == "arrival":
            self._arrival = deque((pp, u) for pp, u in self._arrival if pp != p or u.offset < first)
        return first

    def end(self) -> None:
        """Every partition has ended (a bounded run): nothing is waited for any more."""
        for p in self.buf:
            self.caught_up[p] = True
