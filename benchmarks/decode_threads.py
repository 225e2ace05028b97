"""Pillow decoding on one thread against `embedder.decode_threads`, in one process.

    python benchmarks/decode_threads.py [--items 1024] [--threads 0] [--repeats 5] [--json FILE]

An embedder decodes, hashes and preprocesses every image with Pillow before the forward pass, and
Pillow decodes and resizes without holding the GIL, so an embedder with several CPUs -- `curator
ingest` on a multi-core machine, a GPU's embedder actor given `service.embed_num_cpus` -- can decode on
all of them. `--threads` threads (0: as many as torch computes with, the product's default) against
one, interleaved, medians of `--repeats`, curator-tiny (random init) on the CPU.

The first table is the decoding step alone (`ClipEmbedder._via_pil`: decode, content keys, the model's
resize) with the threads always used, on 256 images of each workload: 64 px digits (PNG, 2 KB) and JPEG
crops of real photographs re-saved at several sizes. Its ``default`` column says whether the product
uses the threads for such a batch (`curator.embed.clip.POOL_MIN_BYTES`: small pictures are mostly
Python around Pillow, which holds the GIL, so the threads lose there).

The second is what a user sees, with the product's rule: `ClipEmbedder.embed` over `--items` images in
batches of 256 (digits; photographs with the longer side 192-320 px, as `pipeline_speed.py --images
photos` makes them), then `curator ingest` itself (`pipelines.ingest.run_ingest`, in this process) over
those photographs as a folder of JPEG files: its curation time (the manifest's `elapsed_s`, model
loading excluded) and its decisions.

Columns: ``workload``, ``bytes_per_image``, ``threads``, ``wall_us_per_item``, ``cpu_us_per_item``
(this process's CPU, every thread; not measured for `curator ingest`), ``speedup`` (one thread's wall
time over this row's), ``same`` (the embeddings, content keys and errors -- or, for `curator ingest`,
every decision -- equal to one thread's).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import curator.embed.clip as clip  # noqa: E402
from benchmarks.pipeline_speed import dataset  # noqa: E402
from curator.config import EmbedderConfig, RunConfig  # noqa: E402
from curator.embed import ClipEmbedder, Embeddings  # noqa: E402
from curator.embed.hashes import ContentHashes  # noqa: E402
from curator.store import read_table  # noqa: E402

DECODE_COLS = ("workload", "bytes_per_image", "one_thread_us", "threads", "threads_us", "speedup", "default")
COLS = ("workload", "bytes_per_image", "threads", "wall_us_per_item", "cpu_us_per_item", "speedup", "same")
HASHES = ("image", "pixels", "phash", "phash_ok", "text")


def embedders(threads: int) -> dict[int, ClipEmbedder]:
    out = {}
    for t in (1, threads):
        out[t] = ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cpu", decode_threads=t))
        out[t].setup()
    return out


def used(threads: int) -> int:
    import torch

    return threads or torch.get_num_threads()


def resaved(images: list[bytes], side: int, fmt: str) -> list[bytes]:
    from PIL import Image

    out = []
    for data in images:
        im = Image.open(io.BytesIO(data))
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


def decode_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The decoding step alone, the threads forced on (`POOL_MIN_BYTES` = 0)."""
    photos = [r["image"] for r in dataset(256, 640, images="photos")]
    workloads = [("64 px digits, PNG", [r["image"] for r in dataset(256, 64)])]
    workloads += [(f"photos {side} px, JPEG", resaved(photos, side, "JPEG")) for side in (128, 224, 384)]
    workloads += [("photos 640 px, JPEG", photos), ("photos 224 px, PNG", resaved(photos, 224, "PNG"))]
    embs = embedders(args.threads)
    rule, clip.POOL_MIN_BYTES = clip.POOL_MIN_BYTES, 0
    rows = []
    try:
        for name, images in workloads:
            todo, n = list(enumerate(images)), len(images)
            secs: dict[int, list[float]] = {t: [] for t in embs}
            for _ in range(args.repeats + 1):  # the first round warms the threads and Pillow's plugins
                for t, emb in embs.items():
                    t0 = time.perf_counter()
                    emb._via_pil(todo, [None] * n, {}, {}, {}, ContentHashes.empty(n))
                    secs[t].append(time.perf_counter() - t0)
            one, many = (statistics.median(secs[t][1:]) * 1e6 / n for t in embs)
            size = sum(map(len, images)) / n
            rows.append({"workload": name, "bytes_per_image": round(size), "one_thread_us": round(one, 1),
                         "threads": used(args.threads), "threads_us": round(many, 1), "speedup": round(one / many, 2),
                         "default": "threads" if size >= rule else "one thread"})
    finally:
        clip.POOL_MIN_BYTES = rule
    return rows


def same_embeddings(a: list[Embeddings], b: list[Embeddings]) -> bool:
    return all(np.array_equal(x.image, y.image) and np.array_equal(x.text, y.text)
               and {i: f.reason for i, f in x.errors.items()} == {i: f.reason for i, f in y.errors.items()}
               and all(np.array_equal(getattr(x.hashes, h), getattr(y.hashes, h)) for h in HASHES)
               for x, y in zip(a, b, strict=True))


def embedder_rows(args: argparse.Namespace, workload: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    tables = [pa.Table.from_pylist(records[s:s + 256]) for s in range(0, len(records), 256)]
    embs = embedders(args.threads)
    for emb in embs.values():
        emb.embed(tables[0])  # warm: the threads, Pillow's plugins
    times: dict[int, list[tuple[float, float]]] = {t: [] for t in embs}
    outs: dict[int, list[Embeddings]] = {}
    for _ in range(args.repeats):
        for t, emb in embs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[t] = [emb.embed(tab) for tab in tables]
            times[t].append((time.perf_counter() - t0, time.process_time() - c0))
    n = len(records)
    base = statistics.median(w for w, _ in times[1])
    rows = []
    for t in embs:
        wall = statistics.median(w for w, _ in times[t])
        rows.append({"workload": workload, "bytes_per_image": round(sum(len(r["image"]) for r in records) / n),
                     "threads": used(t), "wall_us_per_item": round(wall * 1e6 / n, 1),
                     "cpu_us_per_item": round(statistics.median(c for _, c in times[t]) * 1e6 / n, 1),
                     "speedup": round(base / wall, 2), "same": same_embeddings(outs[1], outs[t])})
    return rows


def ingest_rows(args: argparse.Namespace, records: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    from pipelines.ingest import run_ingest

    folder = root / "photos"
    folder.mkdir()
    for r in records:
        (folder / f"{r['id']}.jpg").write_bytes(r["image"])
    secs: dict[int, list[float]] = {1: [], args.threads: []}
    decided: dict[int, list[tuple]] = {}
    for rep in range(args.repeats):
        for t in secs:
            cfg = RunConfig()
            cfg.embedder.model, cfg.embedder.pretrained, cfg.embedder.device = "curator-tiny", "", "cpu"
            cfg.embedder.decode_threads = t
            cfg.source.paths, cfg.store.out = [str(folder)], str(root / f"run-{t}-{rep}")
            secs[t].append(float(run_ingest(cfg, progress=False)["elapsed_s"]))
            d = read_table(cfg.store.out, "decisions").sort_by("seq")
            decided[t] = list(zip(*(d.column(c).to_pylist() for c in ("id", "decision", "label_out", "dup_of")),
                                  strict=True))
    base, n = statistics.median(secs[1]), len(records)
    size = round(sum(len(r["image"]) for r in records) / n)
    return [{"workload": "curator ingest, photo folder", "bytes_per_image": size, "threads": used(t),
             "wall_us_per_item": round(statistics.median(v) * 1e6 / n, 1), "cpu_us_per_item": None,
             "speedup": round(base / statistics.median(v), 2), "same": decided[t] == decided[1]}
            for t, v in secs.items()]


def table(cols: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    print(" | ".join(f"{h:>16}" for h in cols))
    for r in rows:
        print(" | ".join(f"{r[h]!s:>16}" for h in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=0, help="decoding threads to compare with one (0: torch's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-ingest", action="store_true", help="no `curator ingest` rows")
    ap.add_argument("--json", help="also write the rows here (keys as in the tables)")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    print(f"cores: {os.cpu_count()}; medians of {args.repeats}\n\ndecoding alone, threads forced (us per image):")
    decode = decode_rows(args)
    table(DECODE_COLS, decode)
    photos = dataset(args.items, 320, images="photos")
    rows = embedder_rows(args, "embedder, 64 px digits", dataset(args.items, 64))
    rows += embedder_rows(args, "embedder, photographs", photos)
    if not args.skip_ingest:
        with tempfile.TemporaryDirectory(prefix="curator-decode-") as tmp:
            rows += ingest_rows(args, photos, Path(tmp))
    print("\nwith the product's rule:")
    table(COLS, rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"decode": decode, "embed": rows}, indent=1))


if __name__ == "__main__":
    main()
