"""The parts of `pipeline_speed`'s cost model that need no Kafka: the model's forward pass alone,
`curator ingest --engine ray` per process, and the selector/writer's extra cost at N indexed items.

- `forward_us`: CPU us per item of the model's forward pass (images and captions, preprocessed and
  tokenised beforehand), one thread as in an actor -- the part of an embedder that a GPU takes over.
- `ingest_ray_costs`: the command in a subprocess joining this process's Ray; its processes' CPU
  (the driver, Ray Data's read tasks and embed workers, the selector/writer actor) read from /proc
  over the whole run. A run's setup (imports, model loading, Ray Data's planning) is cancelled by
  running it on 4N and on N items: per role, (CPU(4N) - CPU(N)) / 3N is the marginal CPU per item
  (a warm-up run first starts Ray's worker pool; each run waits for the last one's actors to go).
- `indexed_cost`: what N items already in the index add per item to the selector/writer process,
  in this process: one warm selector on `selector_speed`'s 512-d mixture (one FAISS thread) at N and
  at a small size, and the index snapshot a commit writes (a delta of the items added since the
  last commit, and its share of the whole index written as a new base now and then:
  `benchmarks/commit_cost.py`) -- CPU and wall, per commit and per item at the run's commit_every;
  and the CPU of the rebuild a service's selector/writer makes in a background thread each time its
  auto index grows `auto_growth`-fold (`curator.index.rebuild`, one FAISS thread, over the N rows read
  back from the index),
  per item accepted since the rebuild before: background work, but work every accepted item costs.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cpu_cost import CpuWindow, ProcCost, cost_table, costs, print_table, ray_role, read, tree  # noqa: E402
from curator.config import RunConfig  # noqa: E402


def forward_us(model_name: str, model: Any, records: list[dict[str, Any]], batch_size: int,
               source_batch: int) -> float:
    """CPU us per item of `model.encode_image` + `encode_text` alone, on one thread, on what an embedder
    runs them on: the images in forward passes of `batch_size`, each source batch's distinct captions
    (`source_batch` records) in passes of `batch_size`."""
    import open_clip
    import torch
    from PIL import Image

    pc = open_clip.get_model_preprocess_cfg(model)
    tf = open_clip.image_transform(pc["size"], is_train=False, mean=pc["mean"], std=pc["std"],
                                   resize_mode=pc.get("resize_mode"), interpolation=pc.get("interpolation"))
    tok = open_clip.get_tokenizer(model_name)
    images = [torch.stack([tf(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in records[s:s + batch_size]])
              for s in range(0, len(records), batch_size)]
    texts = []
    for s in range(0, len(records), source_batch):
        captions = list(dict.fromkeys(r["text"] for r in records[s:s + source_batch]))
        texts += [tok(captions[c:c + batch_size]) for c in range(0, len(captions), batch_size)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            model.encode_image(images[0])
            model.encode_text(texts[0])
            t0 = time.process_time()
            for x in images:
                model.encode_image(x)
            for t in texts:
                model.encode_text(t)
            cpu = time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    return cpu * 1e6 / len(records)


def ingest_ray_once(toml: Path, log: Path, outside: dict[int, str]) -> tuple[list[ProcCost], int, float]:
    """One `curator ingest --engine ray --config toml`: its processes' CPU over the whole run, the items
    it decided and its own items/s (first item sent to last decided)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)  # the config names this process's Ray
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(  # the last run's actors are gone: none of them in this window
            (r := read(p)) is not None and (ray_role(r.comm, {r.title}) or ("", ""))[0] in ("selector/writer", "embed worker")
            for p in tree([os.getpid()])):
        time.sleep(0.2)
    win = CpuWindow([os.getpid()]).open()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-v", "ingest", "--engine", "ray", "-q",
                                 "--config", str(toml)], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        win.follow_threads([proc.pid])
        rc = proc.wait(1800)
    win.close()
    text = log.read_text(errors="replace")
    m = re.search(r"throughput: (\d+) items in ([\d.]+)s", text)
    if rc != 0 or not m:
        raise RuntimeError(f"curator ingest --engine ray failed (exit {rc}):\n{text[-3000:]}")
    return costs(win, {proc.pid: "driver"}, outside), int(m.group(1)), int(m.group(1)) / float(m.group(2))


def difference(big: list[ProcCost], small: list[ProcCost]) -> list[ProcCost]:
    """Per role, the CPU of the big run less the small run's (what the extra items cost)."""
    base = {p.role: p for p in small}
    out = []
    for p in big:
        b = base.get(p.role)
        out.append(ProcCost(p.role, p.group, p.cpu_s - (b.cpu_s if b else 0.0), p.pids))  # threads: not comparable
    return out


def steady_selector_cpu(index: Any, q: np.ndarray, given: np.ndarray, batch: int, warm: int) -> tuple[float, float]:
    """(CPU us per item, wall items/s) of one selector over `index` on q[warm:], after q[:warm]: past the
    first items a selector without a bootstrap treats as its evidence (`calibrate.LOO_CAP`), whose
    leave-one-out votes it redoes every batch -- a start-up phase, not the steady state."""
    from benchmarks.selector_speed import samples
    from curator.config import SelectorConfig
    from curator.embed import Embeddings
    from curator.select import InfoGrowthSelector

    sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
    sel.indexes["image"] = index
    sel.seq = len(index)  # the queries come after the indexed items in the stream
    work = [(samples(len(q[s:s + batch]), s, given[s:s + batch]),
             Embeddings(q[s:s + batch], None, np.ones(len(q[s:s + batch]), bool), np.zeros(len(q[s:s + batch]), bool)))
            for s in range(0, len(q), batch)]
    for tbl, emb in work[:warm // batch]:
        sel.select(tbl, emb)
    c0, t0 = time.process_time(), time.perf_counter()
    for tbl, emb in work[warm // batch:]:
        sel.select(tbl, emb)
    n = len(q) - warm // batch * batch
    return (time.process_time() - c0) * 1e6 / n, n / (time.perf_counter() - t0)


def rebuild_cpu_s(idx: Any, size: int) -> float:
    """CPU seconds of the background rebuild a service makes of `idx` over its `size` rows
    (`curator.index.rebuild.Rebuild`: train on its sample of the first rows, add every row, reading
    them back from the index as the service's does), on the calling thread's FAISS threads."""
    from benchmarks.selector_speed import DIM
    from curator.config import IndexConfig
    from curator.index.rebuild import Rebuild

    c0 = time.process_time()
    Rebuild(idx.spec, idx.built_at, DIM, IndexConfig(), idx.vectors, lambda: size).finish_now(size)
    return time.process_time() - c0


def indexed_cost(n: int, small: int, batch: int, commit_every: int, n_queries: int = 2048,
                 warm: int = 4096) -> dict[str, Any]:
    """The selector/writer's extra CPU per item at `n` indexed items over `small`: search and decide
    (one selector, warm), and the index snapshot of every commit (both sizes on `selector_speed`'s
    512-d mixture)."""
    import faiss

    from benchmarks.commit_cost import base_every, folder_mb
    from benchmarks.selector_speed import DIM, base_chunks, centers, mixture, queries
    from curator.config import IndexConfig
    from curator.index import VectorIndex
    from curator.store.snapshots import ShardSnapshots

    c = centers()
    got: dict[int, dict[str, Any]] = {}
    for size in (small, n):
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # the bulk fill is set-up (the rebuild below is not)
        t0 = time.perf_counter()
        idx = VectorIndex(DIM, IndexConfig())
        idx.bulk_build(partial(base_chunks, size, c), size)
        build_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)  # as one actor's thread
        rebuild_cpu = rebuild_cpu_s(idx, size) if idx.spec.approximate else 0.0
        qx, given = queries(size, c, warm + n_queries, 7)
        select_us, wall_speed = steady_selector_cpu(idx, qx, given, batch, warm)
        d = Path(tempfile.mkdtemp(prefix="curator-snapshot-"))
        try:
            snaps = ShardSnapshots(d, 0)
            c0, w0 = time.process_time(), time.perf_counter()
            chains = snaps.write(1, {"image": idx})  # a base: the whole index
            base_cpu, base_wall, base_mb = time.process_time() - c0, time.perf_counter() - w0, folder_mb(d)
            x, lab = mixture(np.random.default_rng(size), c, commit_every)
            s = int(idx.seqs[-1]) + 1
            idx.add(x, [f"c{s + j}" for j in range(commit_every)], lab, np.arange(s, s + commit_every))
            c0, w0 = time.process_time(), time.perf_counter()
            chains = snaps.write(2, {"image": idx})  # a commit: the items added since the last
            every = base_every(idx, commit_every)  # commits per base: each carries 1/every of one
            snap_cpu = time.process_time() - c0 + base_cpu / every
            snap_wall = time.perf_counter() - w0 + base_wall / every
            snap_mb = folder_mb(d / chains["image"][-1]) + base_mb / every
        finally:
            shutil.rmtree(d, ignore_errors=True)
        # a service rebuilds its auto index each time it grows auto_growth-fold: a rebuild over N rows is
        # paid by the N (1 - 1/growth) accepted since the one before
        rebuild_us = rebuild_cpu * 1e6 / (size * (1 - 1 / IndexConfig().auto_growth))
        got[size] = {"kind": idx.kind, "build_s": round(build_s, 1), "rebuild_cpu_s": round(rebuild_cpu, 3),
                     "rebuild_cpu_us_per_accepted_item": round(rebuild_us, 1), "select_us_per_item": round(select_us, 1),
                     "select_wall_items_per_s": round(wall_speed),
                     "snapshot_cpu_s": round(snap_cpu, 3), "snapshot_wall_s": round(snap_wall, 3),
                     "snapshot_mb": round(snap_mb, 1)}
        del idx
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    for g in got.values():  # per item at the run's commit_every
        g["snapshot_cpu_us_per_item"] = round(g["snapshot_cpu_s"] * 1e6 / commit_every, 1)
        g["snapshot_wall_us_per_item"] = round(g["snapshot_wall_s"] * 1e6 / commit_every, 1)
    return {"n_indexed": n, "small": small, "commit_every": commit_every, "auto_growth": IndexConfig().auto_growth,
            "at_n": got[n], "at_small": got[small]}


def write_parquet(records: list[dict[str, Any]], folder: Path, files: int = 8) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    per = -(-len(records) // files)
    for f in range(files):
        if records[f * per:(f + 1) * per]:
            pq.write_table(pa.Table.from_pylist(records[f * per:(f + 1) * per]), folder / f"part-{f:03d}.parquet")
    return folder


def ingest_ray_speed(make_cfg: Callable[[Path], RunConfig], args: Any, address: str, work: Path, run: int,
                     inputs: dict[int, Path], embed_only: dict[str, Any], outside: dict[int, str]) -> dict[str, Any]:
    """`curator ingest --engine ray` on Parquet files of N and of 4N records: the marginal CPU per item
    (the big run less the small one) and the big run's own items/s."""
    from pipelines.config import ServeConfig

    def once(folder: Path, tag: str) -> tuple[list[ProcCost], int, float]:
        cfg = make_cfg(work / f"ray-run-{run}-{tag}")
        cfg.source.paths = [str(folder)]
        scfg = ServeConfig(run=cfg)
        s = scfg.service
        s.ray_address, s.embed_actors, s.port = address, args.actors, 0
        s.embed_num_cpus, s.embed_num_gpus, s.selector_num_cpus = args.embed_cpus, args.embed_gpus, 0.0
        toml = work / f"ray-{run}-{tag}.toml"
        toml.write_text(scfg.to_toml())
        return ingest_ray_once(toml, work / f"ray-{run}-{tag}.log", outside)

    if run == 0:  # a warm-up first: Ray's pool of worker processes started, caches filled
        once(inputs[min(inputs)], "warm")
    got = {n: once(folder, str(n)) for n, folder in sorted(inputs.items())}
    (_, (p_small, d_small, _)), (_, (p_big, decided, ips)) = sorted(got.items())
    table = cost_table(difference(p_big, p_small), decided - d_small, embed_only["forward_us_per_item"], ips,
                       embed_only["pool_items_per_s"])
    return {"items": decided, "items_per_s": ips, **table}


def print_results(out: dict[str, Any], args: Any, items: int) -> None:
    """pipeline_speed's tables: items/s, then CPU per item for embed-only, the service, the Ray engine."""
    e = out["embed_only"]
    print(f"\nmodel {args.model}, batches of {args.batch_size} ({args.embed_batch} per forward pass), {args.actors} embedder actor(s) x {args.embed_cpus} CPU, "
          f"{items} items of " + (f"{args.image_size}px PNG" if getattr(args, "images", "digits") == "digits" else
                                  f"JPEG photos up to {args.image_size}px") +
          f", {os.cpu_count()} CPU cores; medians of {args.repeats} runs")
    wire = getattr(args, "wire", "json")
    print("service messages: " + ("JSON, one record each, base64 images" if wire == "json" else
                                  f"Arrow IPC, {args.rows_per_message} records each, raw image bytes"))
    print(f"{'measurement':<52} | {'value':>9}")
    print(f"{'-' * 52}-|-{'-' * 9}")
    for label, v in (("embed-only, one embedder in-process, items/s", e["inprocess_items_per_s"]),
                     ("embed-only, the actor pool, items/s", e["pool_items_per_s"]),
                     ("service end to end (Kafka -> curated set), items/s", out["service"]["summary"]["items_per_s"]),
                     ("ratio service / embed-only pool (target 0.9)", out["service"]["summary"]["ratio_to_embed_only"]),
                     *((("service between its first and last commits, items/s", sv_steady),
                        ("ratio of that / embed-only pool", out["service"]["summary"]["steady_ratio_to_embed_only"]))
                       if (sv_steady := out["service"]["summary"].get("steady_items_per_s")) is not None else ()),
                     *((("service: from consuming to its first commit, s", sv_first),)
                       if (sv_first := out["service"]["summary"].get("first_commit_s")) is not None else ()),
                     *((("ingest --engine ray, items/s", out["ingest_ray"]["summary"]["items_per_s"]),
                        ("ratio ingest --engine ray / embed-only pool", out["ingest_ray"]["summary"]["ratio_to_embed_only"]))
                       if "ingest_ray" in out else ()),
                     ("CPU us/item: embed in-process (decode .. forward)", e["inprocess_embed_us_per_item"]),
                     ("CPU us/item: the model's forward pass alone", e["forward_us_per_item"])):
        print(f"{label:<52} | {v:>9.2f}" if v < 10 else f"{label:<52} | {v:>9.1f}")
    print_table("embed-only pool: CPU per item, per process", e["pool"], e["stage_us_per_item"])
    print_table(f"service (curator serve): CPU per item, per process, after {args.warmup} items, to the last commit",
                out["service"], out["service"]["stage_us_per_item"])
    if "ingest_ray" in out:
        print_table(f"curator ingest --engine ray: marginal CPU per item ({4 * items} items less "
                    f"{items}), per process role", out["ingest_ray"])
    if "indexed" in out:
        print_indexed(out["indexed"], out["service"])


def print_indexed(ix: dict[str, Any], service: dict[str, Any]) -> None:
    n, small = ix["at_n"], ix["at_small"]
    print(f"\nselector/writer at {ix['n_indexed']} indexed against {ix['small']} (selector_speed's 512-d mixture, "
          f"one warm selector, one FAISS thread, in this process; commit_every {ix['commit_every']}):")
    for k in ("kind", "build_s", "rebuild_cpu_s", "rebuild_cpu_us_per_accepted_item", "select_us_per_item",
              "select_wall_items_per_s", "snapshot_mb", "snapshot_cpu_s", "snapshot_wall_s", "snapshot_cpu_us_per_item",
              "snapshot_wall_us_per_item"):
        print(f"  {k:<34} {small[k]!s:>12} {n[k]!s:>12}")
    sel = next((r for r in service["rows"] if r["role"] == "selector/writer"), None)
    if sel is not None:
        at = sel["us_per_item"] + n["select_us_per_item"] + n["snapshot_cpu_us_per_item"]
        print(f"  projection, the service's selector/writer at {ix['n_indexed']} indexed: {sel['us_per_item']} (as "
              f"measured) + {n['select_us_per_item']} (select) + {n['snapshot_cpu_us_per_item']} (snapshot) = "
              f"{at:.0f} us/item of CPU, cap {1e6 / max(at, 1e-9):.0f} items/s (an upper bound: the service's own "
              f"selection is counted twice); each commit also holds it {n['snapshot_wall_us_per_item']:.0f} us/item")
        print(f"  and, in a background thread of that process, the index's rebuilds: "
              f"{n['rebuild_cpu_us_per_accepted_item']} us per accepted item (a projection: the CPU of rebuilding "
              f"over {ix['n_indexed']} rows on one thread, over the {1 - 1 / ix['auto_growth']:.0%} of them accepted since "
              f"the rebuild before), times the share of items the stream keeps")
    print(flush=True)


def idle_cost(known: dict[int, str], outside: dict[int, str], seconds: float) -> dict[str, float]:
    """CPU milliseconds per second of each process of a warm service with nothing to read, over
    `seconds`: a cost per second, not per item -- at R items/s, each ms a second adds 1000 / R us to
    the per-item figures."""
    win = CpuWindow([os.getpid()]).open()
    win.follow_threads(known)
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    win.close()
    return {p.role: round(p.cpu_s / dt * 1000, 1) for p in sorted(costs(win, known, outside), key=lambda p: -p.cpu_s)}


def print_idle(idle: dict[str, list[float]], seconds: float) -> None:
    """`idle_cost`'s figures, medians over the runs."""
    print(f"\nservice idle ({seconds:g} s after the warm-up, nothing to read): CPU ms per second, per process")
    print(f"{'process':<28} | {'ms/s':>7}")
    print(f"{'-' * 28}-|-{'-' * 7}")
    for role, runs in sorted(idle.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{role:<28} | {statistics.median(runs):>7.1f}")
    print(f"{'total':<28} | {sum(statistics.median(r) for r in idle.values()):>7.1f}")
