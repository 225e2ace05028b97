"""Real photographs and their near-copies, offline: for the hash rules' tests and benchmark.

scikit-learn ships two photographs (china.jpg and flower.jpg, 427x640). `photo_tiles` cuts many
distinct pictures out of them -- square tiles at their own place and scale, each overlapping any
other tile of its photograph by at most half of the smaller one, in four rotations -- so a
folder of "different photos" is real camera content, not generated shapes. `COPY_KINDS` make the
copies a dataset picks up on its way: the same file again, the same pixels in another format, a
JPEG re-encode, a resize, a crop.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

#: largest share of the smaller tile two tiles of one photograph may have in common
MAX_OVERLAP = 1 / 2


def photo_tiles(n: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """`n` distinct photographs as (size, size, 3) uint8 RGB arrays (at most ~400 exist)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(200_000):
        if 4 * len(boxes) >= n:
            break
        k = int(rng.integers(len(photos)))
        h, w, _ = photos[k].shape
        s = int(rng.integers(64, 200))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        if all(kk != k or max(0, min(y + s, yy + ss) - max(y, yy)) * max(0, min(x + s, xx + ss) - max(x, xx))
               <= MAX_OVERLAP * min(s, ss) ** 2 for kk, yy, xx, ss in boxes):
            boxes.append((k, y, x, s))
    tiles = []
    for k, y, x, s in boxes:
        tile = np.asarray(Image.fromarray(photos[k][y:y + s, x:x + s]).resize((size, size), Image.BICUBIC))
        tiles += [np.ascontiguousarray(np.rot90(tile, r)) for r in range(4)]
    if len(tiles) < n:
        raise ValueError(f"only {len(tiles)} distinct tiles fit in the sample photographs; asked for {n}")
    order = rng.permutation(len(tiles))[:n]
    return [tiles[i] for i in order]


def encode(rgb: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _resize(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w, _ = rgb.shape
    return np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.BICUBIC))


#: (file suffix, the copy's bytes from the original file's bytes) per kind of copy
COPY_KINDS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "byte-identical": ("jpg", lambda b: b),
    "same pixels (PNG)": ("png", lambda b: encode(decode(b), "PNG")),
    "same pixels (BMP)": ("bmp", lambda b: encode(decode(b), "BMP")),
    "JPEG q75": ("jpg", lambda b: encode(decode(b), "JPEG", 75)),
    "JPEG q50": ("jpg", lambda b: encode(decode(b), "JPEG", 50)),
    "resize 0.9": ("jpg", lambda b: encode(_resize(decode(b), 0.9))),
    "resize 0.5": ("jpg", lambda b: encode(_resize(decode(b), 0.5))),
    "crop 6 px": ("jpg", lambda b: encode(decode(b)[6:, 6:])),  # 6 px off the top and the left
    "crop 12 px": ("jpg", lambda b: encode(decode(b)[12:, 12:])),
}
