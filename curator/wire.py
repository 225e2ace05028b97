"""Message values as they arrive from a stream, and their decoding into raw records where they are
validated.

The formats (JSON, one record per message; Arrow IPC stream, many) are described in
`connectors.kafka.codec`, which reads each message's framing: a tombstone, an oversized message or a
broken Arrow stream is rejected there, and an Arrow message's rows are counted (its batches are read
zero-copy), so every batch knows how many items it holds. The payload itself -- JSON parsing, base64
images, Arrow columns into Python rows -- is decoded here, by `RawBatch.decoded()` at the start of
validation: in the embedder actors, which scale with the cores, not in the one driver process that
reads the stream for all of them. Decoding there cost the driver ~22 us per item with JSON and ~5
with Arrow (digits; 87 and 32 on photos), and the Python rows it made cost more to pickle to an
actor than the bytes they came from (`benchmarks/wire_cost.py`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from curator.fields import canonical_record, given_id
from curator.records import InvalidRecord, Position, Rejection

#: what a rejection keeps of a message: enough to see what it was
PREVIEW_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Message:
    """One undecoded message: its value, its position, the key as text (a rejection's id when the
    record gives none), whether it is an Arrow IPC stream, and the items it holds (1 for JSON)."""

    position: Position
    value: bytes
    key: str | None = None
    arrow: bool = False
    rows: int = 1

    @property
    def nbytes(self) -> int:
        return 64 + len(self.value)


@dataclass
class PackedMessages:
    """Messages as columns, the form they are pickled in on their way to an embedder actor: their
    values in one buffer (a numpy array, which Ray's pickle hands over out of band) and their positions,
    keys and counts as arrays -- not one Python object per message, whose pickling cost the driver
    ~5 us an item, as much as the rest of handing a batch to an actor (Ray's two calls)."""

    sources: list[str]
    source: np.ndarray  # per message, its index in `sources`
    partition: np.ndarray
    offset: np.ndarray
    ends: np.ndarray  # value i is values[ends[i - 1]:ends[i]]
    values: np.ndarray  # uint8
    keys: list[str | None]
    arrow: np.ndarray
    rows: np.ndarray

    @classmethod
    def pack(cls, messages: list[Message]) -> PackedMessages:
        sources: dict[str, int] = {}
        src = [sources.setdefault(m.position.source, len(sources)) for m in messages]
        values = [m.value for m in messages]
        return cls(list(sources), np.array(src, np.int32), np.array([m.position.partition for m in messages], np.int64),
                   np.array([m.position.offset for m in messages], np.int64),
                   np.cumsum([len(v) for v in values], dtype=np.int64),
                   np.frombuffer(b"".join(values), np.uint8), [m.key for m in messages],
                   np.array([m.arrow for m in messages], bool), np.array([m.rows for m in messages], np.int64))

    def unpack(self) -> list[Message]:
        data = self.values.tobytes()
        starts = [0, *self.ends[:-1].tolist()]
        return [Message(Position(self.sources[s], p, o), data[a:b], k, arrow, rows)
                for s, p, o, a, b, k, arrow, rows in zip(
                    self.source.tolist(), self.partition.tolist(), self.offset.tolist(), starts, self.ends.tolist(),
                    self.keys, self.arrow.tolist(), self.rows.tolist(), strict=True)]


# ------------------------------------------------------------------------------------- JSON
def record_from_json(obj: Any, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A raw record from one decoded JSON value; shared by JSONL files and JSON messages.

    JSON has no bytes, so an image travels as base64 text (or a ``data:`` URI) in ``image``, or as a
    path or URI there or in ``image_path`` / ``url`` / ...; other tools' field names are mapped
    (`curator.fields`). `base_dir`: the JSONL file's folder, which relative paths are relative to.
    Raises InvalidRecord (a ValueError) with the reason and its code.
    """
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(obj), type(obj).__name__)
        raise InvalidRecord(f"expected a JSON object with fields, got {kind}", "not-an-object")
    return canonical_record(obj, base_dir)


def json_id(obj: Any) -> str | None:
    """The record's id (or its alias: ``key``, ``uid``, ...) for a rejection of it, when it has a usable one."""
    value = given_id(obj)
    return str(value)[:200] if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def read_json_bytes(data: bytes, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Decode one JSON message/line into a raw record (InvalidRecord with the reason when it is not one)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidRecord(f"invalid JSON: {exc}", "invalid-json") from None
    return record_from_json(obj, base_dir)


# ------------------------------------------------------------------------------------ Arrow
def arrow_batches(value: bytes, max_decoded_bytes: int) -> list[pa.RecordBatch]:
    """The record batches of an Arrow IPC stream message (zero-copy views of `value`), refusing streams
    that decode to far more than they weigh (compressed buffers), so a small message cannot allocate
    unbounded memory. Raises InvalidRecord ("bad-arrow", "too-large")."""
    batches: list[pa.RecordBatch] = []
    decoded = 0
    try:
        for batch in pa.ipc.open_stream(pa.py_buffer(value)):
            decoded += batch.nbytes
            if decoded > max_decoded_bytes:
                raise InvalidRecord(f"Arrow message decodes to over {max_decoded_bytes} bytes", "too-large")
            batches.append(batch)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidRecord(f"message is not a valid Arrow IPC stream: {exc}", "bad-arrow") from None
    return batches


# ----------------------------------------------------------------------------------- decode
def decode_messages(messages: list[Message], records: list[dict[str, Any]], positions: list[Position],
                    errors: list[Rejection]) -> None:
    """Append the messages' records (with their positions), or their rejections, in message order.

    An Arrow row without an ``id`` is named ``topic:partition:offset:row``; a JSON record without one
    is named by the validator (``topic:partition:offset``). The framing was checked where the
    message was read, so an Arrow stream decodes here as it did there."""
    for m in messages:
        pos = m.position
        if m.arrow:
            try:
                batches = arrow_batches(m.value, 1 << 62)
            except InvalidRecord as exc:  # the reader checked it; a Message built elsewhere may not be
                errors.append(Rejection(pos, str(exc), m.key, m.value[:PREVIEW_BYTES], exc.code))
                continue
            i = 0
            for batch in batches:
                for row in batch.to_pylist():
                    if row.get("id") is None:
                        row["id"] = f"{pos.source}:{pos.partition}:{pos.offset}:{i}"
                    records.append(row)
                    positions.append(pos)
                    i += 1
            continue
        try:
            obj = json.loads(m.value)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            errors.append(Rejection(pos, f"message is neither JSON nor Arrow IPC: {exc}", m.key,
                                    m.value[:PREVIEW_BYTES], "invalid-json"))
            continue
        try:
            rec = record_from_json(obj)
        except InvalidRecord as exc:
            errors.append(Rejection(pos, f"message: {exc}", json_id(obj), m.value[:PREVIEW_BYTES], exc.code))
            continue
        records.append(rec)
        positions.append(pos)
