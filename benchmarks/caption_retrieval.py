"""Does the curated set train a better CLIP? Retrieval of a tiny CLIP trained on the curated pairs,
on all pairs, and on a random subset of the curated size, with the same steps.

    python benchmarks/caption_retrieval.py [--checkpoint FILE] [--train-seconds 180] [--seeds 0 1 2]
        [--steps 400] [--batch 128] [--heldout 500] [--json FILE]

Per seed, `quality_captions`' stream (20% mismatched captions, 20% near-duplicate copies, after 100
trusted pairs) is curated by `curator ingest` with the library defaults, the curation CLIP being
the tiny model trained on a separate pool (`--checkpoint` reuses one). Then a fresh curator-tiny
(same initialisation, same batch order seed) is trained from scratch for `--steps` on each of:

- ``all``: every pair (the trusted ones and the stream), as a user without curation would;
- ``curated``: the curated set as written (the `kept` table's images and captions);
- ``random``: a random subset of all pairs with the curated set's size.

Each is scored on `--heldout` fresh clean pairs of the same world: image-to-text and text-to-image
recall@1 and @5 (the right partner ranked first / in the first five among all held-out pairs).

Columns: ``seed``, ``set``, ``pairs``, ``fraction`` (of all pairs), ``mismatched`` (share of
the set's pairs whose caption belongs to another image), ``i2t_r1``, ``t2i_r1``, ``i2t_r5``,
``t2i_r5``; the means over seeds follow.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402
from PIL import Image  # noqa: E402
from quality_captions import caption, curate, curation_clip, random_scene, render, train_clip  # noqa: E402

COLS = ["seed", "set", "pairs", "fraction", "mismatched", "i2t_r1", "t2i_r1", "i2t_r5", "t2i_r5"]
SETS = ("all", "curated", "random")


def line(row: dict[str, Any]) -> str:
    return " | ".join(f"{row[c]:>10.4f}" if isinstance(row[c], float) else f"{row[c]:>10}" for c in COLS)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def heldout(seed: int, n: int) -> tuple[list[np.ndarray], list[str]]:
    """Fresh clean pairs of the same world, from a generator no stream uses."""
    rng = np.random.default_rng(50_000 + seed)
    scenes = [random_scene(rng) for _ in range(n)]
    return [render(s) for s in scenes], [caption(s, rng) for s in scenes]


def recall(model: Any, preprocess: Any, images: list[np.ndarray], texts: list[str]) -> dict[str, float]:
    """Image-to-text and text-to-image recall@1/@5 among the held-out pairs."""
    import open_clip
    import torch

    with torch.no_grad():
        im = model.encode_image(torch.stack([preprocess(Image.fromarray(x)) for x in images]))
        tx = model.encode_text(open_clip.get_tokenizer("curator-tiny")(texts))
    im = torch.nn.functional.normalize(im, dim=-1)
    tx = torch.nn.functional.normalize(tx, dim=-1)
    sims = (im @ tx.T).numpy()
    own = np.arange(len(texts))

    def rank(s: np.ndarray) -> np.ndarray:  # 0 = the right partner ranked first
        return (s > s[own, own][:, None]).sum(axis=1)

    r_i2t, r_t2i = rank(sims), rank(sims.T)
    return {"i2t_r1": float(np.mean(r_i2t < 1)), "t2i_r1": float(np.mean(r_t2i < 1)),
            "i2t_r5": float(np.mean(r_i2t < 5)), "t2i_r5": float(np.mean(r_t2i < 5))}


def run_seed(seed: int, ckpt: Path, work: Path, steps: int, batch: int, n_heldout: int) -> list[dict]:
    from curator.store import read_table

    run, truth, _ = curate(seed, ckpt, work)
    mismatched = {t[0]: bool(t[1]) for t in truth}
    inputs = run.parent / "inputs"  # the trusted pairs are curated (and kept) too: every set starts from them
    every = pq.read_table(inputs / "bootstrap.parquet").to_pylist() + pq.read_table(inputs / "stream.parquet").to_pylist()
    kept = read_table(run, "kept").select(["id", "image", "text"]).to_pylist()
    rng = np.random.default_rng(seed)
    chosen = {"all": every, "curated": kept,
              "random": [every[i] for i in sorted(rng.choice(len(every), len(kept), replace=False))]}
    test_images, test_texts = heldout(seed, n_heldout)
    rows = []
    for name in SETS:
        pairs = chosen[name]
        model, preprocess, _ = train_clip([pixels(p["image"]) for p in pairs], [p["text"] for p in pairs],
                              steps=steps, seed=seed, batch=batch)
        row = {"seed": seed, "set": name, "pairs": len(pairs), "fraction": len(pairs) / len(every),
               "mismatched": float(np.mean([mismatched.get(p["id"], False) for p in pairs])),
               **recall(model, preprocess, test_images, test_texts)}
        print(line(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="the curation CLIP's weights (trained now and saved there when absent)")
    ap.add_argument("--train-seconds", type=float, default=180.0, help="training time of the curation CLIP")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400, help="training steps of each downstream CLIP")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--heldout", type=int, default=500, help="held-out clean pairs scored")
    ap.add_argument("--json", help="also write the rows here (keys as in the table)")
    args = ap.parse_args()
    print(" | ".join(f"{c:>10}" for c in COLS), flush=True)
    with tempfile.TemporaryDirectory(prefix="curator-retrieval-") as tmp:
        ckpt, _ = curation_clip(args.checkpoint, args.train_seconds, Path(tmp))
        rows = [r for s in args.seeds for r in run_seed(s, ckpt, Path(tmp), args.steps, args.batch, args.heldout)]
    means = []
    for name in SETS:
        mine = [r for r in rows if r["set"] == name]
        means.append({"seed": "mean", "set": name, "pairs": round(statistics.mean(r["pairs"] for r in mine)),
                      **{c: statistics.mean(r[c] for r in mine) for c in COLS[3:]}})
    for row in means:
        print(line(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "rows": rows, "mean": means}, indent=1))


if __name__ == "__main__":
    main()
