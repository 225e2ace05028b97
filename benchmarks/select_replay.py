"""The select-and-write stage alone, on the service's own workload, in CPU time per item.

    python benchmarks/select_replay.py [--items 20000] [--batch-size 256] [--model curator-tiny]
        [--repeats 3] [--json FILE]

`pipeline_speed.py`'s digits stream (its records, its run configuration: the tiny model's 32-d
embeddings, ten captions that repeat, commits every 1,024 items) is embedded once, batch by batch, by
the same upstream stages the service's embedders run; then each repeat replays those batches through
a fresh `SelectWriteStage` in a new run directory, committing when it is due and once at the end --
what the service's selector/writer process does, without Ray, Kafka or the other processes on the
same cores. One FAISS thread, as the service's actor has. Columns, medians of --repeats:

- ``process_us_per_item``: CPU in `SelectWriteStage.process` (search, decisions, index inserts);
- ``commit_us_per_item``: CPU in its commits (Parquet parts, index snapshots, the manifest);
- ``total_us_per_item``: both;
- ``decisions_digest``: a digest of the decisions table (id, decision, dup_of, label_out), the same
  in every repeat (the run fails otherwise): what two versions of the code must agree on.

Compare two versions by running this script in a checkout of each (a `git worktree`), interleaved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_speed import dataset, raw_batches, run_config  # noqa: E402
from curator.index.threads import configure_process  # noqa: E402
from curator.stages import build_stages, run_chain  # noqa: E402
from curator.store import read_table  # noqa: E402

COLS = ("items", "process_us_per_item", "commit_us_per_item", "total_us_per_item", "decisions_digest")


def embedded(args: argparse.Namespace) -> list:
    """The stream's batches as the embedders hand them to the selector/writer."""
    records = dataset(args.items, 64)
    stages = build_stages(run_config(args, Path(tempfile.mkdtemp(prefix="curator-replay-"))))
    for s in stages.upstream:
        s.setup()
    out, done = [], 0
    for batch in raw_batches(records, args.batch_size):
        out.append(run_chain(stages.upstream, batch))
        done += len(batch)
        print(f"\rembedding: {done}/{len(records)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return out


def replay(args: argparse.Namespace, batches: list) -> tuple[float, float, str]:
    """(process s, commit s, decisions digest) of one fresh stage over the batches."""
    import pickle

    work = Path(tempfile.mkdtemp(prefix="curator-replay-"))
    stage = build_stages(run_config(args, work)).select
    stage.setup()
    fresh = pickle.loads(pickle.dumps(batches))  # each repeat gets batches no earlier repeat touched
    t_proc = t_commit = 0.0
    for b in fresh:
        c0 = time.process_time()
        stage.process(b)
        t_proc += time.process_time() - c0
        if stage.due():
            c0 = time.process_time()
            stage.commit()
            t_commit += time.process_time() - c0
    c0 = time.process_time()
    stage.commit()
    t_commit += time.process_time() - c0
    dec = read_table(work, "decisions").select(["id", "decision", "dup_of", "label_out"]).sort_by("id")
    digest = hashlib.sha256(json.dumps(dec.to_pydict(), sort_keys=True, default=str).encode()).hexdigest()[:16]
    return t_proc, t_commit, digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=256, help="items per batch (source.batch_size)")
    ap.add_argument("--embed-batch", type=int, default=64, help="images per forward pass (embedder.batch_size)")
    ap.add_argument("--model", default="curator-tiny")
    ap.add_argument("--pretrained", default="")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the row here (keys as in the table)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    configure_process()
    import faiss

    faiss.omp_set_num_threads(1)  # the selector/writer actor's one CPU
    batches = embedded(args)
    runs = [replay(args, batches) for _ in range(args.repeats)]
    digests = {d for _, _, d in runs}
    if len(digests) != 1:
        raise RuntimeError(f"the same batches gave different decisions across repeats: {sorted(digests)}")
    n = args.items
    proc, com = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    row = {"items": n, "process_us_per_item": round(proc * 1e6 / n, 1), "commit_us_per_item": round(com * 1e6 / n, 1),
           "total_us_per_item": round(statistics.median(r[0] + r[1] for r in runs) * 1e6 / n, 1),
           "decisions_digest": digests.pop()}
    print(f"{args.model}, batches of {args.batch_size}, {n} items; medians of {args.repeats} replays")
    print(" | ".join(f"{c:>20}" for c in COLS))
    print(" | ".join(f"{row[c]:>20}" for c in COLS))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "row": row,
                                               "runs_us_per_item": [[r[0] * 1e6 / n, r[1] * 1e6 / n] for r in runs]},
                                              indent=1))


if __name__ == "__main__":
    main()
