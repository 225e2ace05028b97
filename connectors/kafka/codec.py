"""The wire formats: Kafka messages are JSON or Arrow IPC, never pickle.

- **JSON**: one message is one object, one record; images travel as base64 text in ``image``
  (or ``image_b64``). Without an ``id`` the validator names it ``topic:partition:offset``.
- **Arrow IPC stream** (detected by the IPC continuation marker ``0xFFFFFFFF`` at the start, or a
  ``content-type: application/vnd.apache.arrow.stream`` header): one message holds record batches
  with ``RAW_COLUMNS``; every row becomes a record with the message's position and, without an
  ``id``, the id ``topic:partition:offset:row``. The rows of one message are never split across
  batches, so a commit always falls between messages.

A message that cannot be decoded (bad JSON, not an object, oversized, broken Arrow, a tombstone)
becomes a ``Rejection`` at its position; the stream never stops for it. The reader checks only a
message's framing (`read_message`: a tombstone, its size, an Arrow stream's batches and rows) and
passes its bytes on; its payload is decoded where it is validated (`curator.wire`), in the embedder
actors, so JSON parsing, base64 images and Arrow rows are not the one driver process's work.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pyarrow as pa

from curator.batch import RawBatch
from curator.records import InvalidRecord, Position, Rejection
from curator.wire import PREVIEW_BYTES, Message, arrow_batches

ARROW_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
JSON_CONTENT_TYPE = "application/json"
ARROW_CONTINUATION = b"\xff\xff\xff\xff"


def read_message(topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
                 headers: Any, out: RawBatch, max_message_bytes: int) -> None:
    """Append one message to `out`, undecoded (`out.messages`; `curator.wire` decodes it where it is
    validated), or its rejection when its framing is wrong. An Arrow message's batches are read here
    (zero-copy) to count its rows; one with none holds no item."""
    pos = Position(topic, partition, int(offset))
    rid_key = _text(key)

    def reject(reason: str, code: str) -> None:
        out.errors.append(Rejection(pos, reason, rid_key, (value or b"")[:PREVIEW_BYTES], code))

    if value is None:
        reject("empty message (tombstone): nothing to curate", "empty-message")
        return
    if len(value) > max_message_bytes:
        reject(f"message is {len(value)} bytes, over max_message_bytes ({max_message_bytes})", "too-large")
        return
    if value[:4] == ARROW_CONTINUATION or _content_type(headers) == ARROW_CONTENT_TYPE:
        try:
            rows = sum(b.num_rows for b in arrow_batches(value, max_message_bytes * 4))
        except InvalidRecord as exc:
            reject(str(exc), exc.code)
            return
        if rows:
            out.messages.append(Message(pos, value, rid_key, True, rows))
        return
    out.messages.append(Message(pos, value, rid_key))


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")[:200]
    except UnicodeDecodeError:
        return None


def _content_type(headers: Any) -> str | None:
    for k, v in headers or ():
        if str(k).lower() == "content-type" and v is not None:
            return (v.decode("latin-1") if isinstance(v, bytes) else str(v)).split(";")[0].strip().lower()
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_json(record: dict[str, Any]) -> bytes:
    """One record as a JSON message; bytes (the image) become base64 text, as the source expects."""
    return json.dumps(record, default=_jsonable, separators=(",", ":")).encode("utf-8")


def encode_arrow(records: list[dict[str, Any]]) -> bytes:
    """Records as one Arrow IPC stream message (schema inferred; metadata objects as JSON text)."""
    rows = [
        {**r, "metadata": json.dumps(r["metadata"], default=_jsonable)} if isinstance(r.get("metadata"), dict) else r
        for r in records
    ]
    names = list(dict.fromkeys(k for r in rows for k in r))  # every row's fields, not just the first row's
    table = pa.table({k: [r.get(k) for r in rows] for k in names})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
