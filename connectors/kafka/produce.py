"""Put records on a Kafka topic as curator reads them: JSON or Arrow IPC messages (``curator produce``).

For demos, tests and backfills: files read with FileSource go to a topic in the same wire formats
that KafkaSource decodes. JSON: one record per message, bytes as base64 text. Arrow: up to
``rows_per_message`` records per IPC stream message, with a ``content-type`` header.

kafka-python is imported inside the functions, so registering the ``curator produce`` command
(``add_command``) keeps ``curator --help`` free of Kafka imports.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from connectors.files import FORMATS, FileSource, FileSourceError
from connectors.kafka.clients import KafkaSourceError, kafka_producer
from connectors.kafka.codec import ARROW_CONTENT_TYPE, JSON_CONTENT_TYPE, encode_arrow, encode_json

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = logging.getLogger(__name__)

PARTITIONERS = ("round-robin", "key")


def _chunks(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def produce_records(
    bootstrap_servers: str | list[str],
    topic: str,
    records: Iterable[dict[str, Any]],
    fmt: str = "json",
    partitions: list[int] | None = None,
    partitioner: str = "round-robin",
    rows_per_message: int = 64,
    api_version: str = "",
    client: dict[str, Any] | None = None,
    producer: KafkaProducer | None = None,
) -> int:
    """Send records to `topic`; returns the number of records sent (flushed before returning).

    `partitions`: the partitions to spread over (default: all of the topic's). `partitioner`:
    'round-robin' (message by message) or 'key' (murmur2 of the record id, like Java clients:
    the same id always lands on the same partition). Arrow records that do not fit one inferred
    schema are sent as JSON instead, so the consumer still sees (and judges) each of them.
    """
    from kafka.errors import KafkaTimeoutError
    from kafka.partitioner.default import murmur2


    if fmt not in ("json", "arrow"):
        raise ValueError(f"fmt must be 'json' or 'arrow', got {fmt!r}")
    if partitioner not in PARTITIONERS:
        raise ValueError(f"partitioner must be one of {PARTITIONERS}, got {partitioner!r}")
    own = producer is None
    prod = producer or kafka_producer(bootstrap_servers, api_version, client)
    try:
        try:
            targets = sorted(partitions) if partitions else sorted(prod.partitions_for(topic) or ())
        except KafkaTimeoutError as exc:
            raise KafkaSourceError(f"no metadata for Kafka topic {topic!r}: {exc}") from None
        if not targets:
            raise KafkaSourceError(f"Kafka topic {topic!r} has no partitions (does it exist?)")
        rr = itertools.cycle(targets)

        def send(value: bytes, key: str | None, content_type: str) -> None:
            kb = key.encode("utf-8") if key is not None else None
            if partitioner == "key" and kb is not None:
                part = targets[(murmur2(kb) & 0x7FFFFFFF) % len(targets)]
            else:
                part = next(rr)
            prod.send(topic, value=value, key=kb, partition=part, headers=[("content-type", content_type.encode())])

        sent = 0
        size = 1 if fmt == "json" else max(1, rows_per_message)
        for chunk in _chunks(records, size):
            first_id = chunk[0].get("id") if isinstance(chunk[0], dict) else None
            key = None if first_id is None else str(first_id)
            if fmt == "arrow":
                try:
                    send(encode_arrow(chunk), key, ARROW_CONTENT_TYPE)
                    sent += len(chunk)
                    continue
                except (pa.ArrowException, TypeError, ValueError) as exc:
                    log.warning("records do not fit one Arrow schema (%s); sending them as JSON", exc)
            for rec in chunk:
                rid = rec.get("id") if isinstance(rec, dict) else None
                send(encode_json(rec), None if rid is None else str(rid), JSON_CONTENT_TYPE)
                sent += 1
        prod.flush()
        return sent
    finally:
        if own:
            prod.close()


def produce_files(
    paths: list[str],
    bootstrap_servers: str | list[str],
    topic: str,
    format: str = "auto",  # noqa: A002 - the FileSource / config name
    fmt: str = "json",
    limit: int = 0,
    **kwargs: Any,
) -> int:
    """Read files with FileSource and send their records; unreadable input is logged and skipped."""
    src = FileSource(paths, format=format)
    skipped = 0

    def records() -> Iterator[dict[str, Any]]:
        nonlocal skipped
        n = 0
        for batch in src.batches(256):
            for e in batch.errors:
                skipped += 1
                log.warning("skipping %s:%d:%d: %s", e.position.source, e.position.partition, e.position.offset,
                            e.reason)
            for rec in batch.records:
                if limit and n >= limit:
                    return
                n += 1
                yield rec

    sent = produce_records(bootstrap_servers, topic, records(), fmt=fmt, **kwargs)
    if skipped:
        log.warning("%d unreadable input item(s) skipped", skipped)
    return sent


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("paths", nargs="+", help="input files or folders (Parquet, JSONL, image folders, WebDataset tars)")
    ap.add_argument("--bootstrap", default=os.environ.get("CURATOR_KAFKA_BOOTSTRAP", "localhost:9092"),
                    help="Kafka bootstrap servers, comma-separated (default: $CURATOR_KAFKA_BOOTSTRAP or localhost:9092)")
    ap.add_argument("--topic", required=True, help="topic to send to (it must exist)")
    ap.add_argument("--format", default="auto", choices=FORMATS, help="how to read the inputs (default: by extension)")
    ap.add_argument("--wire", default="json", choices=("json", "arrow"),
                    help="message encoding: one JSON object per record, or Arrow IPC batches (default json)")
    ap.add_argument("--partitioner", default="round-robin", choices=PARTITIONERS,
                    help="round-robin over partitions, or by a hash of the record id (default round-robin)")
    ap.add_argument("--rows-per-message", type=int, default=64, help="--wire arrow: records per message (default 64)")
    ap.add_argument("--api-version", default="", help="Kafka API version, e.g. 2.3 (default: ask the broker)")
    ap.add_argument("--client", default="{}",
                    help="JSON object of extra kafka-python producer settings (security_protocol, sasl_*, ssl_*)")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many records (0 = all)")


def cmd_produce(args: argparse.Namespace) -> int:
    """Run `curator produce` from parsed arguments; user errors print one line and return 2."""
    try:
        client = json.loads(args.client)
        if not isinstance(client, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        print(f"curator produce: --client must be a JSON object of producer settings ({exc})", file=sys.stderr)
        return 2
    try:
        n = produce_files(
            args.paths, args.bootstrap, args.topic, format=args.format, fmt=args.wire, limit=args.limit,
            partitioner=args.partitioner, rows_per_message=args.rows_per_message, api_version=args.api_version,
            client=client,
        )
    except (KafkaSourceError, FileSourceError, ValueError) as exc:
        print(f"curator produce: {exc}", file=sys.stderr)
        return 2
    print(f"sent {n} records to {args.topic}")
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register `curator produce` (called by pipelines.cli)."""
    p = sub.add_parser("produce", help="send files' records to a Kafka topic (JSON or Arrow IPC messages)",
                       description="Reads inputs the way `curator ingest` does and sends every record to a Kafka "
                                   "topic in the wire formats `curator serve` consumes. Unreadable input is "
                                   "logged and skipped.")
    _add_arguments(p)
    p.set_defaults(func=cmd_produce)


def produce_main(argv: list[str] | None = None) -> int:
    """`curator produce`, standalone: send files to a Kafka topic."""
    ap = argparse.ArgumentParser(prog="curator produce", description=produce_main.__doc__)
    _add_arguments(ap)
    return cmd_produce(ap.parse_args(argv))


__all__ = [
    "add_command",
    "cmd_produce",
    "encode_arrow",
    "encode_json",
    "kafka_producer",
    "produce_files",
    "produce_main",
    "produce_records",
]
