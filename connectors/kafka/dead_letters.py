"""Dead-letter sink: rejected input goes to a Kafka topic with its reason, position and a raw preview.

Operators replay or inspect rejects with ordinary Kafka tools; each message is self-describing JSON
keyed by the record id (or ``source:partition:offset`` when the input had none).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any

from connectors.kafka.clients import kafka_producer
from curator.records import Position, Rejection

DEAD_LETTER_CONTENT_TYPE = "application/vnd.curator.rejection+json"


def encode_rejection(r: Rejection, max_raw_bytes: int = 4096) -> bytes:
    raw = r.raw or b""
    doc = {
        "source": r.position.source,
        "partition": r.position.partition,
        "offset": r.position.offset,
        "id": r.id,
        "code": r.code,
        "reason": r.reason,
        "raw": base64.b64encode(raw[:max_raw_bytes]).decode("ascii"),
        "raw_truncated": len(raw) > max_raw_bytes,
    }
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def decode_rejection(value: bytes) -> Rejection:
    """A dead-letter message back as a Rejection (raw is the possibly truncated preview)."""
    doc = json.loads(value)
    return Rejection(
        Position(doc["source"], int(doc["partition"]), int(doc["offset"])),
        doc["reason"],
        doc.get("id"),
        base64.b64decode(doc.get("raw") or ""),
        doc.get("code") or "unclassified",
    )


class KafkaDeadLetterSink:
    """Sends Rejections to a topic. `send` is asynchronous; `flush` blocks until all are acknowledged,
    so call it before committing the source positions the rejections came from."""

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        topic: str,
        api_version: str = "",
        client: dict[str, Any] | None = None,
        max_raw_bytes: int = 4096,
    ) -> None:
        if not topic:
            raise ValueError("dead-letter sink needs a topic")
        self.topic = topic
        self.max_raw_bytes = max_raw_bytes
        self._producer = kafka_producer(bootstrap_servers, api_version, client)
        self.sent = 0

    def send(self, rejects: Iterable[Rejection]) -> int:
        n = 0
        for r in rejects:
            key = r.id if r.id is not None else f"{r.position.source}:{r.position.partition}:{r.position.offset}"
            self._producer.send(
                self.topic,
                value=encode_rejection(r, self.max_raw_bytes),
                key=key.encode("utf-8"),
                headers=[("content-type", DEAD_LETTER_CONTENT_TYPE.encode())],
            )
            n += 1
        self.sent += n
        return n

    write = send  # the name other sinks use

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()

    def __enter__(self) -> KafkaDeadLetterSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["KafkaDeadLetterSink", "decode_rejection", "encode_rejection"]
