"""The GPU check of issue #8, in one run of under 4 minutes: CLIP, JPEG decoding, the selector and
`curator ingest` end to end on one GPU; prints a table per part and writes every row to --json.

    python benchmarks/gpu_check.py [--json FILE] [--parts decode model select e2e] [--smoke]

1. **decode**: JPEGs (500x375 and 375x500, quality 90, made here from scikit-learn's two bundled
   photographs: crops, flips, smooth colour casts) decoded and preprocessed for ViT-B-32 by
   `curator.embed.jpeg` on the GPU (`torchvision.io.decode_jpeg` batched, resize/crop/normalise; with
   the header checks the embedder does, and decode_jpeg alone), against the Pillow path
   (`decode_image` + open_clip's transform) in a process pool over every core; images/s.
2. **model**: open_clip ViT-B-32 and ViT-L-14, random init, fp16, images/s at --batch on
   preprocessed tensors (CUDA events, after warm-up).
3. **select**: `InfoGrowthSelector` items/s with `VectorIndex` at --sizes (1M, 10M) 512-d items on
   the exact torch search (what `index.gpu = auto` picks where FAISS has no GPU build), beside the
   raw search's queries/s, with decisions compared to exact fp32 search (`benchmarks/selector_speed`:
   its queries, `run_selector`, `ExactIndex`; the indexed vectors are generated on the GPU).
4. **e2e**: Parquet files of JPEG records -> `pipelines.ingest.run_ingest` (what `curator ingest`
   runs) with ViT-B-32 fp16 on the GPU and `embedder.decode = "torch"`, `selector.eps_dup = 0` (a
   random-init model finds most photos near-duplicates; with 0 nearly every item is kept -- the hash
   rules still drop the few perceptual near-copies among the crops -- so the index grows with the
   stream: the selector's worst case); with and without `store.store_images`. Images/s (after
   the model is loaded) and where the time goes: read (Parquet -> records), validate, decode (the
   device path, synchronised), embed (the rest of the embed stage: header checks, model), select,
   write (staging), commit (Parquet parts, index snapshot, manifest).
5. **cpu**: the e2e runs' CPU per item, as `benchmarks/pipeline_speed.py` reports the service's
   (`benchmarks.cpu_cost`): the one process's CPU microseconds per item (every thread, setup
   excluded) and the items/s that caps one process at, then each stage's CPU and wall microseconds
   per item -- what the driver and the selector/writer of a service on this node would spend per
   item beside the GPU (decode's CPU includes waiting for the device).

`--smoke` runs every part tiny on the CPU (the shipped curator-tiny model, a few hundred images, the
torch search forced onto the CPU) in well under a minute; tests/test_gpu_check.py runs it.

On the lent GPU machine (Python 3.12, torch, torchvision, timm, pyarrow, numpy, numba, scikit-learn,
tqdm; no faiss, open_clip, ftfy, network), carry five wheels (about 21 MB; with the repository,
about 22 MB of the 64 MiB allowed). Here, from the repository root:

    mkdir -p .whl && grep -qx '.whl/' .git/info/exclude || echo '.whl/' >> .git/info/exclude
    for w in faiss-cpu==1.15.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 packaging==26.4; do
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \\
        -d .whl "$w"; done

    faiss_cpu-1.15.1-cp310-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl    18.8 MB
    open_clip_torch-3.3.0-py3-none-any.whl                                          1.5 MB
    wcwidth-0.9.4-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl          0.8 MB
    ftfy-6.3.1-py3-none-any.whl, packaging-26.4-py3-none-any.whl                     0.1 MB

(faiss: `curator.index` imports it; the CPU build is what is wanted -- the torch search is the thing
checked. packaging: faiss's loader needs it. numba, llvmlite, torch and the rest are the device's own:
do not carry them.) Then the device command, with carry [".whl"] and timeout_s 300:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 && python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json

The JSON is rewritten after every row, so a run cut short still returns what it measured.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROWS: list[dict[str, Any]] = []
JSON_PATH: Path | None = None


def emit(row: dict[str, Any]) -> None:
    """Print a row and rewrite the JSON file with every row so far."""
    ROWS.append(row)
    print("  " + " | ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if JSON_PATH is not None:
        JSON_PATH.write_text(json.dumps({"rows": ROWS}, indent=1))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------- JPEG making
_PHOTOS: list[np.ndarray] = []
#: rows per Parquet row group of the generated files (a Pillow worker's unit of work)
ROW_GROUP = 256


def _photos() -> list[np.ndarray]:
    if not _PHOTOS:
        from sklearn.datasets import load_sample_images

        _PHOTOS.extend(load_sample_images().images)  # china.jpg, flower.jpg: 427x640, bundled
    return _PHOTOS


def synth_jpeg(i: int, quality: int = 90) -> bytes:
    """A photo-like JPEG, different for every i: a crop of a bundled photo, flipped or not, under a
    smooth colour cast; 500x375 (4 in 5) or 375x500."""
    from PIL import Image

    rng = np.random.default_rng(i)
    src = _photos()[i % 2]
    portrait = rng.random() < 0.2
    w, h = (375, 500) if portrait else (500, 375)
    scale = rng.uniform(0.45, 1.0)
    ch = int(min(427, 640 * h / w) * scale)
    cw = int(ch * w / h)
    y, x = int(rng.integers(0, 427 - ch + 1)), int(rng.integers(0, 640 - cw + 1))
    im = Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    cast = Image.fromarray(rng.integers(0, 256, (3, 4, 3), np.uint8)).resize((w, h), Image.BILINEAR)
    im = Image.blend(im, cast, float(rng.uniform(0.1, 0.4)))
    gamma = rng.uniform(0.8, 1.25)
    im = im.point([round(255 * (v / 255) ** gamma) for v in range(256)] * 3)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_shard(path: str, start: int, count: int) -> int:
    """Images [start, start + count) as a Parquet file of records (id, image); returns its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs = [synth_jpeg(i) for i in range(start, start + count)]
    pq.write_table(pa.table({"id": [f"img{i}" for i in range(start, start + count)],
                             "image": pa.array(imgs, pa.binary())}), path, row_group_size=ROW_GROUP)
    return sum(len(b) for b in imgs)


def make_shards(pool: ProcessPoolExecutor, folder: Path, n: int, per: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder / f"part-{k:04d}.parquet"), s, min(per, n - s)) for k, s in enumerate(range(0, n, per))]
    t0 = time.perf_counter()
    total = sum(pool.map(write_shard, *zip(*jobs, strict=True)))
    print(f"  made {n} JPEGs in {len(jobs)} Parquet files ({total / n / 1024:.0f} KB each on average) "
          f"in {time.perf_counter() - t0:.1f}s", flush=True)
    return [Path(j[0]) for j in jobs]


def read_images(paths: list[Path], n: int) -> list[bytes]:
    import pyarrow.parquet as pq

    out: list[bytes] = []
    for p in paths:
        out += pq.read_table(p, columns=["image"]).column("image").to_pylist()
        if len(out) >= n:
            break
    return out[:n]


# ---------------------------------------------------------------------------------------- decode
_TRANSFORM: Any = None


def _pil_worker_init(cfg: dict[str, Any]) -> None:
    global _TRANSFORM
    import open_clip
    import torch

    torch.set_num_threads(1)
    _TRANSFORM = open_clip.image_transform(cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"],
                                           resize_mode=cfg["resize_mode"], interpolation=cfg["interpolation"])


def _pil_worker(path: str, group: int) -> int:
    """Decode and preprocess a row group of a shard as the embedder's Pillow path does."""
    import pyarrow.parquet as pq

    from curator.embed.images import decode_image

    imgs = pq.ParquetFile(path).read_row_group(group, columns=["image"]).column("image").to_pylist()
    for data in imgs:
        im = decode_image(data)
        _TRANSFORM(im)
        im.close()
    return len(imgs)


def preprocess_cfg(name: str) -> dict[str, Any]:
    """The model's own preprocess config (size, mean, std, interpolation, resize mode)."""
    import open_clip
    import torch

    from curator.embed.clip import MODEL_CONFIG_DIR, register_model_configs

    register_model_configs(MODEL_CONFIG_DIR)
    with torch.device("meta"):
        model = open_clip.create_model(name, pretrained=None, device="meta")  # no weights: only its config
    return dict(open_clip.get_model_preprocess_cfg(model))


def bench_pil_pool(pool: ProcessPoolExecutor, workers: int, shards: list[Path], n: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    jobs: list[tuple[str, int]] = []
    for p in shards:
        jobs += [(str(p), g) for g in range(pq.ParquetFile(p).metadata.num_row_groups)]
    jobs = jobs[:max(1, math.ceil(n / ROW_GROUP))]
    list(pool.map(_pil_worker, *zip(*jobs[:workers], strict=True)))  # warm: imports, the transform
    t0 = time.perf_counter()
    done = sum(pool.map(_pil_worker, *zip(*jobs, strict=True)))
    dt = time.perf_counter() - t0
    return {"part": "decode", "path": f"pillow, {workers} processes", "images": done,
            "images_per_s": round(done / dt), "per_core_images_per_s": round(done / dt / workers)}


def bench_device_decode(images: list[bytes], device: str, cfg: dict[str, Any], batch: int) -> list[dict[str, Any]]:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    from curator.embed.images import jpeg_size
    from curator.embed.jpeg import JpegPreprocess

    jp = JpegPreprocess(cfg, device)
    batches = [images[s:s + batch] for s in range(0, len(images), batch)]
    jp(batches[0], [jpeg_size(d) for d in batches[0]])  # warm: decoder handles, kernels
    sync(device)
    rows = []
    t0 = time.perf_counter()
    sizes = [[jpeg_size(d) for d in b] for b in batches]
    header_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = 0
    for b, z in zip(batches, sizes, strict=True):
        out, ok = jp(b, z)
        done += len(ok)
    sync(device)
    dt = time.perf_counter() - t0
    rows.append({"part": "decode", "path": f"torch on {device}: decode_jpeg + resize/crop/normalise",
                 "images": done, "images_per_s": round(done / dt), "out_shape": list(out.shape)})
    rows.append({"part": "decode", "path": "the same with the header checks (embedder path)", "images": done,
                 "images_per_s": round(done / (dt + header_s)), "header_us_per_image": round(1e6 * header_s / len(images), 1)})
    t0 = time.perf_counter()
    for b in batches:
        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in b]
        decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    sync(device)
    dt = time.perf_counter() - t0
    rows.append({"part": "decode", "path": f"decode_jpeg alone on {device} (batches of {batch})",
                 "images": len(images), "images_per_s": round(len(images) / dt)})
    return rows


# ----------------------------------------------------------------------------------------- model
def bench_model(name: str, device: str, precision: str, batch: int, iters: int, warmup: int = 3) -> dict[str, Any]:
    import open_clip
    import torch

    t0 = time.perf_counter()
    model = open_clip.create_model(name, pretrained=None, precision=precision, device=device).eval()
    build_s = time.perf_counter() - t0
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    x = torch.randn(batch, 3, *size, device=device).to(dtype)
    with torch.inference_mode():
        for _ in range(warmup):
            model.encode_image(x)
        sync(device)
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                model.encode_image(x)
            end.record()
            torch.cuda.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                model.encode_image(x)
            seconds = time.perf_counter() - t0
    params = sum(p.numel() for p in model.visual.parameters())
    del model, x
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"part": "model", "model": name, "precision": precision, "batch": batch, "image_size": list(size),
            "vision_params_m": round(params / 1e6, 1), "build_s": round(build_s, 1),
            "images_per_s": round(batch * iters / seconds)}


# ---------------------------------------------------------------------------------------- select
class DeviceMixture:
    """selector_speed's indexed items (clustered unit vectors, labelled by cluster), generated chunk by
    chunk on the device from per-chunk seeds: 10M x 512 in seconds, the same every time."""

    def __init__(self, c: np.ndarray, n: int, device: str) -> None:
        import torch

        self.n, self.device = n, device
        self.c = torch.from_numpy(c).to(device)

    def tensors(self, ch: int) -> tuple[Any, Any]:
        import torch

        from benchmarks.selector_speed import CHUNK, DIM

        m = min(CHUNK, self.n - ch * CHUNK)
        g = torch.Generator(device=self.device)
        g.manual_seed(1000 + ch)
        lab = torch.randint(0, len(self.c), (m,), generator=g, device=self.device)
        x = self.c[lab] + torch.randn((m, DIM), generator=g, device=self.device) * (0.9 / math.sqrt(DIM))
        return x / x.norm(dim=1, keepdim=True), lab

    def chunk(self, ch: int) -> tuple[np.ndarray, np.ndarray]:
        x, lab = self.tensors(ch)
        return x.cpu().numpy(), lab.cpu().numpy()

    def chunks(self) -> Iterator[tuple[np.ndarray, list[str], np.ndarray]]:
        from benchmarks.selector_speed import CHUNK

        for ch in range(math.ceil(self.n / CHUNK)):
            x, lab = self.chunk(ch)
            yield x, [f"i{ch * CHUNK + j}" for j in range(len(x))], lab

    def exact_topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """fp32 brute force over the regenerated chunks: the reference top-k and every label."""
        import torch

        from benchmarks.selector_speed import CHUNK

        qt = torch.from_numpy(q).to(self.device)
        best_s = torch.full((len(q), k), -math.inf, device=self.device)
        best_r = torch.full((len(q), k), -1, dtype=torch.int64, device=self.device)
        labels = []
        for ch in range(math.ceil(self.n / CHUNK)):
            x, lab = self.tensors(ch)
            labels.append(lab.cpu().numpy())
            s, r = torch.topk(qt @ x.T, min(k, len(x)), dim=1)
            cs, cr = torch.cat([best_s, s], 1), torch.cat([best_r, r + ch * CHUNK], 1)
            best_s, pick = torch.topk(cs, k, dim=1)
            best_r = torch.gather(cr, 1, pick)
        return best_s.cpu().numpy(), best_r.cpu().numpy(), np.concatenate(labels).astype(np.int64)


def bench_select(n: int, device: str, gpu: str, n_queries: int, batch: int, repeats: int) -> dict[str, Any]:
    import torch

    from benchmarks.selector_speed import DIM, ExactIndex, centers, queries, rss_mb, run_selector, search_only
    from curator.config import IndexConfig, SelectorConfig
    from curator.index import VectorIndex

    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32, not TF32
    c = centers()
    k = max(SelectorConfig().k_gain, SelectorConfig().k_label)
    gen = DeviceMixture(c, n, device)
    t0 = time.perf_counter()
    idx = VectorIndex(DIM, IndexConfig(kind="auto", gpu=gpu))
    idx.bulk_build(gen.chunks, n)
    sync(device)
    build = time.perf_counter() - t0
    qsets = [queries(n, c, n_queries, 7 + r, chunk=gen.chunk) for r in range(repeats)]
    ts, tr, labels = gen.exact_topk(qsets[0][0], k)
    _, ar = idx.search(qsets[0][0][:256], 4, len(idx) + np.arange(min(256, n_queries)))
    recall = np.mean([len(set(a) & set(b)) / 4 for a, b in zip(ar, tr[:256, :4], strict=False)])
    raw = {}
    if hasattr(idx.index, "to_faiss"):  # the torch search itself, without VectorIndex around it
        for b in (batch, 4 * batch):
            qx = qsets[0][0]
            idx.index.search(qx[:b], k)
            sync(device)
            t0 = time.perf_counter()
            for s in range(0, len(qx), b):
                idx.index.search(qx[s:s + b], k)
            raw[f"raw_search_q_per_s_batch{b}"] = round(len(qx) / (time.perf_counter() - t0))
    search, speeds, agree = [], [], 0.0
    for r, (qx, given) in enumerate(qsets):
        search.append(search_only(idx, qx, batch, k))
        speed, dec = run_selector(idx, qx, given, batch)
        speeds.append(speed)
        if r == 0:
            _, ref = run_selector(ExactIndex(n, labels, ts, tr), qx, given, batch)
            agree = float(np.mean([a == b for a, b in zip(dec, ref, strict=True)]))
    row = {"part": "select", "n_indexed": n, "backend": type(idx.index).__name__,
           "storage": getattr(idx.index, "precision", "fp32"), "on": str(getattr(idx.index, "device", "cpu")),
           "build_s": round(build, 1), "items_per_s": round(statistics.median(speeds)),
           "search_only_q_per_s": round(statistics.median(search)), "decision_agreement": round(agree, 4),
           "recall_at_4": round(float(recall), 3), **raw, "rss_mb": round(rss_mb())}
    if device.startswith("cuda"):
        row["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del idx
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------------------------------- e2e
class StageTimes:
    """Seconds spent in each stage method while `run_ingest` runs, by patching the classes (and
    restoring them): the stages' own `seconds` stay inside the executor."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.s: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of this process (every thread) in each stage
        self.calls: dict[str, int] = {}
        self.decoded = 0

    @contextmanager
    def patched(self) -> Iterator[StageTimes]:
        import curator.run
        import curator.stages as st
        from curator.embed.jpeg import JpegPreprocess

        targets = [(st.ValidateStage, "process", "validate"), (st.EmbedStage, "process", "embed+decode"),
                   (st.SelectWriteStage, "decide", "select"), (st.SelectWriteStage, "stage_rows", "write"),
                   (st.SelectWriteStage, "commit", "commit"), (curator.run.LocalExecutor, "setup", "setup"),
                   (JpegPreprocess, "with_thumbnails", "decode")]
        saved = [(cls, name, getattr(cls, name)) for cls, name, _ in targets]
        for cls, name, key in targets:
            setattr(cls, name, self._timed(getattr(cls, name), key))
        try:
            yield self
        finally:
            for cls, name, fn in saved:
                setattr(cls, name, fn)

    def _timed(self, fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def run(*a: Any, **kw: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(*a, **kw)
            if key == "decode":
                sync(self.device)  # its kernels are charged to it, not to the model after it
                self.decoded += len(out[1])
            self.s[key] = self.s.get(key, 0.0) + time.perf_counter() - t0
            self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c0
            self.calls[key] = self.calls.get(key, 0) + 1
            return out

        return run


def e2e_config(shards: Path, out: Path, args: argparse.Namespace, limit: int, store_images: bool) -> Any:
    from curator.config import RunConfig

    cfg = RunConfig()
    e = cfg.embedder
    e.kind, e.model, e.pretrained, e.device = "clip", args.e2e_model, "", args.device
    e.precision, e.batch_size, e.decode = args.precision, args.batch, "torch"
    cfg.index.gpu = args.index_gpu
    cfg.selector.align_mode, cfg.selector.eps_dup = "off", args.eps_dup
    cfg.store.out, cfg.store.commit_every, cfg.store.store_images = str(out), args.commit_every, store_images
    cfg.source.paths, cfg.source.format, cfg.source.batch_size, cfg.source.limit = [str(shards)], "parquet", args.batch, limit
    return cfg


def bench_e2e(shards: Path, work: Path, args: argparse.Namespace,
              store_images: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from pipelines.ingest import run_ingest

    tag = "store" if store_images else "nostore"
    run_ingest(e2e_config(shards, work / f"warm-{tag}", args, 2 * args.batch, store_images), progress=False)
    times = StageTimes(args.device)
    with times.patched():
        t0, c0 = time.perf_counter(), time.process_time()
        m = run_ingest(e2e_config(shards, work / f"run-{tag}", args, args.e2e_images, store_images), progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = times.s
    run_s = wall - s.get("setup", 0.0)
    decided = int(sum((m.get("counts") or {}).values()))
    where = {"read+other": run_s - sum(v for k, v in s.items() if k not in ("setup", "decode")),
             "validate": s.get("validate", 0.0), "decode": s.get("decode", 0.0),
             "embed": s.get("embed+decode", 0.0) - s.get("decode", 0.0), "select": s.get("select", 0.0),
             "write": s.get("write", 0.0), "commit": s.get("commit", 0.0)}
    row = {"part": "e2e", "images": decided, "store_images": store_images, "batch": args.batch,
           "commit_every": args.commit_every, "images_per_s": round(decided / run_s), "seconds": round(run_s, 2),
           "setup_s": round(s.get("setup", 0.0), 1), "decoded_on_device": times.decoded,
           "kept": int((m.get("counts") or {}).get("kept", 0)), "commits": times.calls.get("commit", 0)}
    row.update({f"{k}_s": round(v, 2) for k, v in where.items()})
    row.update({f"{k}_pct": round(100 * v / run_s, 1) for k, v in where.items()})
    row["select_items_per_s"] = round(decided / max(s.get("select", 1e-9), 1e-9))
    shutil.rmtree(work / f"run-{tag}", ignore_errors=True)
    shutil.rmtree(work / f"warm-{tag}", ignore_errors=True)
    return row, cpu_rows(f"e2e store_images={store_images}", times, cpu, run_s, decided)


def cpu_rows(run: str, times: StageTimes, cpu: float, run_s: float, items: int) -> list[dict[str, Any]]:
    """The run's CPU per item (`benchmarks.cpu_cost`, as pipeline_speed reports it): the one process,
    then each stage (its own CPU and wall; with decode on the device, CPU includes waiting on it)."""
    from benchmarks.cpu_cost import ProcCost, cost_table

    c, s = times.cpu, times.s
    cpu -= c.get("setup", 0.0)  # the model's loading: not per item
    table = cost_table([ProcCost("ingest process (every stage)", "graph", cpu)], items)
    rows = [{"part": "cpu", "run": run, "process": r["role"], "us_per_item": r["us_per_item"],
             "cap_items_per_s": table["summary"]["critical_cap_items_per_s"]} for r in table["rows"]]
    stage_cpu = {k: v for k, v in c.items() if k not in ("setup", "embed+decode")}
    stage_cpu["embed"] = c.get("embed+decode", 0.0) - c.get("decode", 0.0)
    stage_cpu["read+other"] = cpu - sum(v for k, v in c.items() if k not in ("setup", "decode"))
    stage_wall = {k: v for k, v in s.items() if k not in ("setup", "embed+decode")}
    stage_wall["embed"] = s.get("embed+decode", 0.0) - s.get("decode", 0.0)
    stage_wall["read+other"] = run_s - sum(v for k, v in s.items() if k not in ("setup", "decode"))
    for k in ("read+other", "validate", "decode", "embed", "select", "write", "commit"):
        rows.append({"part": "cpu", "run": run, "stage": k, "us_per_item": round(stage_cpu.get(k, 0.0) * 1e6 / items, 1),
                     "wall_us_per_item": round(stage_wall.get(k, 0.0) * 1e6 / items, 1)})
    return rows


# ------------------------------------------------------------------------------------------ main
def print_tables(rows: list[dict[str, Any]]) -> None:
    """One table per part: a column per key its rows have."""
    for part in dict.fromkeys(r["part"] for r in rows):
        group = [r for r in rows if r["part"] == part]
        cols = [k for k in dict.fromkeys(k for r in group for k in r) if k != "part"]
        width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in group)) for c in cols}
        print(f"\n[{part}]")
        print(" | ".join(c.rjust(width[c]) for c in cols))
        for r in group:
            print(" | ".join(str(r.get(c, "")).rjust(width[c]) for c in cols))
    sys.stdout.flush()


def environment(device: str) -> dict[str, Any]:
    import faiss
    import open_clip
    import torch
    import torchvision

    from curator.index import gpu_count

    env = {"part": "env", "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "open_clip": open_clip.__version__, "faiss": faiss.__version__,
           "faiss_gpus": gpu_count(), "cpus": os.cpu_count(), "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_mem_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30)
    return env


def main(argv: list[str] | None = None) -> None:
    global JSON_PATH
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write every row here (rewritten after each)")
    ap.add_argument("--parts", nargs="+", default=["decode", "model", "select", "e2e"],
                    choices=["decode", "model", "select", "e2e"])
    ap.add_argument("--smoke", action="store_true", help="every part tiny, on the CPU (a check of the script)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-L-14"])
    ap.add_argument("--iters", type=int, default=20, help="timed forward passes per model")
    ap.add_argument("--decode-images", type=int, default=4096)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--queries", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--e2e-images", type=int, default=40_000)
    ap.add_argument("--e2e-model", default="ViT-B-32")
    ap.add_argument("--commit-every", type=int, default=10_000, help="store.commit_every of the e2e runs")
    ap.add_argument("--eps-dup", type=float, default=0.0, help="selector.eps_dup of the e2e runs")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the Pillow pool")
    ap.add_argument("--work", help="folder for the generated data (default: a temporary one)")
    ap.add_argument("--budget-s", type=float, default=220.0,
                    help="start no select size or e2e run after this many seconds (the device's time is short)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.models, args.iters, args.decode_images = 32, ["curator-tiny"], 2, 64
        args.sizes, args.queries, args.repeats = [3000], 256, 1
        args.e2e_images, args.e2e_model, args.commit_every, args.workers = 192, "curator-tiny", 96, 2
    JSON_PATH = Path(args.json) if args.json else None
    # The pool forks before anything touches CUDA (a forked CUDA context is unusable).
    pool = ProcessPoolExecutor(args.workers, mp_context=mp.get_context("fork"))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="curator-gpu-check-"))
    t_start = time.perf_counter()

    def in_budget(what: str) -> bool:
        if time.perf_counter() - t_start < args.budget_s:
            return True
        emit({"part": what.split()[0], "skipped": f"{what}: past --budget-s {args.budget_s:g}"})
        return False

    try:
        n_img = max(args.decode_images if "decode" in args.parts else 0, args.e2e_images if "e2e" in args.parts else 0)
        shards = make_shards(pool, work / "jpegs", n_img, per=max(64, math.ceil(n_img / args.workers))) if n_img else []
        cfg_b32 = preprocess_cfg(args.e2e_model)
        pil_row = None
        if "decode" in args.parts:
            pool.submit(_pil_worker_init, cfg_b32).result()  # fail here, not in a worker, if it cannot
            pool.shutdown()
            pool = ProcessPoolExecutor(args.workers, mp_context=mp.get_context("fork"), initializer=_pil_worker_init,
                                       initargs=(cfg_b32,))
            pil_row = bench_pil_pool(pool, args.workers, shards, args.decode_images)
        pool.shutdown()

        import torch

        cuda = torch.cuda.is_available()
        if not args.smoke and not cuda:
            raise SystemExit("gpu_check: torch sees no CUDA device; on a CPU run it with --smoke")
        args.device = "cuda" if cuda and not args.smoke else "cpu"
        args.precision = "fp16" if args.device == "cuda" else "fp32"
        args.index_gpu = "auto" if args.device == "cuda" else "torch"  # on the CPU: force the torch search
        emit(environment(args.device))
        if "decode" in args.parts:
            print(f"decode ({args.decode_images} JPEGs, preprocessed for {args.e2e_model})", flush=True)
            assert pil_row is not None
            emit(pil_row)
            for row in bench_device_decode(read_images(shards, args.decode_images), args.device, cfg_b32, args.batch):
                emit(row)
        if "model" in args.parts:
            print("model (random init, preprocessed tensors)", flush=True)
            for name in args.models:
                emit(bench_model(name, args.device, args.precision, args.batch, args.iters))
        if "select" in args.parts:
            print("select (InfoGrowthSelector on VectorIndex, 512-d)", flush=True)
            bench_select(1000, args.device, args.index_gpu, 256, args.batch, 1)  # compile the selector's loop
            for n in args.sizes:
                if in_budget(f"select {n}"):
                    emit(bench_select(n, args.device, args.index_gpu, args.queries, args.batch, args.repeats))
        if "e2e" in args.parts:
            print(f"e2e ({args.e2e_images} JPEG records -> run_ingest, {args.e2e_model} {args.precision})", flush=True)
            cpu: list[dict[str, Any]] = []
            for store in (True, False):
                if in_budget(f"e2e store_images={store}"):
                    row, more = bench_e2e(work / "jpegs", work, args, store)
                    emit(row)
                    cpu += more
            for row in cpu:  # after the e2e rows: one table each
                emit(row)
        print_tables(ROWS)
        print(f"\ngpu_check done in {time.perf_counter() - t_start:.0f}s", flush=True)
    finally:
        pool.shutdown(cancel_futures=True)
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
