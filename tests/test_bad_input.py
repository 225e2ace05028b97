"""Bad input never stops the stream: over 1,000 malformed messages of every kind, mixed into good
ones on a 3-partition topic, all land in the dead-letter topic (and the quarantine table) with a
reason and their source position; every good item is decided; the service runs once, start to end.

A fixed, seeded generator makes the messages (so a failure names the exact message). The CLIP run
(the tiny random-init model: images really are decoded) covers the wire and image cases; a
precomputed-embedding run covers NaN, infinite, zero and wrong-sized vectors.
"""

from __future__ import annotations

import base64
import io
import json
import random
import signal
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from connectors.kafka.clients import kafka_producer
from connectors.kafka.codec import ARROW_CONTENT_TYPE, encode_arrow
from connectors.kafka.dead_letters import decode_rejection
from curator.records import KEPT_DECISIONS
from curator.store import read_manifest, read_table
from tests.conftest import KafkaTestBroker
from tests.test_service import (  # noqa: F401 - fixtures
    Digits,
    ServiceProcess,
    digits,
    ray_cluster,
    run_config,
    serve_config,
    write_config,
)

pytestmark = [pytest.mark.ray, pytest.mark.kafka]

MAX_MESSAGE = 200_000


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG whose header claims width x height pixels (900 M): tiny on the wire."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1-bit gray
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 64, 9)  # only the first rows: decoding would fail later anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass
class Msg:
    value: bytes | None
    kind: str
    rows: int = 1  # bad rows this message yields (an Arrow message of bad rows yields several)
    good_ids: list[str] = field(default_factory=list)
    arrow: bool = False


def bad_messages(rng: random.Random, good_image: bytes, clip: bool) -> list[Msg]:
    """Malformed messages, a few of each kind per round; `clip`: cases the CLIP embedder judges
    (images), else the precomputed embedder's (vectors)."""
    img = _b64(good_image)
    trunc = _b64(good_image[: len(good_image) // 2])
    bomb = _b64(_bomb_png())

    def j(obj: Any, kind: str) -> Msg:
        return Msg(json.dumps(obj).encode(), kind)

    def raw(b: bytes | None, kind: str) -> Msg:
        return Msg(b, kind)

    out: list[Msg] = []
    for _ in range(rng.randint(1, 3)):
        n = rng.randrange(1, 10**6)
        out += [
            raw(b'{"id": "x%d", "text": "cut off' % n, "invalid-json"),
            raw(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))), "random-bytes"),
            raw(b"[" * 100_000, "deep-nesting"),
            raw(b'{"text": "\xff\xfe\xfd"}', "invalid-utf8"),
            raw(rng.choice([b"[1, 2]", b'"a string"', b"42", b"null", b"true"]), "not-an-object"),
            raw(None, "tombstone"),
            raw(b'{"text": "' + b"x" * MAX_MESSAGE + b'"}', "oversized"),
            raw(b"\xff\xff\xff\xff" + bytes(rng.getrandbits(8) for _ in range(40)), "broken-arrow"),
            j({}, "nothing-to-embed"),
            j({"id": f"only-id-{n}", "label": 3, "metadata": {"a": 1}}, "nothing-to-embed"),
            j({"text": "ok", "label": rng.choice(["abc", True, [1], 1.5, {"a": 1}])}, "wrong-type-label"),
            j({"text": rng.choice([123, ["a"], {"a": "b"}, True])}, "wrong-type-text"),
            j({"image": rng.choice([123, [1, 2], True, {"a": 1}]), "text": "a digit"}, "wrong-type-image"),
            j({"id": rng.choice([[1], {"a": 1}, True, 1.5]), "text": "a digit"}, "wrong-type-id"),
            j({"text": "a digit", "metadata": rng.choice([5, [1], True])}, "wrong-type-metadata"),
            j({"image_uri": rng.choice([5, "", "   "]), "text": "a"}, "wrong-type-uri"),
            j({"image": "!!not base64!!", "text": "a digit"}, "bad-base64"),
            j({"text": rng.choice(["", "   ", "\n\t"]), "image": img}, "empty-caption"),
            j({"text": "x" * 10_001}, "caption-too-long"),
            raw(json.dumps({"text": "a", "label": 10**30 + n}).encode(), "label-beyond-int64"),
            raw(b'{"text": "lone surrogate \\ud800 here", "id": "s%d"}' % n, "surrogate-text"),
            raw(b'{"text": "ok", "extra": NaN}', "nan-metadata"),
        ]
        if clip:
            out += [
                j({"image": _b64(bytes(rng.getrandbits(8) for _ in range(200))), "text": "noise"}, "undecodable-image"),
                j({"image": _b64(b"GIF89a" + b"\x00" * 10)}, "undecodable-image"),
                j({"image": trunc, "label": 1}, "truncated-image"),
                j({"image": bomb, "label": 2}, "decompression-bomb"),
                j({"image_uri": rng.choice(["/nonexistent/d.png", "/dev/zero", "ftp://h/x.png",
                                            "http://127.0.0.1:9/x.png"])}, "bad-image-uri"),
                raw(b'{"image": "%s", "embedding": [NaN, 1.0, 2.0]}' % img.encode(), "nan-embedding"),
                raw(b'{"image": "%s", "embedding": [Infinity, 1.0]}' % img.encode(), "inf-embedding"),
                Msg(encode_arrow([{"text": "", "label": 1}, {"text": " ", "label": 2}, {"label": 3}]),
                    "arrow-bad-rows", rows=3, arrow=True),
            ]
        else:
            dim = 64
            vec = [rng.random() + 0.1 for _ in range(dim)]
            out += [
                j({"embedding": vec[: rng.choice([1, 10, 63])], "label": 1}, "wrong-size-embedding"),
                j({"embedding": vec + [1.0], "label": 1}, "wrong-size-embedding"),
                raw(b'{"embedding": [NaN%s], "label": 2}' % (b", 1.0" * (dim - 1)), "nan-embedding"),
                raw(b'{"embedding": [-Infinity%s]}' % (b", 1.0" * (dim - 1)), "inf-embedding"),
                j({"embedding": [0.0] * dim, "label": 3}, "zero-embedding"),
                j({"embedding": [], "text": "x"}, "empty-embedding"),
                j({"embedding": ["a"] * dim}, "string-embedding"),
                j({"embedding": [[1.0]] * dim}, "nested-embedding"),
                j({"embedding": [1e39] * dim}, "overflow-embedding"),
                j({"image": img, "label": 4}, "no-embedding"),  # the precomputed embedder needs one
                Msg(encode_arrow([{"embedding": vec[:5], "label": 1}, {"embedding": [0.0] * dim, "label": 1}]),
                    "arrow-bad-rows", rows=2, arrow=True),
            ]
    return out


def good_messages(records: list[dict[str, Any]], clip: bool, rng: random.Random) -> list[Msg]:
    """The digits, as JSON (base64 images) and, every 8th group, as one Arrow message of 4 rows."""
    out, i = [], 0
    while i < len(records):
        if rng.random() < 0.12 and i + 4 <= len(records):
            chunk = records[i:i + 4]
            rows = [{k: v for k, v in r.items() if clip or k != "image"} for r in chunk]
            out.append(Msg(encode_arrow(rows), "good", rows=0, good_ids=[r["id"] for r in chunk], arrow=True))
            i += 4
        else:
            r = records[i]
            rec = {**r, "image": _b64(r["image"])} if clip else {k: v for k, v in r.items() if k != "image"}
            out.append(Msg(json.dumps(rec).encode(), "good", rows=0, good_ids=[r["id"]]))
            i += 1
    return out


def produce(broker: KafkaTestBroker, topic: str, msgs: list[Msg]) -> dict[tuple[int, int], Msg]:
    """Round-robin over 3 partitions; returns (partition, offset) -> message."""
    prod = kafka_producer(broker.bootstrap, broker.api_version, broker.client, max_request_size=4 * MAX_MESSAGE)
    futs = []
    try:
        for i, m in enumerate(msgs):
            headers = [("content-type", ARROW_CONTENT_TYPE.encode())] if m.arrow else []
            key = b"tombstone" if m.value is None else None  # a null value needs a key
            futs.append((prod.send(topic, value=m.value, key=key, partition=i % 3, headers=headers), m))
        prod.flush()
        return {(f.get(30).partition, f.get(30).offset): m for f, m in futs}
    finally:
        prod.close()


def read_topic(broker: KafkaTestBroker, topic: str) -> list[bytes]:
    from kafka import KafkaConsumer, TopicPartition

    kw: dict[str, Any] = {"bootstrap_servers": broker.bootstrap.split(","), "enable_auto_commit": False,
                          "group_id": None}
    if broker.api_version:
        kw["api_version"] = tuple(int(x) for x in broker.api_version.split("."))
    c = KafkaConsumer(**kw)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        c.assign(tps)
        c.seek_to_beginning()
        ends = c.end_offsets(tps)
        out: list[bytes] = []
        deadline = time.monotonic() + 60
        while any(c.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for msgs in c.poll(500).values():
                out += [m.value for m in msgs]
        return out
    finally:
        c.close()


EXPECTED_REASON = {  # words the reason of each kind must contain (lower case)
    "invalid-json": "neither json", "deep-nesting": "json", "tombstone": "tombstone",
    "oversized": "max_message_bytes", "broken-arrow": "arrow", "not-an-object": "object",
    "nothing-to-embed": "nothing to embed", "bad-base64": "base64", "empty-caption": "empty caption",
    "caption-too-long": "over the limit", "label-beyond-int64": "64-bit",
    "surrogate-text": "not valid unicode", "decompression-bomb": "decompression",
    "wrong-size-embedding": "expected 64", "nan-embedding": "nan", "inf-embedding": "infinite",
    "zero-embedding": "zero", "wrong-type-label": "label", "wrong-type-image": "image",
}


def run_bad_input(clip: bool, ray_cluster: str, broker: KafkaTestBroker, digits: Digits,  # noqa: F811
                  tmp: Path, n_good: int, min_bad: int, seed: int) -> None:
    rng = random.Random(seed)
    good_image = digits.records[0]["image"]
    goods = good_messages(digits.records[:n_good], clip, rng)
    bads: list[Msg] = []
    while sum(m.rows for m in bads) < min_bad:
        bads += bad_messages(rng, good_image, clip)
    msgs = goods + bads
    rng.shuffle(msgs)
    topic, dlq = broker.new_topic(3, "bad"), broker.new_topic(1, "dlq")
    where = produce(broker, topic, msgs)

    out = tmp / "run"
    run = run_config(out, digits)
    if clip:
        run.embedder.kind, run.embedder.model, run.embedder.pretrained = "clip", "curator-tiny", ""
        run.embedder.device, run.embedder.model = "cpu", "curator-tiny"
        run.selector.eps_dup = 1e-4  # random-init CLIP puts all 8x8 digits close together
    scfg = serve_config(run, broker, topic, ray_cluster,
                        kafka={"dead_letter_topic": dlq, "max_message_bytes": MAX_MESSAGE, "end_after_idle_s": 0.0},
                        service={"embed_actors": 2})
    sp = ServiceProcess(write_config(scfg, tmp / "bad.toml"), tmp / "bad.log")
    # runs until every message is committed, then /metrics and a SIGTERM drain
    ends = Counter(p for p, _ in where)
    deadline = time.monotonic() + 240
    while True:
        m = read_manifest(out) if (out / "manifest.json").exists() else None
        pos = {int(p): o for p, o in ((m or {}).get("positions", {}).get(topic) or {}).items()}
        if pos == dict(ends):
            break
        assert sp.proc.poll() is None, f"the service stopped:\n{sp.log()[-4000:]}"
        assert time.monotonic() < deadline, f"not done: {pos} of {dict(ends)}\n{sp.log()[-3000:]}"
        time.sleep(0.2)
    assert sp.get("/healthz")[0] == 200 and sp.get("/readyz")[0] == 200
    # the selector's actor writes the manifest (commit steps 1-3) before the driver has handled the
    # last batches' reports and flushed their dead letters (step 4): the count catches up shortly after
    n_bad_rows = sum(m.rows for m in bads)
    while (metrics := sp.get("/metrics")[1]) and dead_letters_counted(metrics) < n_bad_rows \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    sp.signal(signal.SIGTERM)
    assert sp.wait(60) == 0
    log = sp.log()
    assert log.count("curated set:") == 2 and "Traceback" not in log, log[-3000:]  # start + end, no restart

    good_ids = [i for m in goods for i in m.good_ids]
    # dead letters: every bad message (every bad row of an Arrow message), at its position, with a reason
    dead = [decode_rejection(v) for v in read_topic(broker, dlq)]
    got = Counter((r.position.partition, r.position.offset) for r in dead if r.position.source == topic)
    want = Counter({pos: m.rows for pos, m in where.items() if m.kind != "good"})
    assert got == want, (f"dead letters differ: missing {dict(want - got)}, unexpected {dict(got - want)}; "
                         f"e.g. {[(where[p].kind, where[p].value[:80] if where[p].value else None) for p in (want - got)][:5]}")
    assert all(r.reason.strip() for r in dead)
    by_kind: dict[str, list[str]] = {}
    for r in dead:
        by_kind.setdefault(where[(r.position.partition, r.position.offset)].kind, []).append(r.reason.lower())
    for kind, word in EXPECTED_REASON.items():
        for reason in by_kind.get(kind, []):
            assert word in reason, (kind, reason)
    # the run: quarantine = the dead letters; every good item decided once, none rejected
    q = read_table(out, "quarantine")
    assert Counter(zip(q.column("partition").to_pylist(), q.column("offset").to_pylist(), strict=True)) == want
    d = read_table(out, "decisions").to_pylist()
    decided = Counter(r["id"] for r in d if r["source"] == topic and r["decision"] != "rejected-bad-input")
    assert sorted(decided) == sorted(good_ids) and set(decided.values()) == {1}
    assert sum(1 for r in d if r["decision"] == "rejected-bad-input") == n_bad_rows
    assert {r["decision"] for r in d} - {"rejected-bad-input"} <= {*(k.value for k in KEPT_DECISIONS),
                                                                      "dropped-noisy", "dropped-duplicate"}
    # metrics counted them
    assert dead_letters_counted(metrics) == n_bad_rows, [ln for ln in metrics.splitlines() if "dead_letters" in ln]
    kinds = Counter(m.kind for m in bads)
    print(f"\n{'clip' if clip else 'precomputed'}: {len(good_ids)} good items + {n_bad_rows} bad "
          f"({len(bads)} messages, {len(kinds)} kinds) -> {len(dead)} dead letters; kinds: {dict(kinds)}")
    return None


def dead_letters_counted(metrics: str) -> float:
    """curator_dead_letters_total from a /metrics page (-1 when it is missing)."""
    dl = [ln for ln in metrics.splitlines() if ln.startswith("curator_dead_letters_total ")]
    return float(dl[0].split()[1]) if dl else -1.0


@pytest.mark.timeout(400)
def test_over_1000_malformed_messages_go_to_dead_letters_and_the_stream_goes_on(
    ray_cluster: str, kafka_broker: KafkaTestBroker, digits: Digits, tmp_path: Path,  # noqa: F811
) -> None:
    run_bad_input(True, ray_cluster, kafka_broker, digits, tmp_path, n_good=400, min_bad=1000, seed=7)


@pytest.mark.timeout(300)
def test_bad_precomputed_embeddings_go_to_dead_letters(
    ray_cluster: str, kafka_broker: KafkaTestBroker, digits: Digits, tmp_path: Path,  # noqa: F811
) -> None:
    run_bad_input(False, ray_cluster, kafka_broker, digits, tmp_path, n_good=500, min_bad=300, seed=8)


def test_bomb_png_is_small_and_claims_many_pixels() -> None:
    data = _bomb_png()
    assert len(data) < 10_000 and data[12:16] == b"IHDR"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (30_000, 30_000)
