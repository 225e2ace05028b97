"""What the producer's batch size costs the producer, and the consumer behind it, per record.

    python benchmarks/kafka_batching.py [--items 3000] [--partitions 2] [--batch-bytes 16384 262144]
        [--wire json|arrow] [--repeats 3] [--json FILE]

Against librdkafka's mock cluster (started here), or the broker in $CURATOR_KAFKA_BOOTSTRAP. For each
--batch-bytes (kafka-python's `batch_size`; its default is 16384, curator's producers use
`connectors.kafka.clients.PRODUCER_DEFAULTS`), the same records go to a new topic through `curator
produce`'s sender (`produce_records`), then a consumer assigned every partition reads them back in
polls of up to 256 messages, as the service's source asks for a batch. Columns, medians of --repeats:

- ``produce_us_per_record``: the producer's CPU (this process: its I/O thread included);
- ``produce_s``: its wall time, to the last acknowledgement;
- ``consume_us_per_record``: the consumer's CPU until every record is read -- the driver's Kafka cost;
- ``messages_per_poll``: messages per poll that brought any (a JSON message is a record; an Arrow
  message, `produce_records`' rows_per_message of them).

A broker that answers a fetch with one stored batch per partition (the mock cluster does) gives the
consumer as many records a fetch as the producer put in a batch; a real broker fills a fetch up to
`max_partition_fetch_bytes` from many batches, so there the consumer's figure moves less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_speed import Broker, dataset  # noqa: E402
from connectors.kafka.clients import kafka_producer, parse_api_version, server_list  # noqa: E402
from connectors.kafka.produce import produce_records  # noqa: E402

COLS = ("batch_bytes", "produce_us_per_record", "produce_s", "consume_us_per_record", "messages_per_poll")


def once(broker: Broker, records: list[dict[str, Any]], partitions: int, batch_bytes: int, wire: str
         ) -> tuple[float, float, float, float]:
    from kafka import KafkaConsumer, TopicPartition

    topic = broker.topic(partitions)
    prod = kafka_producer(broker.bootstrap, broker.api, batch_size=batch_bytes)
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        sent = produce_records(broker.bootstrap, topic, records, fmt=wire, producer=prod)
    finally:
        prod.close()
    produce_cpu, produce_s = time.process_time() - c0, time.perf_counter() - t0
    api = parse_api_version(broker.api)
    consumer = KafkaConsumer(bootstrap_servers=server_list(broker.bootstrap), group_id=None,
                             enable_auto_commit=False, **({"api_version": api} if api else {}))
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        messages = sum(consumer.end_offsets(parts).values())  # an Arrow message holds many records
        got, polls, deadline = 0, [], time.monotonic() + 120
        c0 = time.process_time()
        while got < messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {got} of {messages} messages back in 120 s: did the broker drop some "
                                   "(the mock cluster keeps ~5 MB a partition: fewer --items or more --partitions)?")
            n = sum(len(v) for v in consumer.poll(timeout_ms=500, max_records=256).values())
            got += n
            polls += [n] if n else []
        consume_cpu = time.process_time() - c0
    finally:
        consumer.close()
    return produce_cpu * 1e6 / sent, produce_s, consume_cpu * 1e6 / sent, messages / max(1, len(polls))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--batch-bytes", type=int, nargs="+", default=[16384, 262144])
    ap.add_argument("--wire", choices=("json", "arrow"), default="json")
    ap.add_argument("--images", choices=("digits", "photos"), default="digits")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    records = dataset(args.items, args.image_size, images=args.images)
    broker = Broker()
    runs: dict[int, list[tuple[float, ...]]] = {b: [] for b in args.batch_bytes}
    try:
        for _ in range(args.repeats):  # interleaved: the machine's load meets every setting alike
            for b in args.batch_bytes:
                runs[b].append(once(broker, records, args.partitions, b, args.wire))
    finally:
        broker.close()
    print(f"{args.items} records ({args.images}, {args.image_size} px, {args.wire}) on {args.partitions} "
          f"partition(s); medians of {args.repeats}")
    print(" | ".join(f"{c:>22}" for c in COLS))
    rows = []
    for b, r in runs.items():
        med = [statistics.median(x[i] for x in r) for i in range(4)]
        row = {"batch_bytes": b, "produce_us_per_record": round(med[0], 1), "produce_s": round(med[1], 2),
               "consume_us_per_record": round(med[2], 1), "messages_per_poll": round(med[3], 1)}
        rows.append(row)
        print(" | ".join(f"{row[c]:>22}" for c in COLS))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
