"""Where a Kafka message's decoding costs CPU: in the one driver process, or in the embedder actors.

    python benchmarks/wire_cost.py [--items 4096] [--rows-per-message 16] [--batch-size 256]
        [--images digits|photos] [--image-size 64] [--repeats 9] [--json FILE]

The service's driver reads every partition for the whole pool, so what it spends per item caps the
service however many embedders there are (`cpu_cost`: the critical process); the embedders scale
with the cores. This measures, in this process and in CPU time (`time.process_time`, so another
job on the machine hardly moves it), the message path of `curator serve` for each wire format,
with the payload decoded in either place, on the same messages:

- **driver**: reading each message into a batch of --batch-size items (`connectors.kafka.codec.
  read_message`: its framing; an Arrow message's rows counted), decoding it there too when
  ``decoded_in`` is the driver (`RawBatch.decoded`: JSON parsing, base64 images, Arrow rows into
  records), and pickling the batch as Ray sends it to an actor (Ray's cloudpickle, protocol 5,
  numpy buffers out of band: undecoded messages cross as `curator.wire.PackedMessages`);
- **actor**: unpickling it, and decoding it there when ``decoded_in`` is the embedder (what
  `curator serve` does: `curator.validate.validate_batch` decodes first).

Per item (us), medians of --repeats passes: ``driver_us_per_item``, ``actor_us_per_item``, their
sum, and ``pickled_bytes_per_item`` (what crosses to the actor: the pickle and its out-of-band
buffers). ``driver_ratio`` is the driver's figure with the decoding in the embedder over the same
with it in the driver. JSON carries one record per message (images base64), Arrow
--rows-per-message (images as raw bytes).
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ray import cloudpickle

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pipeline_speed import dataset  # noqa: E402

from connectors.kafka.codec import encode_arrow, encode_json, read_message  # noqa: E402
from curator.batch import RawBatch  # noqa: E402

COLS = ("wire", "decoded_in", "driver_us_per_item", "actor_us_per_item", "sum_us_per_item", "pickled_bytes_per_item",
        "driver_ratio")


def messages(records: list[dict[str, Any]], wire: str, rows_per_message: int) -> list[bytes]:
    if wire == "json":
        return [encode_json(r) for r in records]
    return [encode_arrow(records[i:i + rows_per_message]) for i in range(0, len(records), rows_per_message)]


def one_pass(values: list[bytes], batch_size: int, in_driver: bool) -> tuple[float, float, float]:
    """(driver us, actor us, pickled bytes) per item, for one pass over the messages."""
    t0 = time.process_time()
    batches, out, items = [], RawBatch(), 0
    for offset, value in enumerate(values):
        before = len(out.messages)
        read_message("topic", 0, offset, value, None, (), out, 1 << 30)
        items += sum(m.rows for m in out.messages[before:])
        if items >= batch_size:  # whole messages, as the service's batches
            batches.append(out)
            out, items = RawBatch(), 0
    batches += [out] if len(out) else []
    if in_driver:
        batches = [b.decoded() for b in batches]
    blobs = [serialize(b) for b in batches]
    t1 = time.process_time()
    back = [cloudpickle.loads(data, buffers=buffers) for data, buffers in blobs]
    if not in_driver:
        back = [b.decoded() for b in back]
    t2 = time.process_time()
    n = sum(len(b.records) for b in back)
    if n != sum(len(b) for b in batches) or any(b.errors for b in back):
        raise RuntimeError("a message did not decode into its records: the benchmark's data is wrong")
    crossed = sum(len(data) + sum(b.raw().nbytes for b in buffers) for data, buffers in blobs)
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, crossed / n


def serialize(batch: RawBatch) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """As Ray pickles an actor call's argument: protocol 5, numpy buffers out of band."""
    buffers: list[pickle.PickleBuffer] = []
    return cloudpickle.dumps(batch, protocol=5, buffer_callback=buffers.append), buffers


def measure(values: list[bytes], wire: str, batch_size: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for where in ("driver", "embedder"):
        runs = [one_pass(values, batch_size, where == "driver") for _ in range(repeats)]
        d, a, b = (statistics.median(r[i] for r in runs) for i in range(3))
        rows.append({"wire": wire, "decoded_in": where, "driver_us_per_item": round(d, 1),
                     "actor_us_per_item": round(a, 1), "sum_us_per_item": round(d + a, 1),
                     "pickled_bytes_per_item": round(b), "driver_ratio": None})
    rows[1]["driver_ratio"] = round(rows[1]["driver_us_per_item"] / rows[0]["driver_us_per_item"], 2)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=4096)
    ap.add_argument("--rows-per-message", type=int, default=16, help="records per Arrow message")
    ap.add_argument("--batch-size", type=int, default=256, help="items per batch (source.batch_size)")
    ap.add_argument("--images", choices=("digits", "photos"), default="digits")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=9, help="passes per figure (the table gives medians)")
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    records = dataset(args.items, args.image_size, images=args.images)
    print(" | ".join(f"{c:>22}" for c in COLS), flush=True)
    rows = []
    for wire in ("json", "arrow"):
        for row in measure(messages(records, wire, args.rows_per_message), wire, args.batch_size, args.repeats):
            rows.append(row)
            print(" | ".join(f"{'' if row[c] is None else row[c]:>22}" for c in COLS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
