"""What a commit writes for the index, against the index's size: the whole index at every commit (as
curator did before incremental snapshots) against the chain (a delta of the rows added since the last
commit, a new base now and then).

    python benchmarks/commit_cost.py [--sizes 10000 100000 1000000] [--commits 7] [--commit-every 2048]
                                     [--dir DIR] [--json FILE]

The index is filled with N unit 512-d vectors of `selector_speed`'s mixture with the default index
settings (`index.kind = "auto"`: exact up to 8,192 items, then IVF-PQ with exact re-ranking), built
directly as growing to N would end with (`VectorIndex.bulk_build`). Then `--commits` times:
`--commit-every` new items are added, and the commit's index snapshot is written both ways into a run
directory under `--dir` (the disk a run directory would be on), durable (fsynced) on return:

- ``whole``: `VectorIndex.save` into a fresh folder -- what every commit wrote before;
- ``delta``: `ShardSnapshots.write`, the store's own path: the first commit writes the base, every
  later one the rows added since the commit before.

Columns (medians over the commits; the first, the base, is left out of ``delta``): seconds and MB
written per commit each way; ``base_every``: commits between two bases once the chain compacts (the
deltas may weigh `COMPACT_FRACTION` of the base), and ``amortized_mb``: a delta plus that share of a
base per commit -- what the chain writes on average; ``restore_s``: loading the chain (base and the
deltas) against ``restore_whole_s``, loading a whole snapshot of the same index (medians of 3, each
read from the page cache). The rest of a commit (the Parquet parts,
the manifest) is the same both ways and grows with `--commit-every`, not with the index.

A second table, the manifest: each commit rewrites ``manifest.json``, which names every part and
snapshot so far and carries the selector's state, so its cost grows with the run's commits. For run
directories whose manifest names ``--manifest-commits`` commits, with the state of a selector that
took a trusted bootstrap of 1,024 of the mixture's items and decided 3,072 more -- ``votes``:
``released`` with the labels in 10 classes (the label rule calibrates and lets its votes go),
``held`` with the mixture's 1,290 (it never gathers 10 votes a class, and holds 2,048 items' vectors
for the whole run) -- ``commit_ms`` is `StoreWriter.commit` with nothing staged (the state, the
manifest's copy, encoding and durable write; median of 7) and ``manifest_kb`` the manifest and its
state file on disk (the file is written only when its rows change), against ``before_ms`` and
``before_kb``: the same commit as curator made it before, the vectors inline as base64, the manifest
copied through JSON and indented (which json encodes in pure Python), all rewritten every commit;
``us_per_item``: ``commit_ms`` over --commit-every.

A third table, the Parquet parts: a kept table of ``--part-rows`` rows (an id, a caption, the image
bytes and a 512-d embedding) of `pipeline_speed`'s images -- ``photos`` (JPEG crops of photographs, up
to 320 px) and ``digits`` (64 px PNG) -- written as the store writes it (`parquet_options`: no
dictionary for the images and embeddings, the images as given when they are JPEG/PNG/WEBP files)
against zstd and dictionaries on every column, as before: ``us_per_row`` and ``bytes_per_row`` each
way (best of 5, into memory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.selector_speed import DIM, base_chunks, centers, mixture  # noqa: E402
from curator.config import IndexConfig  # noqa: E402
from curator.index import VectorIndex  # noqa: E402
from curator.index.deltas import COMPACT_FRACTION, fsync_path, row_bytes  # noqa: E402
from curator.store.snapshots import ShardSnapshots  # noqa: E402
from curator.store.writer import TABLES, StoreWriter, atomic_write_bytes, parquet_options  # noqa: E402

COLS = ["n_indexed", "kind", "whole_s", "whole_mb", "delta_s", "delta_mb", "speedup", "base_every",
        "amortized_mb", "restore_s", "restore_whole_s"]


def folder_mb(d: Path) -> float:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20


def timed(load: Callable[[], object], times: int = 3) -> float:
    """Median seconds of `load` after a first, untimed call: both restores read from the page cache."""
    load()
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        load()
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def base_every(idx: VectorIndex, commit_every: int) -> int:
    """Commits of `commit_every` items between two bases of `idx`'s chain: the deltas may weigh
    `COMPACT_FRACTION` of the base."""
    assert idx.journal is not None, "the index tracks no chain"
    return max(1, int(COMPACT_FRACTION * idx.journal.base_bytes // (commit_every * row_bytes(idx.dim))))


def measure(n: int, commits: int, commit_every: int, root: Path) -> dict:
    c = centers()
    idx = VectorIndex(DIM, IndexConfig(gpu="off"))
    idx.bulk_build(partial(base_chunks, n, c), n)
    run = root / f"run-{n}"
    snaps = ShardSnapshots(run, 0)
    rng = np.random.default_rng(n)
    whole_s, whole_mb, delta_s, delta_mb = [], [], [], []
    chains: dict[str, list[str]] = {}
    for no in range(1, commits + 1):
        x, lab = mixture(rng, c, commit_every)
        s = len(idx)
        idx.add(x, [f"new{s + j}" for j in range(commit_every)], lab, np.arange(s, s + commit_every))
        d = root / f"whole-{n}-{no}"
        t0 = time.perf_counter()
        idx.save(d)  # before: the whole index, every commit
        for f in (d, d.parent):
            fsync_path(f)
        whole_s.append(time.perf_counter() - t0)
        whole_mb.append(folder_mb(d))
        if no < commits:
            shutil.rmtree(d)
        t0 = time.perf_counter()
        chains = snaps.write(no, {"image": idx})
        took = time.perf_counter() - t0
        if no > 1:  # the first is the chain's base
            delta_s.append(took)
            delta_mb.append(folder_mb(run / chains["image"][-1]))
    chain = partial(VectorIndex.load, run / chains["image"][0], idx.cfg, [run / p for p in chains["image"][1:]])
    restore_s, restore_whole_s = timed(chain), timed(partial(VectorIndex.load, d, idx.cfg))
    base_mb = folder_mb(run / chains["image"][0])
    every = base_every(idx, commit_every)
    med = statistics.median
    return {"n_indexed": n, "kind": idx.kind, "commit_every": commit_every, "commits": commits,
            "whole_s": round(med(whole_s), 3), "whole_mb": round(med(whole_mb), 1),
            "delta_s": round(med(delta_s), 3), "delta_mb": round(med(delta_mb), 2),
            "speedup": round(med(whole_s) / med(delta_s), 1), "base_every": every,
            "amortized_mb": round(med(delta_mb) + base_mb / every, 2),
            "restore_s": round(restore_s, 2), "restore_whole_s": round(restore_whole_s, 2),
            "whole_s_all": [round(v, 3) for v in whole_s], "delta_s_all": [round(v, 3) for v in delta_s]}


MANIFEST_COLS = ["commits_named", "votes", "manifest_kb", "commit_ms", "before_kb", "before_ms", "speedup",
                 "us_per_item"]


def decided_selector(classes: int | None, n: int = 4096, batch: int = 256, trusted: int = 1024) -> Any:
    """A selector that took a trusted bootstrap of `trusted` of the mixture's items, then decided the
    rest of `n`; labels: the mixture's own, or their cluster mod `classes`."""
    from benchmarks.selector_speed import samples
    from curator.config import SelectorConfig
    from curator.embed import Embeddings
    from curator.select import InfoGrowthSelector

    sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
    x, lab = mixture(np.random.default_rng(7), centers(), n)
    lab = lab if classes is None else lab % classes
    for s in range(0, n, batch):
        m = len(x[s:s + batch])
        decide = sel.bootstrap if s < trusted else sel.select
        decide(samples(m, s, lab[s:s + batch]), Embeddings(x[s:s + batch], None, np.ones(m, bool), np.zeros(m, bool)))
        if s + batch == trusted:
            sel.finish_bootstrap()
    return sel


def manifest_cost(commits: int, commit_every: int, root: Path, sel: Any, votes: str, times: int = 7) -> dict:
    run = root / f"manifest-{votes}-{commits}"
    w = StoreWriter.open(run, {"model": "bench", "config_fingerprint": "bench"})
    w.manifest["parts"] = {t: [f"{t}/shard=0/part-{i:06d}.parquet" for i in range(1, commits + 1)] for t in TABLES}
    w.manifest["commit"] = commits
    positions = {"bench": {p: commits * commit_every // 12 for p in range(12)}}
    extra = {"calibration": sel.calibration_report(), "counts": {"kept": commits * commit_every // 2}}
    took, before = [], []
    for _ in range(times):
        t0 = time.perf_counter()
        w.commit(positions, sel.state_dict(w.put_state_file), None, extra)
        took.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = json.loads(json.dumps(w.manifest))
        m.update(extra, selector_state=sel.state_dict())
        atomic_write_bytes(run / "before.json", json.dumps(m, indent=1, sort_keys=True).encode())
        before.append(time.perf_counter() - t0)
    med = statistics.median
    kb = sum(f.stat().st_size for f in [run / "manifest.json", *(run / p for p in w.manifest["state_files"])]) / 1024
    return {"commits_named": commits, "votes": votes, "manifest_kb": round(kb, 1),
            "commit_ms": round(med(took) * 1e3, 2), "before_kb": round((run / "before.json").stat().st_size / 1024, 1),
            "before_ms": round(med(before) * 1e3, 2), "speedup": round(med(before) / med(took), 1),
            "us_per_item": round(med(took) * 1e6 / commit_every, 2)}


PART_COLS = ["images", "rows", "before_us_per_row", "us_per_row", "speedup", "before_bytes_per_row", "bytes_per_row"]


def part_cost(images: str, rows: int) -> dict:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.pipeline_speed import dataset

    recs = dataset(rows, 320 if images == "photos" else 64, images=images)
    x, _ = mixture(np.random.default_rng(1), centers(), rows)
    table = pa.table({"id": [r["id"] for r in recs], "text": [r["text"] for r in recs],
                      "image": [r["image"] for r in recs],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM)})

    def best(options: dict) -> tuple[float, int]:
        took, size = [], 0
        for _ in range(5):
            buf = io.BytesIO()
            t0 = time.perf_counter()
            pq.write_table(table, buf, **options)
            took.append(time.perf_counter() - t0)
            size = len(buf.getvalue())
        return min(took) * 1e6 / rows, size // rows

    (b_us, b_size), (us, size) = best({"compression": "zstd"}), best(parquet_options(table))
    return {"images": images, "rows": rows, "before_us_per_row": round(b_us, 1), "us_per_row": round(us, 1),
            "speedup": round(b_us / us, 1), "before_bytes_per_row": b_size, "bytes_per_row": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--commits", type=int, default=7, help="commits per size (the first writes the base)")
    ap.add_argument("--commit-every", type=int, default=2048, help="items added per commit (store.commit_every)")
    ap.add_argument("--manifest-commits", type=int, nargs="*", default=[100, 1000, 10_000],
                    help="commits the manifest names, for its table (none: skip it)")
    ap.add_argument("--part-rows", type=int, default=1024, help="rows of the Parquet parts' kept table")
    ap.add_argument("--dir", default=None, help="where the run directories go (default: a temporary folder)")
    ap.add_argument("--json", help="also write the rows here (keys as in the table, and every commit's seconds)")
    args = ap.parse_args()
    if args.commits < 2:
        ap.error("--commits must be at least 2: the first writes the base")
    rows = []
    print(" | ".join(f"{h:>15}" for h in COLS), flush=True)
    with tempfile.TemporaryDirectory(prefix="curator-commit-", dir=args.dir) as tmp:
        for n in args.sizes:
            row = measure(n, args.commits, args.commit_every, Path(tmp))
            shutil.rmtree(Path(tmp), ignore_errors=True)
            Path(tmp).mkdir(exist_ok=True)
            rows.append(row)
            print(" | ".join(f"{row[h]:>15}" for h in COLS), flush=True)
        manifest = []
        if args.manifest_commits:
            print("\nthe manifest a commit rewrites, by the commits it names (commit_every "
                  f"{args.commit_every})\n" + " | ".join(f"{h:>13}" for h in MANIFEST_COLS), flush=True)
            for votes, classes in (("released", 10), ("held", None)):
                sel = decided_selector(classes)
                for n in args.manifest_commits:
                    manifest.append(manifest_cost(n, args.commit_every, Path(tmp), sel, votes))
                    print(" | ".join(f"{manifest[-1][h]:>13}" for h in MANIFEST_COLS), flush=True)
    print("\nthe Parquet parts: a kept table written as the store writes it, against zstd and dictionaries "
          "on every column (before)\n"
          + " | ".join(f"{h:>20}" for h in PART_COLS), flush=True)
    parts = []
    for images in ("photos", "digits"):
        parts.append(part_cost(images, args.part_rows))
        print(" | ".join(f"{parts[-1][h]:>20}" for h in PART_COLS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"index": rows, "manifest": manifest, "parts": parts}, indent=1))


if __name__ == "__main__":
    main()
