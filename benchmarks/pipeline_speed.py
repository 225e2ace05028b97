"""End-to-end speed of `curator serve` against embed-only speed, what each of its processes spends
per item (the cost model), and its memory under a 10x burst.

    python benchmarks/pipeline_speed.py [--items 3000] [--actors 2] [--batch-size 256] [--embed-batch 64] [--repeats 3]
        [--model curator-tiny] [--images digits|photos] [--image-size 64] [--memory-limit-mb 3000] [--indexed 1000000]
        [--wire json|arrow] [--rows-per-message 16] [--skip-ray-engine] [--skip-burst] [--idle-s 0] [--json FILE]

Everything runs in one Ray instance started here, against librdkafka's mock cluster (or the
broker in $CURATOR_KAFKA_BOOTSTRAP). Same model, same batches, same embedder actor pool: --batch-size
records per source batch (each embedder call takes one) and --embed-batch images per forward pass,
by default the product's own (source.batch_size, embedder.batch_size). Parts 1 to 3 run --repeats
times, interleaved; the tables give medians (the JSON also has every run):

1. **embed-only**: the pool (`StageActor[validate, embed]` actors, 2 batches in flight each) fed the
   decoded records directly -- no Kafka, no ordering, no selector, no writer. Also, for reference,
   one embedder in this process (with one actor's thread count) on the same batches, and the model's
   forward pass alone (`pipeline_cost.forward_us`): the CPU a GPU would take over.
2. **service**: the same records as JSON messages (base64 images; with --wire arrow, Arrow IPC
   messages of --rows-per-message records with raw image bytes) on a --partitions topic, through
   `curator serve` (a subprocess joining this Ray). Items/s: the service's own window, first item
   sent into the graph to the last item decided; beside it, the rate between its first and last
   commits by count (``steady_items_per_s``: without the first batch through a cold graph and the
   last ones draining through a part-idle one), and the seconds from its "consuming" line to its
   first commit (``first_commit_s``). A run whose broker lost records fails. CPU: a
   second, warm service (it first decides --warmup other items) -- every process's CPU time from
   /proc over producing the records, deciding them, draining and the final commit, per item
   (`cpu_cost`: driver, selector/writer, each embedder, Ray's raylet and GCS), with the stage
   seconds the batches carry and the items each poll that brought messages carried
   (``items_per_poll_with_data``: what the driver's cost per poll is spread over), from its /metrics.
   Targets: service / embed-only >= 0.9; CPU per item without the forward pass, summed over the
   processes, <= 150 us, and no process above 50 us. With --idle-s S, before the window the warm service
   first idles S seconds, and each process's CPU over them is reported in ms per second (`idle_ms_per_s`):
   what the per-item figures carry at any rate (R items/s: 1000 / R us per item for each ms a second).
3. **ingest --engine ray**: the records as Parquet files through `curator ingest --engine ray` (a
   subprocess joining this Ray): its items/s, and per process role the marginal CPU per item of a
   run on 4x the records over a run on the records (setup cancels out).
4. **--indexed N**: what N items already indexed add per item to the selector/writer (search and
   decide, the index snapshot each commit writes, and -- per accepted item -- the index rebuild its
   background thread makes each time the index grows `index.auto_growth`-fold), measured in this
   process on selector_speed's 512-d mixture, and the service's selector/writer projected to N indexed. The
   issue's targets are at 1M indexed; filling a service's run directory with 1M items would mean
   embedding 1M images here (hours), so the selector's part is measured on its own.
5. **burst**: a fresh service on a fresh topic; records are produced at half the service's measured
   rate for `--steady-s`, then at 10x that rate for `--burst-s`; the memory the service uses
   (PSS of the driver + actors, from its /metrics) is sampled every 0.25 s -- once on a quiet
   machine, once with `--contend` busy processes beside it. Target: the peak stays within
   ``service.memory_limit_mb`` (the backlog waits in Kafka, not in memory).

CPU time per item is the figure that holds on a shared machine and carries to a bigger one; each
table ends with the process that caps the service (``critical``: the busiest process that does not
grow with the cores) and projected items/s for 4, 8 and 16 cores -- projections, not measurements
(`cpu_cost`). Images are the scikit-learn digits upscaled to --image-size pixels (PNG), so decoding
is real work; `--images photos --image-size 480` uses JPEG crops of real photographs of random shape
instead. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.cpu_cost import CpuWindow, cost_table, costs, median_tables  # noqa: E402
from benchmarks.pipeline_cost import (  # noqa: E402
    forward_us,
    idle_cost,
    indexed_cost,
    ingest_ray_speed,
    print_idle,
    print_results,
    write_parquet,
)
from connectors.kafka.clients import kafka_producer  # noqa: E402
from connectors.kafka.produce import produce_records  # noqa: E402
from curator.batch import RawBatch  # noqa: E402
from curator.config import EmbedderConfig, RunConfig, SourceConfig  # noqa: E402
from curator.records import Position  # noqa: E402


def dataset(n: int, size: int, seed: int = 0, images: str = "digits") -> list[dict[str, Any]]:
    """`n` labelled records. "digits": scikit-learn's digits upscaled to `size` px (PNG); "photos":
    JPEG crops of scikit-learn's two sample photographs, of random shape, the longer side 60-100% of
    `size`, at quality 75-95 (what a folder of users' photos costs to decode, hash and preprocess)."""
    from PIL import Image
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    out = []
    if images == "photos":
        photos = load_sample_images().images
        for i in range(n):
            j = int(rng.integers(len(photos)))
            a = photos[j]
            h, w = (int(rng.integers(a.shape[k] * 2 // 5, a.shape[k] + 1)) for k in (0, 1))
            y0, x0 = int(rng.integers(a.shape[0] - h + 1)), int(rng.integers(a.shape[1] - w + 1))
            im = Image.fromarray(a[y0:y0 + h, x0:x0 + w])
            scale = size * rng.uniform(0.6, 1.0) / max(h, w)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=int(rng.integers(75, 96)))
            out.append({"id": f"p{i}", "image": buf.getvalue(), "label": j, "text": f"a photograph, crop {i}"})
        return out
    x, y = load_digits(return_X_y=True)
    for i in range(n):
        j = int(rng.integers(len(x)))
        px = np.clip(x[j].reshape(8, 8) * 16 + rng.normal(0, 8, (8, 8)), 0, 255).astype(np.uint8)
        im = Image.fromarray(px, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append({"id": f"b{i}", "image": buf.getvalue(), "label": int(y[j]), "text": f"a handwritten {y[j]}"})
    return out


def raw_batches(records: list[dict[str, Any]], batch_size: int) -> list[RawBatch]:
    """The records in source batches, at positions 0.. of one partition of a "bench" source."""
    return [RawBatch(records[i:i + batch_size], [Position("bench", 0, k) for k in range(i, min(i + batch_size, len(records)))])
            for i in range(0, len(records), batch_size)]


def run_config(args: argparse.Namespace, out: Path) -> RunConfig:
    cfg = RunConfig()
    cfg.embedder.kind, cfg.embedder.model, cfg.embedder.pretrained = "clip", args.model, args.pretrained
    cfg.embedder.device, cfg.embedder.batch_size = "cpu" if args.device == "cpu" else args.device, args.embed_batch
    cfg.source.batch_size = args.batch_size
    cfg.store.out, cfg.store.commit_every = str(out), 1024
    cfg.selector.align_mode = "off"  # a random-init model's captions are noise: do not judge them
    return cfg


# --------------------------------------------------------------------------- 1. embed-only


def embed_only(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, Any]:
    import ray

    from curator.stages import build_stages

    try:
        from pipelines.executors.actors import StageActor
    except ImportError:  # before the actors had a module of their own
        from pipelines.executors.ray import StageActor  # type: ignore[attr-defined,no-redef]

    cfg = run_config(args, Path(tempfile.mkdtemp()))
    stages = build_stages(cfg)
    batches = raw_batches(records, args.batch_size)
    cls = ray.remote(StageActor).options(num_cpus=args.embed_cpus, num_gpus=args.embed_gpus)
    pool = [cls.remote(stages.upstream) for _ in range(args.actors)]
    infos = ray.get([a.setup.remote() for a in pool])
    refs = [ray.put(b) for b in batches]
    ray.get([a.process.remote(refs[0]) for a in pool])  # warm up
    win = CpuWindow([], extra=[i.pid for i in infos]).open()
    t0 = time.perf_counter()
    inflight: list[Any] = []
    every: list[Any] = []
    load = [0] * len(pool)
    owner: dict[Any, int] = {}
    for ref in refs:
        while len(inflight) >= 2 * len(pool):
            done, inflight = ray.wait(inflight, num_returns=1)
            load[owner.pop(done[0])] -= 1
        i = min(range(len(pool)), key=lambda k: load[k])
        load[i] += 1
        info = pool[i].process.remote(ref)
        owner[info] = i
        inflight.append(info)
        every.append(info)
    ray.get(inflight)
    pool_s = time.perf_counter() - t0
    win.close()
    stage_s: dict[str, float] = {}
    for out in ray.get(every):
        for k, v in out.seconds.items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    for a in pool:
        ray.kill(a)
    procs = costs(win, {i.pid: f"embedder-{k}" for k, i in enumerate(infos)})

    import torch

    from curator.embed import build_embedder
    from curator.validate import validate_records

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(args.embed_cpus)))  # as in one actor (Ray sets OMP_NUM_THREADS)
    emb = build_embedder(cfg.embedder)
    emb.setup()
    tables = [validate_records(b.records, b.positions)[0] for b in batches]
    emb.embed(tables[0])
    t0, c0 = time.perf_counter(), time.process_time()
    for t in tables:
        emb.embed(t)
    one_s, one_cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(threads)
    n = len(records)
    fwd = forward_us(args.model, emb.model, records, args.embed_batch, args.batch_size)
    return {"pool_items_per_s": n / pool_s, "inprocess_items_per_s": n / one_s,
            "inprocess_embed_us_per_item": one_cpu * 1e6 / n, "forward_us_per_item": fwd,
            "pool": cost_table(procs, n, fwd, n / pool_s),
            "stage_us_per_item": {k: v * 1e6 / n for k, v in stage_s.items()}}


# --------------------------------------------------------------------------- helpers


class Broker:
    def __init__(self) -> None:
        self.proc = None
        real = os.environ.get("CURATOR_KAFKA_BOOTSTRAP", "").strip()
        if real:
            from tests.conftest import real_broker_topic_creator

            self.api = os.environ.get("CURATOR_KAFKA_API_VERSION", "").strip()
            self.bootstrap = real
            self._create = real_broker_topic_creator(real, self.api)
        else:
            from tests.conftest import _MockBrokerProcess

            self.proc = _MockBrokerProcess()
            self.bootstrap, self.api, self._create = self.proc.bootstrap, "2.3", self.proc.create_topic
        self.n = 0

    def topic(self, partitions: int) -> str:
        self.n += 1
        name = f"bench-{os.getpid()}-{self.n}-{int(time.time())}"
        self._create(name, partitions)
        return name

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()


def serve_toml(args: argparse.Namespace, out: Path, broker: Broker, topic: str, ray_address: str,
               bounded: bool) -> str:
    from pipelines.config import ServeConfig

    scfg = ServeConfig(run=run_config(args, out))
    k, s = scfg.kafka, scfg.service
    k.bootstrap_servers, k.topic, k.group_id, k.api_version = broker.bootstrap, topic, f"g-{topic}", broker.api
    k.session_timeout_ms = 3000 if broker.proc is not None else 10_000
    k.end_after_idle_s = 2.0 if bounded else 0.0
    s.ray_address, s.port, s.embed_actors = ray_address, 0, args.actors
    s.embed_num_cpus, s.embed_num_gpus, s.selector_num_cpus = args.embed_cpus, args.embed_gpus, 0.0
    s.memory_limit_mb = args.memory_limit_mb
    return scfg.to_toml()


class Service:
    def __init__(self, toml: str, workdir: Path, name: str) -> None:
        cfg = workdir / f"{name}.toml"
        cfg.write_text(toml)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", "--config", str(cfg)],
                                     cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def port(self, timeout_s: float = 120) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(r"/metrics on http://127\.0\.0\.1:(\d+)", self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"service did not start:\n{self.log()[-3000:]}")

    def metric(self, port: int, name: str) -> float | None:
        """A metric's value (`name` with its labels), or the sum over labels for a bare name."""
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return None
        vals = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith(name + " ") or ("{" not in name and line.startswith(name + "{"))]
        return sum(vals) if vals else None

    def metrics(self, port: int, name: str) -> dict[str, float]:
        """One labelled metric's values by its (single) label's value."""
        import urllib.request

        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            m = re.match(rf'{re.escape(name)}{{\w+="([^"]*)"}} (\S+)$', line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def wait_log(self, pattern: str, timeout_s: float = 300) -> re.Match[str]:
        """The first match of `pattern` (multiline) in the log, waiting for it (read every 20 ms)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"no {pattern!r} in the service's log:\n{self.log()[-3000:]}")

    def wait(self, timeout_s: float) -> int:
        rc = self.proc.wait(timeout_s)
        self._log.close()
        return rc


def produce(broker: Broker, topic: str, records: list[dict[str, Any]], partitions: int, rate: float | None = None,
            seconds: float | None = None, start: int = 0, wire: str = "json", rows_per_message: int = 16) -> int:
    """Send the records round-robin over the partitions with `curator produce`'s sender
    (`produce_records`): JSON messages (one record each, base64 images) or Arrow IPC messages
    (`rows_per_message` records each, raw image bytes); at `rate` records per second for `seconds` if
    given. Returns how many records."""

    def paced() -> Iterator[dict[str, Any]]:
        n, t0 = 0, time.monotonic()
        while (time.monotonic() - t0 < seconds) if seconds is not None else n < len(records):
            ahead = 0.0 if rate is None else n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(min(ahead, 0.05))
                continue
            r = records[(start + n) % len(records)]
            yield {**r, "id": f"{r['id']}-{start + n}"}
            n += 1

    prod = kafka_producer(broker.bootstrap, broker.api)
    try:
        return produce_records(broker.bootstrap, topic, paced(), fmt=wire, partitions=list(range(partitions)),
                               rows_per_message=rows_per_message, producer=prod)
    finally:
        prod.close()


# --------------------------------------------------------------------------- 2 and 3


def service_speed(args: argparse.Namespace, broker: Broker, records: list[dict[str, Any]], address: str,
                  work: Path, run: int = 0) -> dict[str, float]:
    """Items/s of a service over records produced beforehand: its own window, first item sent to last decided."""
    topic = broker.topic(args.partitions)
    produce(broker, topic, records, args.partitions, wire=args.wire, rows_per_message=args.rows_per_message)
    svc = Service(serve_toml(args, work / f"speed-run-{run}", broker, topic, address, bounded=True), work,
                  f"speed-{run}")
    rc = svc.wait(1800)
    if rc != 0:
        raise RuntimeError(f"service failed:\n{svc.log()[-3000:]}")
    m = re.search(r"throughput: (\d+) items in ([\d.]+)s", svc.log())
    if not m:
        raise RuntimeError(f"no throughput line:\n{svc.log()[-3000:]}")
    n, secs = int(m.group(1)), float(m.group(2))
    if n < len(records):
        raise RuntimeError(f"the service decided {n} of the {len(records)} items produced: the broker deleted "
                           "the others before it read them (librdkafka's mock cluster keeps about 5 MB a "
                           "partition). Use more --partitions or fewer --items (or a real broker: "
                           "CURATOR_KAFKA_BOOTSTRAP)")
    log_text = svc.log()
    return {"items": n, "seconds": secs, "items_per_s": n / secs, "steady_items_per_s": steady_rate(log_text),
            "first_commit_s": first_commit_s(log_text)}


def _service_lines(log_text: str, message: str) -> list[tuple[float, re.Match[str]]]:
    """(time, match) of the service's own log lines whose message matches `message`."""
    return [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m)
            for m in re.finditer(r"^(\S+ \S+) INFO curator.service: " + message, log_text, re.M)]


def steady_rate(log_text: str) -> float | None:
    """Items/s between the service's first and last commit by count (its log's "commit K durable (N
    items decided ...)" lines, the final drain's commit left out): the window without the first batch
    through a cold graph and without the last batches draining through a part-idle one."""
    stamps = [(t, int(m.group(2))) for t, m in _service_lines(log_text, r"commit \d+ durable \((\d+) items")]
    if len(stamps) < 3:  # first, one more by count, the drain's
        return None
    (t0, n0), (t1, n1) = stamps[0], stamps[-2]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else None


def first_commit_s(log_text: str) -> float | None:
    """Seconds from the service's "consuming" line to its first commit: how long the first items wait
    on a graph that has just started."""
    start = _service_lines(log_text, "consuming ")
    commits = _service_lines(log_text, r"commit \d+ durable")
    return commits[0][0] - start[0][0] if start and commits else None


def graph_pids(svc: Service) -> dict[int, str]:
    """The service's processes by role, from its log: the driver, the selector/writer, the embedders, the shards."""
    text = svc.log()
    m = re.search(r"selector/writer actor pid (\d+), embedder actor pids \[([\d, ]*)\]", text)
    if not m:
        raise RuntimeError(f"the service's log names no actor pids:\n{text[-3000:]}")
    known = {svc.proc.pid: "driver", int(m.group(1)): "selector/writer"}
    known.update({int(p): f"embedder-{i}" for i, p in enumerate(re.findall(r"\d+", m.group(2)))})
    sm = re.search(r"selector shard actor pids \[([\d, ]*)\]", text)
    known.update({int(p): f"shard-{i}" for i, p in enumerate(re.findall(r"\d+", sm.group(1)))} if sm else {})
    return known


def service_cpu(args: argparse.Namespace, broker: Broker, records: list[dict[str, Any]], address: str,
                work: Path, run: int, embed_only: dict[str, Any], items_per_s: float) -> dict[str, Any]:
    """Each process's CPU per item in a warm service. It first decides --warmup other items (models,
    compiled loops and the commit path warmed; the graph then idles); the window opens, the records
    are produced, and it closes once every one is decided, drained and committed (SIGTERM: the final
    commit is in it). The driver's figure is net of this benchmark's /metrics reads (each measured)."""
    warm = dataset(args.warmup, args.image_size, seed=1, images=args.images)  # other images: no exact-hash duplicates of them
    topic = broker.topic(args.partitions)
    produce(broker, topic, warm, args.partitions, wire=args.wire, rows_per_message=args.rows_per_message)
    svc = Service(serve_toml(args, work / f"cpu-run-{run}", broker, topic, address, bounded=False), work,
                  f"cpu-{run}")
    port = svc.port()
    svc.wait_log(r"consuming \S+ from")
    known = graph_pids(svc)
    outside = {broker.proc.proc.pid: "kafka broker (mock)"} if broker.proc is not None else {}

    def decided(n: int, every_s: float) -> int:
        reads, deadline, last, since = 0, time.monotonic() + 1800, -1.0, time.monotonic()
        while (out := svc.metric(port, "curator_items_out_total") or 0) < n:
            reads += 2
            if out != last:
                last, since = out, time.monotonic()
            gaps = svc.metric(port, "curator_source_offset_gaps_total") or 0
            if gaps and time.monotonic() - since > 15:  # it read everything left: the rest will never come
                raise RuntimeError(
                    f"the broker deleted {gaps:.0f} messages before the service read them, so {out:.0f} of {n} "
                    "items were decided: librdkafka's mock cluster keeps about 5 MB a partition. Use more "
                    "--partitions or fewer --items (or a real broker: CURATOR_KAFKA_BOOTSTRAP)")
            if time.monotonic() > deadline or svc.proc.poll() is not None:
                raise RuntimeError(f"service did not decide {n} items:\n{svc.log()[-3000:]}")
            time.sleep(every_s)
        return reads + 1

    decided(len(warm), 0.5)
    time.sleep(1.0)  # the warm-up's last batches and commits settle
    idle = idle_cost(known, outside, args.idle_s) if args.idle_s else {}
    w = CpuWindow([], extra=[svc.proc.pid]).open()
    for _ in range(10):
        svc.metric(port, "curator_items_out_total")
    read_s = w.close().seconds()[0][1] / 10
    st0 = svc.metrics(port, "curator_batch_seconds_sum")
    sb0 = svc.metric(port, "curator_source_seek_backs_total") or 0.0
    polls0 = svc.metrics(port, "curator_source_polls_total")
    win = CpuWindow([os.getpid()]).open()
    win.follow_threads(known)
    produce(broker, topic, records, args.partitions, start=len(warm), wire=args.wire,
            rows_per_message=args.rows_per_message)
    reads = decided(len(warm) + len(records), 0.5)
    st1 = svc.metrics(port, "curator_batch_seconds_sum")
    seek_backs = (svc.metric(port, "curator_source_seek_backs_total") or 0.0) - sb0
    polls = {k: v - polls0.get(k, 0.0) for k, v in svc.metrics(port, "curator_source_polls_total").items()}
    svc.proc.send_signal(signal.SIGTERM)
    svc.wait_log(r"^curated set: ")
    win.close()
    if svc.wait(300) != 0:
        raise RuntimeError(f"service failed:\n{svc.log()[-3000:]}")
    n = len(records)
    procs = costs(win, known, outside)
    reads += 3  # st1, seek_backs and polls, in the window too
    for p in procs:
        if p.role == "driver":
            p.cpu_s -= reads * read_s
    table = cost_table(procs, n, embed_only["forward_us_per_item"], items_per_s, embed_only["pool_items_per_s"])
    table["summary"]["metrics_reads_us_per_item"] = round(reads * read_s * 1e6 / n, 1)
    table["summary"]["source_seek_backs"] = seek_backs  # buffered records dropped and read again: wasted work
    # what the driver's cost per poll (kafka-python's fetch and coordinator round trips) is spread over
    table["summary"]["items_per_poll_with_data"] = round(n / polls["data"], 1) if polls.get("data") else None
    table["summary"]["polls_empty"] = polls.get("empty", 0.0)
    return {**table, "idle_ms_per_s": idle, "stage_us_per_item": {k: (v - st0.get(k, 0.0)) * 1e6 / n for k, v in st1.items()
                                           if k != "end_to_end"}}


class CpuHogs:
    """Busy processes that keep the cores occupied (the contended case: another job on the machine)."""

    def __init__(self, n: int) -> None:
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def burst_memory(args: argparse.Namespace, broker: Broker, records: list[dict[str, Any]], address: str,
                 work: Path, rate: float, hogs: int = 0) -> dict[str, Any]:
    topic = broker.topic(args.partitions)
    name = f"burst-{hogs}"
    svc = Service(serve_toml(args, work / f"{name}-run", broker, topic, address, bounded=False), work, name)
    port = svc.port()
    samples: list[tuple[float, str, float]] = []
    per_process: dict[str, float] = {}
    phase = ["startup"]
    stop = threading.Event()

    rss_total: list[tuple[str, float]] = []

    def sample() -> None:
        while not stop.is_set():
            for proc, v in svc.metrics(port, "curator_memory_pss_bytes").items():
                if proc == "total":
                    samples.append((time.monotonic(), phase[0], v))
                elif phase[0] != "startup":
                    per_process[proc] = max(per_process.get(proc, 0.0), v)
            rss = svc.metrics(port, "curator_resident_memory_bytes").get("total")
            if rss:
                rss_total.append((phase[0], rss))
            time.sleep(0.25)

    threading.Thread(target=sample, daemon=True).start()
    deadline = time.monotonic() + 300
    while (svc.metric(port, "curator_ready") or 0) < 1:
        if time.monotonic() > deadline or svc.proc.poll() is not None:
            raise RuntimeError(f"service not ready:\n{svc.log()[-3000:]}")
        time.sleep(0.2)
    cpu = CpuHogs(hogs)
    phase[0] = "steady"
    sent = produce(broker, topic, records, args.partitions, rate=rate, seconds=args.steady_s, wire=args.wire,
                   rows_per_message=args.rows_per_message)
    phase[0] = "burst"
    t_burst = time.monotonic()
    sent += produce(broker, topic, records, args.partitions, rate=10 * rate, seconds=args.burst_s, start=sent,
                    wire=args.wire, rows_per_message=args.rows_per_message)
    burst_send_s = time.monotonic() - t_burst
    phase[0] = "catch-up"
    deadline = time.monotonic() + 1800
    # every message decided -- or deleted unread by the broker's retention (the mock keeps ~5 MB per partition)
    while (svc.metric(port, "curator_items_out_total") or 0) + (svc.metric(port, "curator_source_offset_gaps_total")
                                                                 or 0) < sent:
        if time.monotonic() > deadline or svc.proc.poll() is not None:
            raise RuntimeError(f"service did not catch up:\n{svc.log()[-3000:]}")
        time.sleep(0.5)
    gaps = svc.metric(port, "curator_source_offset_gaps_total") or 0
    time.sleep(1.0)
    stop.set()
    cpu.close()
    svc.proc.send_signal(signal.SIGTERM)
    if svc.wait(300) != 0:
        raise RuntimeError(f"service did not drain:\n{svc.log()[-3000:]}")
    peak = {ph: max((v for _, p, v in samples if p == ph), default=0.0) for ph in ("steady", "burst", "catch-up")}
    return {"sent": sent, "lost_to_retention": gaps, "steady_rate": rate, "burst_rate": 10 * rate, "burst_send_s": burst_send_s,
            "pss_steady_mb": peak["steady"] / 2**20, "pss_burst_mb": peak["burst"] / 2**20,
            "pss_catchup_mb": peak["catch-up"] / 2**20,
            "pss_peak_mb": max(peak.values()) / 2**20, "bound_mb": float(args.memory_limit_mb),
            "pss_peak_per_process_mb": {k: v / 2**20 for k, v in sorted(per_process.items())}, "cpu_hogs": hogs,
            "rss_sum_peak_mb": max((v for p, v in rss_total if p != "startup"), default=0.0) / 2**20}


def speed_and_cost(args: argparse.Namespace, broker: Broker, records: list[dict[str, Any]], address: str,
                   work: Path) -> dict[str, Any]:
    """Embed-only, the service and `ingest --engine ray`, --repeats times each (interleaved, so each
    sees the same machine load), with their per-process CPU tables; medians printed and returned."""
    runs: dict[str, list[dict[str, Any]]] = {"embed_only": [], "service": [], "ingest_ray": []}
    inputs = {}
    if not args.skip_ray_engine:  # the records, and 4x as many (the first of which are the records)
        more = dataset(4 * len(records), args.image_size, images=args.images)
        inputs = {n: write_parquet(more[:n], work / f"inputs-{n}") for n in (len(records), len(more))}
    outside = {broker.proc.proc.pid: "kafka broker (mock)"} if broker.proc is not None else {}
    for r in range(args.repeats):
        eo = embed_only(args, records)
        runs["embed_only"].append(eo)
        sv = service_speed(args, broker, records, address, work, r)
        runs["service"].append(service_cpu(args, broker, records, address, work, r, eo, sv["items_per_s"]))
        steady, first = sv["steady_items_per_s"], sv["first_commit_s"]
        runs["service"][-1]["summary"].update(
            steady_items_per_s=None if steady is None else round(steady, 1),
            steady_ratio_to_embed_only=None if steady is None else round(steady / eo["pool_items_per_s"], 3),
            first_commit_s=None if first is None else round(first, 2))
        if not args.skip_ray_engine:
            runs["ingest_ray"].append(ingest_ray_speed(lambda out: run_config(args, out), args, address, work, r,
                                                        inputs, eo, outside))
        print(f"run {r + 1}/{args.repeats}: service {runs['service'][-1]['summary']['items_per_s']:.0f} items/s, "
              f"embed-only pool {eo['pool_items_per_s']:.0f} items/s", flush=True)
    med = lambda key, rs: statistics.median(x[key] for x in rs)  # noqa: E731
    eo_rows = runs["embed_only"]
    out: dict[str, Any] = {"runs": runs}
    out["embed_only"] = {k: round(med(k, eo_rows), 1) for k in ("pool_items_per_s", "inprocess_items_per_s",
                                                                 "inprocess_embed_us_per_item", "forward_us_per_item")}
    out["embed_only"]["pool"] = median_tables([x["pool"] for x in eo_rows])
    stages = lambda rs: {k: round(statistics.median(x["stage_us_per_item"].get(k, 0.0) for x in rs), 1)  # noqa: E731
                         for k in rs[0]["stage_us_per_item"]}
    out["embed_only"]["stage_us_per_item"] = stages(eo_rows)
    out["service"] = median_tables(runs["service"])
    out["service"]["stage_us_per_item"] = stages(runs["service"])
    if args.idle_s:  # every run's figure per process (the table prints their medians)
        out["service"]["idle_ms_per_s"] = {role: [x["idle_ms_per_s"].get(role, 0.0) for x in runs["service"]]
                                           for role in dict.fromkeys(k for x in runs["service"] for k in x["idle_ms_per_s"])}
    if runs["ingest_ray"]:
        out["ingest_ray"] = median_tables(runs["ingest_ray"])
    if args.indexed:
        print(f"selector/writer at {args.indexed} indexed items (in this process) ...", flush=True)
        out["indexed"] = indexed_cost(args.indexed, len(records), args.batch_size,
                                      run_config(args, work).store.commit_every)

    print_results(out, args, len(records))
    if args.idle_s:
        print_idle(out["service"]["idle_ms_per_s"], args.idle_s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--actors", type=int, default=2, help="embedder actors (pool size)")
    ap.add_argument("--embed-cpus", type=float, default=1.0, help="CPUs per embedder actor")
    ap.add_argument("--embed-gpus", type=float, default=0.0, help="GPUs per embedder actor")
    ap.add_argument("--batch-size", type=int, default=SourceConfig().batch_size,
                    help="records per batch the source reads and the selector decides (source.batch_size; "
                         "each embedder actor gets one such batch per call); default: the product's")
    ap.add_argument("--embed-batch", type=int, default=EmbedderConfig().batch_size,
                    help="images per forward pass (embedder.batch_size); default: the product's")
    ap.add_argument("--model", default="curator-tiny")
    ap.add_argument("--pretrained", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=64, help="digits: the side; photos: the longest side at most")
    ap.add_argument("--images", choices=("digits", "photos"), default="digits",
                    help="digits upscaled (PNG), or JPEG crops of real photographs of random shape")
    ap.add_argument("--memory-limit-mb", type=int, default=3000, help="service.memory_limit_mb: the bound")
    ap.add_argument("--partitions", type=int, default=12, help="partitions of the benchmark topics")
    ap.add_argument("--wire", choices=("json", "arrow"), default="json",
                    help="message format: JSON (one record, base64 image) or Arrow IPC (raw image bytes)")
    ap.add_argument("--rows-per-message", type=int, default=16, help="records per Arrow IPC message (--wire arrow)")
    ap.add_argument("--steady-s", type=float, default=10.0)
    ap.add_argument("--burst-s", type=float, default=3.0,
                    help="(librdkafka's mock cluster keeps only ~5 MB per partition: a longer burst of 3 KB "
                         "messages overflows it and the oldest unread messages are deleted)")
    ap.add_argument("--skip-burst", action="store_true")
    ap.add_argument("--contend", type=int, default=2,
                    help="busy processes beside the service in the contended burst (0 = only the quiet one)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the tables give medians)")
    ap.add_argument("--warmup", type=int, default=2048,
                    help="items a service decides before its CPU is measured (past its start-up phases)")
    ap.add_argument("--skip-ray-engine", action="store_true", help="no `curator ingest --engine ray` runs")
    ap.add_argument("--idle-s", type=float, default=0.0,
                    help="also measure each process's CPU per second while the warm service idles, over this "
                         "many seconds (0: not measured)")
    ap.add_argument("--indexed", type=int, default=0, metavar="N",
                    help="also measure what N items already indexed add to the selector/writer (the issue's "
                         "condition is 1000000: about 3 minutes and 5 GB here)")
    ap.add_argument("--json", help="also write the results here (keys as in the tables)")
    args = ap.parse_args()

    import ray

    records = dataset(args.items, args.image_size, images=args.images)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(args.actors * args.embed_cpus + 1.999)),
             include_dashboard=False, object_store_memory=512 * 1024**2, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    broker = Broker()
    work = Path(tempfile.mkdtemp(prefix="curator-bench-"))
    results: dict[str, Any] = {"config": vars(args), "cpus": os.cpu_count()}
    try:
        results.update(speed_and_cost(args, broker, records, address, work))
        sv = results["service"]["summary"]
        if not args.skip_burst:
            cases = [("quiet", 0), ("contended", args.contend)] if args.contend else [("quiet", 0)]
            bursts = {name: burst_memory(args, broker, records, address, work, rate=0.5 * sv["items_per_s"],
                                         hogs=hogs) for name, hogs in cases}
            results["burst"] = bursts
            b0 = bursts["quiet"]
            print(f"\nburst: {b0['steady_rate']:.0f} items/s for {args.steady_s:.0f}s, then {b0['burst_rate']:.0f}/s "
                  f"for {args.burst_s:.0f}s ({b0['sent']} items); contended: {args.contend} busy processes beside "
                  "the service")
            names = list(bursts)
            print(f"{'memory in use (PSS, driver + actors), MB':<44} | " + " | ".join(f"{n:>9}" for n in names))
            print(f"{'-' * 44}-|-" + "-|-".join("-" * 9 for _ in names))
            for key, label in (("pss_steady_mb", "peak, steady rate"), ("pss_burst_mb", "peak, 10x burst"),
                               ("pss_catchup_mb", "peak, catching up on the backlog"),
                               ("bound_mb", "configured bound (service.memory_limit_mb)"),
                               ("rss_sum_peak_mb", "for reference: peak sum of RSS (shared pages "
                                                   "counted per process)"),
                               ("lost_to_retention", "items deleted by retention unread")):
                print(f"{label:<44} | " + " | ".join(f"{bursts[n][key]:>9.0f}" for n in names))
            for proc in b0["pss_peak_per_process_mb"]:
                print(f"{'  peak PSS of ' + proc:<44} | " + " | ".join(
                    f"{bursts[n]['pss_peak_per_process_mb'].get(proc, 0):>9.0f}" for n in names))
            print(f"{'within the bound':<44} | " + " | ".join(
                f"{'yes' if bursts[n]['pss_peak_mb'] <= bursts[n]['bound_mb'] else 'NO':>9}" for n in names))
    finally:
        broker.close()
        ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
