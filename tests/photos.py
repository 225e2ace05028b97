"""Folders of photo-like images for tests: gradients, shapes, texture and blur, as JPEG and PNG.

Each class has its own palette and shape kind, so an image folder ingested with the tiny CLIP
has something to tell apart; `copies` near-duplicates (the same picture re-encoded at another
JPEG quality, or saved again as PNG) sit in the same class folder, so the run drops some items
as duplicates of others.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("boats", "cats", "trees")
_PALETTES = {"boats": ((20, 60, 160), (230, 230, 250)), "cats": ((120, 80, 40), (250, 200, 150)),
             "trees": ((20, 110, 30), (200, 240, 120))}


def photo(seed: int, kind: str = "boats", size: tuple[int, int] = (80, 64)) -> Image.Image:
    """One picture: a two-colour gradient sky, a few shapes of the class's kind, grain, a light blur."""
    rng = np.random.default_rng(seed)
    dark, light = (np.array(c, dtype=float) for c in _PALETTES.get(kind, ((90, 90, 90), (220, 220, 220))))
    w, h = size
    t = np.linspace(0, 1, h)[:, None, None] * rng.uniform(0.5, 1.0) + rng.uniform(0, 0.4)
    sky = np.clip(dark + (light - dark) * t + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(sky, "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if kind == "cats":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == "trees":
            draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    return im.filter(ImageFilter.GaussianBlur(0.6))


def encode(im: Image.Image, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_photo_folder(root: Path, per_class: int = 10, copies: int = 2, seed: int = 0) -> int:
    """ROOT/CLASS/NNN.jpg (every third one a .png, every second one with a caption in NNN.txt); the
    first `copies` pictures of each class again as NNNb.jpg (re-encoded at quality 75), the first
    one a third time as NNNc.png (both sort after their original); returns the images written."""
    n = 0
    for c, kind in enumerate(CLASSES):
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            im = photo(seed * 10_000 + c * 1000 + i, kind)
            if i % 3 == 2:
                (folder / f"{i:03d}.png").write_bytes(encode(im, "PNG"))
            else:
                (folder / f"{i:03d}.jpg").write_bytes(encode(im, "JPEG"))
            if i % 2 == 0:
                (folder / f"{i:03d}.txt").write_text(f"a picture of {kind}, number {i}")
            if i < copies:
                (folder / f"{i:03d}b.jpg").write_bytes(encode(im, "JPEG", quality=75))
                n += 1
            if i == 0 and copies:
                (folder / f"{i:03d}c.png").write_bytes(encode(im, "PNG"))
                n += 1
            n += 1
    return n


def ingest_photos(root: Path, out: Path, store_images: bool = True) -> Path:
    """Curate an image folder in-process with the tiny CLIP (random weights, offline). Its cosines
    sit close to 1, so near-duplicates are those above 0.999 (the copies are, distinct pictures not)."""
    from curator.config import load_config
    from pipelines.ingest import run_ingest

    cfg = load_config(None, {"embedder": {"model": "curator-tiny", "pretrained": "", "device": "cpu"},
                             "selector": {"align_mode": "off", "eps_dup": 0.001},
                             "store": {"out": str(out), "store_images": store_images},
                             "source": {"paths": [str(root)]}})
    run_ingest(cfg, progress=False)
    return out
