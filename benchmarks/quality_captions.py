"""The multimodal path: caption-mismatch detection and duplicate removal with a CLIP model.

    python benchmarks/quality_captions.py [--train-seconds 180] [--seeds 0 1 2] [--json FILE]

1. Renders a synthetic image-caption world (two objects per image: shapes, colours, sizes,
   3x3 positions, with position jitter and background noise; captions from templates that
   describe them).
2. Trains the tiny open_clip model (`curator-tiny`) contrastively on it for a few CPU
   minutes, saves the weights, and loads them back through the embedder's local
   checkpoint path (the same path a user's fine-tuned CLIP takes).
3. Per seed, streams pairs with 20% mismatched captions and 20% near-duplicate copies
   (pixel noise) after a trusted bootstrap of 100 clean pairs, through a full curation run
   with the library defaults: the caption threshold and eps_dup are 'auto' (calibrated on the
   trusted pairs and refined in stream order; the values chosen are read from the manifest).

Reports mismatch precision / recall / F1 and duplicate removal, and, measured in the same
run with the same model, the offline DataComp-style CLIP-score filter that drops the global
bottom 20% by alignment (it is told the true mismatch rate; the online method is not).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from quality_digits import report_seeds  # noqa: E402

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 225), "yellow": (235, 210, 40),
           "purple": (150, 60, 190), "white": (245, 245, 245)}
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
SIZES = ("small", "large")
TEMPLATES = ("a {size} {colour} {shape} at the {pos}", "a {colour} {shape} ({size}) {pos}")
COLS = ["seed", "mismatch_p", "mismatch_r", "mismatch_f1", "peer_clipscore_f1", "dup_removed",
        "clean_dropped_as_dup", "align_threshold", "mismatch_rate_est", "eps_dup", "kept", "select_s", "captions_status"]


def random_object(rng: np.random.Generator, taken: int | None = None) -> dict:
    pos = int(rng.integers(9))
    while pos == taken:
        pos = int(rng.integers(9))
    return {"shape": SHAPES[rng.integers(len(SHAPES))], "colour": list(COLOURS)[rng.integers(len(COLOURS))],
            "pos": pos, "size": SIZES[rng.integers(len(SIZES))], "jitter": rng.integers(-2, 3, 2).tolist()}


def random_scene(rng: np.random.Generator) -> dict:
    """Two objects at different grid positions on a noisy background: ~10^6 distinct descriptions."""
    a = random_object(rng)
    return {"objects": [a, random_object(rng, taken=a["pos"])], "noise": int(rng.integers(2**31))}


def render(scene: dict, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(scene["noise"])
    bg = rng.normal(70, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    for o in scene["objects"]:
        r = 3 if o["size"] == "small" else 5
        cx = 5 + (o["pos"] % 3) * 11 + o["jitter"][0]
        cy = 5 + (o["pos"] // 3) * 11 + o["jitter"][1]
        col = COLOURS[o["colour"]]
        if o["shape"] == "circle":
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif o["shape"] == "square":
            d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=col)
        elif o["shape"] == "triangle":
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
        else:
            w = max(1, r // 3)
            d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=col)
            d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=col)
    return np.asarray(img)


def caption(scene: dict, rng: np.random.Generator) -> str:
    parts = []
    for o in scene["objects"]:
        t = TEMPLATES[rng.integers(len(TEMPLATES))]
        parts.append(t.format(size=o["size"], colour=o["colour"], shape=o["shape"], pos=POSITIONS[o["pos"]]))
    return " and ".join(parts)


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def train_clip(images: list[np.ndarray], texts: list[str], *, seconds: float | None = None,
               steps: int | None = None, seed: int = 0, batch: int = 128) -> tuple[Any, Any, int]:
    """Contrastive training of a fresh curator-tiny on these pairs (HxWx3 uint8 images), for a time
    or a number of steps; returns the model, its image preprocessing and the steps made."""
    import open_clip
    import torch

    from curator.embed.clip import MODEL_CONFIG_DIR, register_model_configs

    register_model_configs(MODEL_CONFIG_DIR)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model, _, preprocess = open_clip.create_model_and_transforms("curator-tiny", pretrained=None)
    tokens = open_clip.get_tokenizer("curator-tiny")(texts)
    pixels = torch.stack([preprocess(Image.fromarray(x)) for x in images])
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rng = np.random.default_rng(1000 + seed)
    model.train()
    t0, made = time.monotonic(), 0
    while (steps is None or made < steps) and (seconds is None or time.monotonic() - t0 < seconds):
        idx = torch.from_numpy(rng.choice(len(texts), min(batch, len(texts)), replace=False))
        img_f, txt_f, scale = model(pixels[idx], tokens[idx])
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        made += 1
        if made % 200 == 0:
            print(f"  train step {made}: contrastive loss {loss.item():.3f}", file=sys.stderr, flush=True)
    model.eval()
    return model, preprocess, made


def train_tiny_clip(seconds: float, out: Path, seed: int = 0) -> tuple[Path, int]:
    """The curation run's CLIP: curator-tiny trained on a pool of the synthetic world; returns the checkpoint."""
    import torch

    rng = np.random.default_rng(1000 + seed)
    pool = [random_scene(rng) for _ in range(16384)]
    texts = [caption(s, rng) for s in pool]
    model, _, steps = train_clip([render(s) for s in pool], texts, seconds=seconds, seed=seed)
    path = out / "curator-tiny-shapes.pt"
    torch.save(model.state_dict(), path)
    return path, steps


def make_stream(seed: int, n_orig: int = 1200, n_dup: int = 300, n_mis: int = 300, n_boot: int = 100):
    rng = np.random.default_rng(seed)

    def rec(rid: str, scene: dict, text: str, pixels: np.ndarray | None = None) -> dict:
        return {"id": rid, "image": png(render(scene) if pixels is None else pixels), "text": text}

    boot = [rec(f"boot-{i}", s, caption(s, rng)) for i, s in enumerate(random_scene(rng) for _ in range(n_boot))]
    scenes = [random_scene(rng) for _ in range(n_orig)]
    recs, truth = [], []
    mis = set(rng.choice(n_orig, n_mis, replace=False).tolist())
    for i, s in enumerate(scenes):
        if i in mis:
            other = random_scene(rng)
            recs.append(rec(f"o{i}", s, caption(other, rng)))
        else:
            recs.append(rec(f"o{i}", s, caption(s, rng)))
        truth.append((f"o{i}", i in mis, False, i))
    clean = [i for i in range(n_orig) if i not in mis]
    for i in rng.choice(clean, n_dup, replace=False):
        noisy = (render(scenes[i]).astype(float) + rng.normal(0, 3, (32, 32, 3))).clip(0, 255).astype(np.uint8)
        recs.append(rec(f"o{i}-copy", scenes[i], recs[i]["text"], noisy))
        truth.append((f"o{i}-copy", False, True, int(i)))
    perm = rng.permutation(len(recs))
    return boot, [recs[k] for k in perm], [truth[k] for k in perm]


def curate(seed: int, ckpt: Path, work: Path) -> tuple[Path, list, float]:
    """Seed `seed`'s stream through `curator ingest` with the library defaults and `ckpt` as the
    CLIP; returns the run directory, the stream's truth rows and the seconds it took."""
    from curator.config import load_config
    from pipelines.ingest import run_ingest

    boot, stream, truth = make_stream(seed)
    d = work / f"seed{seed}"
    (d / "inputs").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(stream), d / "inputs" / "stream.parquet")
    pq.write_table(pa.Table.from_pylist(boot), d / "inputs" / "bootstrap.parquet")
    emb_cfg = {"kind": "clip", "model": "curator-tiny", "pretrained": str(ckpt), "batch_size": 256}
    cfg = load_config(None, {
        "embedder": emb_cfg,
        "selector": {"seed": seed},  # the library defaults: thresholds on auto
        "source": {"paths": [str(d / "inputs" / "stream.parquet")],
                   "bootstrap": [str(d / "inputs" / "bootstrap.parquet")]},
        "store": {"out": str(d / "run")},
    })
    t0 = time.perf_counter()
    run_ingest(cfg, progress=False)
    return d / "run", truth, time.perf_counter() - t0


def run_seed(seed: int, ckpt: Path, work: Path) -> dict:
    from curator.store import read_manifest, read_table

    run, truth, select_s = curate(seed, ckpt, work)
    dec = {r["id"]: r for r in read_table(run, "decisions").to_pylist()}
    cal = read_manifest(run)["calibration"]
    thr = cal["align_threshold"]["value"]  # the calibrated threshold in force at the end (None: not applied)
    if os.environ.get("CURATOR_BENCH_DUMP"):
        Path(os.environ["CURATOR_BENCH_DUMP"]).write_text(json.dumps({"truth": truth, "dec": dec, "thr": thr}))
    mism = np.array([t[1] for t in truth])
    decisions = [dec[t[0]] for t in truth]
    flagged = np.array([r["decision"] == "dropped-noisy" for r in decisions])  # what the run decided
    tp = int((flagged & mism).sum())
    p, r = tp / max(1, flagged.sum()), tp / max(1, mism.sum())
    f1 = 2 * p * r / max(1e-9, p + r)
    dropped_dup = np.array([r["decision"] == "dropped-duplicate" for r in decisions])
    # an original whose copy came first is rightly dropped: score groups, not items
    groups: dict[int, list[bool]] = {}
    for t, kept in zip(truth, [r["decision"] in ("kept", "relabelled", "recaptioned") for r in decisions],
                       strict=True):
        groups.setdefault(t[3], []).append(kept)
    dup_groups = [g for g in groups.values() if len(g) == 2]
    singles_clean = [not dropped_dup[i] for i, t in enumerate(truth) if len(groups[t[3]]) == 1]
    # offline peer: global bottom-20% CLIP-score filter with the same model
    aligns = np.array([r["align"] if r["align"] is not None else np.nan for r in decisions])
    cut = np.nanquantile(aligns, mism.mean())
    pf = aligns < cut
    ptp = int((pf & mism).sum())
    pp, pr = ptp / max(1, pf.sum()), ptp / max(1, mism.sum())
    return {"seed": seed, "mismatch_p": p, "mismatch_r": r, "mismatch_f1": f1,
            "peer_clipscore_f1": 2 * pp * pr / max(1e-9, pp + pr),
            "dup_removed": float(np.mean([sum(g) == 1 for g in dup_groups])),
            "clean_dropped_as_dup": 1.0 - float(np.mean(singles_clean)),
            "align_threshold": thr, "mismatch_rate_est": float(cal["align_threshold"].get("mismatch_rate", np.nan)),
            "eps_dup": float(cal["eps_dup"]["value"]), "kept": sum(r["decision"] == "kept" for r in decisions),
            "select_s": select_s, "captions_status": cal["align_threshold"]["origin"]} | (
        {} if thr is not None else {c: "abstained" for c in ("mismatch_p", "mismatch_r", "mismatch_f1",
                                                               "align_threshold")})


def curation_clip(checkpoint: str | None, seconds: float, tmp: Path) -> tuple[Path, int]:
    """The curation run's CLIP: `checkpoint` when it exists, else trained now (and saved there)."""
    if checkpoint and Path(checkpoint).exists():
        print(f"using trained weights {checkpoint}")
        return Path(checkpoint), 0
    t0 = time.monotonic()
    ckpt, steps = train_tiny_clip(seconds, tmp)
    print(f"trained curator-tiny for {steps} steps in {time.monotonic() - t0:.0f} s -> {ckpt.name}")
    if checkpoint:
        Path(checkpoint).write_bytes(ckpt.read_bytes())
    return ckpt, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--checkpoint", help="reuse these trained weights (or save them here after training)")
    ap.add_argument("--json", help="also write the figures here (keys as in the table)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="curator-captions-") as tmp:
        ckpt, steps = curation_clip(args.checkpoint, args.train_seconds, Path(tmp))
        rows = [run_seed(s, ckpt, Path(tmp)) for s in args.seeds]
    report_seeds(rows, args.json, COLS, train_steps=steps)


if __name__ == "__main__":
    main()
