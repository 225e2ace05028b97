"""Near-copies of real photographs through `curator ingest`, with and without the hash rules.

    python benchmarks/near_copies.py [--seeds 0 1 2] [--per-kind 16] [--unique 150] [--json FILE]
                                     [--model curator-tiny --pretrained ''] [--dists 4 8]

A folder of distinct photographs (256x256 tiles of scikit-learn's two sample photos,
`curator.sample_photos`, saved as JPEG q90); for `--per-kind` of them, one copy of each kind of
`COPY_KINDS` -- the same file, the same pixels as PNG and as BMP, JPEG re-encodes at q75 and q50,
resizes by 0.9 and 0.5, crops of 6 and 12 px off the top and left -- and `--unique` photographs with
no copy. Names are shuffled, so a copy comes before its original as often as after. The run embeds
with the tiny CLIP at random weights (offline; a weak space, where every cosine is near 1) unless
`--model` / `--pretrained` name a real one, on the library defaults (eps_dup 'auto', no bootstrap),
once with the hash rules off (`off`: the embedding rule alone) and once per `--dists` value of
selector.phash_max_dist (`hashN`).

Per kind of copy: `groups` (photos with that copy), and per setting the share of groups reduced to
one item (the original or the copy kept, not both, not neither); `hashN_rule` the share of groups
whose copy the hash rules dropped. Last row, `clean unique lost`: the share of the photos with no
copy that were dropped (for any reason). The figures are the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curator.config import load_config  # noqa: E402
from curator.sample_photos import COPY_KINDS, encode, photo_tiles  # noqa: E402
from curator.store.writer import read_table  # noqa: E402
from pipelines.ingest import run_ingest  # noqa: E402

KEPT = {"kept", "relabelled", "recaptioned"}


def write_folder(root: Path, seed: int, per_kind: int, unique: int) -> tuple[dict[str, list[list[str]]], list[str]]:
    """The photos and their copies under `root`; returns (kind -> [original, copy] file names of each group,
    the names of the photos with no copy)."""
    n = per_kind * len(COPY_KINDS) + unique
    tiles = photo_tiles(n, 256, seed)
    rng = np.random.default_rng(seed)
    names = iter(rng.permutation(2 * n))  # shuffled names: stream order is name order
    groups: dict[str, list[list[str]]] = {k: [] for k in COPY_KINDS}
    kinds = [k for k in COPY_KINDS for _ in range(per_kind)]
    singles = []
    for i, tile in enumerate(tiles):
        data = encode(tile)
        orig = f"{next(names):05d}.jpg"
        (root / orig).write_bytes(data)
        if i < len(kinds):
            suffix, make = COPY_KINDS[kinds[i]]
            copy = f"{next(names):05d}.{suffix}"
            (root / copy).write_bytes(make(data))
            groups[kinds[i]].append([orig, copy])
        else:
            singles.append(orig)
    return groups, singles


def curate(src: Path, out: Path, model: str, pretrained: str, dist: int | None) -> dict[str, dict[str, Any]]:
    """One run; `dist` None: hash rules off. Returns the decisions by id (the file name)."""
    selector = {"hash_dedup": False} if dist is None else {"phash_max_dist": dist}
    cfg = load_config(None, {"embedder": {"model": model, "pretrained": pretrained, "device": "cpu"},
                             "selector": selector, "store": {"out": str(out)}, "source": {"paths": [str(src)]}})
    run_ingest(cfg, progress=False)
    return {r["id"]: r for r in read_table(out, "decisions").select(["id", "decision", "dup_rule"]).to_pylist()}


def score(groups: dict[str, list[list[str]]], singles: list[str], runs: dict[str, dict[str, dict[str, Any]]]
          ) -> list[dict[str, Any]]:
    rows = []
    for kind, pairs in groups.items():
        row: dict[str, Any] = {"kind": kind, "groups": len(pairs)}
        for name, d in runs.items():
            row[name] = float(np.mean([sum(d[f]["decision"] in KEPT for f in g) == 1 for g in pairs]))
            if name != "off":
                row[f"{name}_rule"] = float(np.mean([any((d[f]["dup_rule"] or "").startswith("hash") for f in g)
                                                     for g in pairs]))
        rows.append(row)
    lost: dict[str, Any] = {"kind": "clean unique lost", "groups": len(singles)}
    for name, d in runs.items():
        lost[name] = float(np.mean([d[f]["decision"] not in KEPT for f in singles]))
        if name != "off":
            lost[f"{name}_rule"] = float(np.mean([(d[f]["dup_rule"] or "").startswith("hash") for f in singles]))
    return [*rows, lost]


def mean_rows(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [{k: (v if isinstance(v, str) else float(np.mean([rows[i][k] for rows in per_seed])))
             for k, v in row.items()} for i, row in enumerate(per_seed[0])]


def print_table(rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    print(" | ".join(f"{c:>20}" if c == "kind" else f"{c:>10}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>20}" if c == "kind" else f"{r[c]:>10.3f}" if isinstance(r[c], float)
                         else f"{r[c]!s:>10}" for c in cols))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--per-kind", type=int, default=16, help="photos with a copy, per kind of copy")
    ap.add_argument("--unique", type=int, default=150, help="photos with no copy")
    ap.add_argument("--dists", type=int, nargs="+", default=[4, 8], help="selector.phash_max_dist values to run")
    ap.add_argument("--model", default="curator-tiny")
    ap.add_argument("--pretrained", default="", help="'' = random weights (the offline default)")
    ap.add_argument("--json", help="also write the figures here (keys as in the table)")
    args = ap.parse_args()
    per_seed = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "photos"
            src.mkdir()
            groups, singles = write_folder(src, seed, args.per_kind, args.unique)
            runs = {name: curate(src, Path(tmp) / name, args.model, args.pretrained, dist)
                    for name, dist in [("off", None), *((f"hash{d}", d) for d in args.dists)]}
            per_seed.append(score(groups, singles, runs))
    rows = mean_rows(per_seed)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"seeds": args.seeds, "model": args.model,
                                               "pretrained": args.pretrained, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
