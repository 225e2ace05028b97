"""The demo stream: scikit-learn's bundled digits (real images), made dirty on purpose, and its run config.

A stratified 2/3 train split is streamed (the other third is held out for evaluation),
after a trusted bootstrap of train items is taken out. Of the rest, a share of labels is
flipped to a random other class and near-duplicate copies (Gaussian pixel noise) of
random items are added, then everything is shuffled. The ground truth is kept beside
the stream so benchmarks can score the selection.

Embeddings: no pretrained CLIP weights can be downloaded on an offline machine, so the
demo ships its items with a precomputed embedding -- the 64 pixel intensities, which
curator L2-normalises (what kNN on digits works in). The images are in the records too
(PNG), so `--embedder.kind clip` with a local checkpoint embeds the same stream with CLIP.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curator.config import RunConfig, load_config


@dataclass
class DigitsStream:
    bootstrap: list[dict]  # trusted records, not streamed
    stream: list[dict]  # the shuffled, dirty stream
    truth: pa.Table  # per stream id: true_label, given_label, flipped, group, is_copy
    train_x: np.ndarray  # the clean train split (bootstrap included), pixels 0-16
    train_y: np.ndarray
    test_x: np.ndarray  # held out, never streamed
    test_y: np.ndarray


def png_bytes(pixels: np.ndarray) -> bytes:
    """An 8x8 digit (0-16) as an 8-bit grayscale PNG."""
    img = Image.fromarray(np.clip(pixels.reshape(8, 8) * 16, 0, 255).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _record(rid: str, pixels: np.ndarray, label: int) -> dict:
    return {"id": rid, "image": png_bytes(pixels), "label": int(label),
            "embedding": pixels.astype(np.float32).tolist()}


def digits_stream(seed: int = 0, bootstrap: int = 100, flip: float = 0.2, dup: float = 0.3,
                  noise_std: float = 0.5) -> DigitsStream:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=1 / 3, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(xtr))
    boot, rest = order[:bootstrap], order[bootstrap:]
    boot_recs = [_record(f"boot-{i}", xtr[i], ytr[i]) for i in boot]

    given = ytr.copy()
    flip_idx = rng.choice(rest, int(round(flip * len(rest))), replace=False)
    for i in flip_idx:
        given[i] = rng.choice([c for c in range(10) if c != ytr[i]])
    flipped = np.zeros(len(xtr), bool)
    flipped[flip_idx] = True

    recs, truth = [], []
    for i in rest:
        recs.append(_record(f"d{i}", xtr[i], given[i]))
        truth.append((f"d{i}", int(ytr[i]), int(given[i]), bool(flipped[i]), int(i), False))
    copy_idx = rng.choice(rest, int(round(dup * len(rest))), replace=False)
    for i in copy_idx:
        noisy = np.clip(xtr[i] + rng.normal(0.0, noise_std, xtr[i].shape), 0.0, 16.0)
        recs.append(_record(f"d{i}-copy", noisy, given[i]))
        truth.append((f"d{i}-copy", int(ytr[i]), int(given[i]), bool(flipped[i]), int(i), True))
    perm = rng.permutation(len(recs))
    recs = [recs[j] for j in perm]
    truth = [truth[j] for j in perm]
    cols = list(zip(*truth, strict=True))
    truth_tbl = pa.table({"id": cols[0], "true_label": cols[1], "given_label": cols[2], "flipped": cols[3],
                          "group": cols[4], "is_copy": cols[5]})
    return DigitsStream(boot_recs, recs, truth_tbl, xtr, ytr, xte, yte)


#: What the demo's data needs (its embedding is the precomputed pixels); the thresholds are the
#: library's calibrated defaults. Flags override them.
DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    "embedder": {"kind": "precomputed", "model": "digits-pixels", "pretrained": ""},
    "source": {"batch_size": 128},
    "store": {"commit_every": 512},
}


def demo_config(out: str | Path, seed: int, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """The demo's run configuration for a run directory OUT (inputs under OUT/inputs), plus overrides."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEMO_DEFAULTS.items()}
    for sec, vals in (overrides or {}).items():
        merged.setdefault(sec, {}).update(vals)
    merged.setdefault("selector", {}).setdefault("seed", seed)
    out = Path(out)
    merged["store"]["out"] = str(out)
    merged["source"]["paths"] = [str(out / "inputs" / "stream.parquet")]
    merged["source"]["bootstrap"] = [str(out / "inputs" / "bootstrap.parquet")]
    return load_config(None, merged)


def write_demo_inputs(out: str | Path, seed: int) -> DigitsStream:
    """Write the stream, the bootstrap and the ground truth as Parquet under OUT/inputs."""
    ds = digits_stream(seed)
    d = Path(out) / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ds.stream), d / "stream.parquet")
    pq.write_table(pa.Table.from_pylist(ds.bootstrap), d / "bootstrap.parquet")
    pq.write_table(ds.truth, d / "truth.parquet")
    return ds


DEMO_QUERY = ("SELECT label, count(*) AS kept, count(*) FILTER (WHERE decision = 'relabelled') AS relabelled, "
              "round(avg(gain), 4) AS mean_gain FROM kept GROUP BY label ORDER BY label")
