"""A bounded file run three ways, on the same files: `curator ingest` in one process, the service's
actor graph (`curator serve` on [source] paths), and `curator ingest --engine ray` (Ray Data).

    python benchmarks/ingest_engines.py [--items 4096] [--files 8] [--actors 2] [--batch-size 64]
        [--model curator-tiny] [--image-size 64] [--repeats 3] [--json FILE]

The inputs are the scikit-learn digits upscaled to --image-size pixels (PNG, so decoding is real
work), written as --files Parquet files; the embedder is open_clip (--model, random init unless
--pretrained) on the CPU. Both Ray engines get the same embedder actors (--actors, one CPU each) and
the same selector actor, in one Ray instance started here; each run writes a fresh run directory.

Columns: ``engine``, ``items``, ``seconds`` (median of --repeats: model loading included, Ray's
start excluded), ``items_per_s``, ``vs_actor_graph`` (items/s over the actor graph's, same run),
``same_decisions`` (share of decisions -- decision, label out, duplicate of -- equal to the
in-process run's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

for _k, _v in (("RAY_AUTH_MODE", "disabled"), ("RAY_USAGE_STATS_ENABLED", "0"),
               ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("HF_HUB_OFFLINE", "1")):
    os.environ.setdefault(_k, _v)

from pipeline_speed import dataset  # noqa: E402

from curator.config import RunConfig  # noqa: E402
from curator.store import read_table  # noqa: E402
from pipelines.config import ServeConfig, validate_serve_config  # noqa: E402

COLS = ["engine", "items", "seconds", "items_per_s", "vs_actor_graph", "same_decisions"]


def write_inputs(root: Path, items: int, files: int, size: int) -> Path:
    recs = dataset(items, size)
    d = root / "inputs"
    d.mkdir(parents=True)
    per = -(-items // files)
    for f in range(files):
        part = recs[f * per:(f + 1) * per]
        if part:
            pq.write_table(pa.Table.from_pylist(part), d / f"part-{f:03d}.parquet", row_group_size=256)
    return d


def run_config(args: argparse.Namespace, inputs: Path, out: Path) -> RunConfig:
    cfg = RunConfig()
    cfg.embedder.kind, cfg.embedder.model, cfg.embedder.pretrained = "clip", args.model, args.pretrained
    cfg.embedder.device, cfg.embedder.batch_size = "cpu", args.batch_size
    cfg.source.paths, cfg.source.batch_size = [str(inputs)], args.batch_size
    cfg.store.out, cfg.store.commit_every = str(out), 1024
    cfg.selector.align_mode = "off"  # a random-init model's captions are noise: do not judge them
    return cfg


def serve_config(args: argparse.Namespace, cfg: RunConfig) -> ServeConfig:
    scfg = ServeConfig(run=cfg)
    s = scfg.service
    s.embed_actors, s.embed_num_cpus, s.selector_num_cpus, s.port = args.actors, 1.0, 0.5, 0
    validate_serve_config(scfg)
    return scfg


def decisions(run: Path) -> list[tuple]:
    t = read_table(run, "decisions").sort_by("seq")
    return list(zip(*(t.column(c).to_pylist() for c in ("id", "decision", "label_out", "dup_of")), strict=True))


def run_engine(engine: str, args: argparse.Namespace, inputs: Path, out: Path) -> float:
    cfg = run_config(args, inputs, out)
    t0 = time.perf_counter()
    if engine == "in-process":
        from pipelines.ingest import run_ingest

        run_ingest(cfg, progress=False)
    elif engine == "actor graph":
        from pipelines.service import serve

        old = signal.getsignal(signal.SIGTERM)
        try:
            serve(serve_config(args, cfg))
        finally:
            signal.signal(signal.SIGTERM, old)
    else:
        from pipelines.drivers.ray_data import run_ingest_ray

        run_ingest_ray(serve_config(args, cfg), progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=4096)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="curator-tiny")
    ap.add_argument("--pretrained", default="")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    ray.init(num_cpus=args.actors + 1, include_dashboard=False, object_store_memory=512 * 2**20,
             log_to_driver=False)
    engines = ["in-process", "actor graph", "Ray Data"]
    secs: dict[str, list[float]] = {e: [] for e in engines}
    same: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="curator-engines-") as tmp:
        root = Path(tmp)
        inputs = write_inputs(root, args.items, args.files, args.image_size)
        for r in range(args.repeats):
            for e in engines:  # interleaved: each engine sees the same machine load
                out = root / f"{e.replace(' ', '-')}-{r}"
                secs[e].append(run_engine(e, args, inputs, out))
                if r == 0:
                    same[e] = out
        ref = decisions(same["in-process"])
        rows = []
        for e in engines:
            got = decisions(same[e])
            s = statistics.median(secs[e])
            rows.append({"engine": e, "items": args.items, "seconds": round(s, 2),
                         "items_per_s": round(args.items / s, 1), "vs_actor_graph": 0.0,
                         "same_decisions": round(sum(a == b for a, b in zip(got, ref, strict=True)) / len(ref), 4)})
    base = next(r["items_per_s"] for r in rows if r["engine"] == "actor graph")
    for r in rows:
        r["vs_actor_graph"] = round(r["items_per_s"] / base, 2)
    print(" | ".join(f"{h:>14}" for h in COLS))
    for r in rows:
        print(" | ".join(f"{r[h]:>14}" for h in COLS))
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
