"""Image filters: resolution and aspect ratio, from image headers (no pixel is decoded).

An item's image is its `image` bytes or the file or URL its `image_uri` names (read with the same
guards as the embedder: regular files only, size limits, a download deadline). An item without an
image, or whose header cannot be read, scores NaN: the filter does not apply, and the embed stage
rejects an unreadable image with its reason and code as usual.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa
from PIL import Image

from curator.embed.images import ALLOWED_FORMATS, decode_image, fetch_image_bytes
from curator.ops.base import Filter
from curator.records import InvalidRecord, Limits


def image_bytes(samples: pa.Table, limits: Limits | None = None) -> list[bytes | None]:
    """Each row's image bytes: its `image`, else what its `image_uri` names; None: no image, or unreadable."""
    images = samples.column("image").to_pylist() if "image" in samples.column_names else [None] * samples.num_rows
    uris = samples.column("image_uri").to_pylist() if "image_uri" in samples.column_names else [None] * len(images)
    out: list[bytes | None] = []
    for data, uri in zip(images, uris, strict=True):
        if data is None and uri:
            try:
                data = fetch_image_bytes(uri, limits)
            except InvalidRecord:
                data = None
        out.append(data)
    return out


def image_sizes(samples: pa.Table, limits: Limits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(widths, heights) from each row's image header; NaN where there is no readable image."""
    w = np.full(samples.num_rows, np.nan)
    h = np.full(samples.num_rows, np.nan)
    Image.init()  # every plugin Pillow has, of which the embedder's allow-list is opened
    formats = [f for f in ALLOWED_FORMATS if f in Image.OPEN]
    for i, data in enumerate(image_bytes(samples, limits)):
        if not data:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=formats) as im:
                    w[i], h[i] = im.size
        except Exception:  # noqa: BLE001 - any header a decoder refuses: not applicable here, rejected when embedded
            continue
    return w, h


def decoded_images(samples: pa.Table, limits: Limits | None = None) -> list[Image.Image | None]:
    """Each row's image decoded to RGB (with the embedder's guards), None where there is none or it is bad:
    for filters that look at pixels (a classifier, a sharpness score)."""
    out: list[Image.Image | None] = []
    for data in image_bytes(samples, limits):
        try:
            out.append(decode_image(data, limits) if data else None)
        except InvalidRecord:
            out.append(None)
    return out


class ImageResolution(Filter):
    """The image's size in pixels: its shorter side (`of = "min_side"`, the default), longer side, width,
    height, or pixel count ("pixels")."""

    MEASURES = ("min_side", "max_side", "width", "height", "pixels")

    def __init__(self, of: str = "min_side") -> None:
        if of not in self.MEASURES:
            raise ValueError(f"of must be one of {', '.join(self.MEASURES)}, got {of!r}")
        self.of = of

    def score(self, samples: pa.Table) -> np.ndarray:
        w, h = image_sizes(samples)
        return {"min_side": np.minimum(w, h), "max_side": np.maximum(w, h),
                "width": w, "height": h, "pixels": w * h}[self.of]


class AspectRatio(Filter):
    """The image's aspect ratio: longer side over shorter side (>= 1, so one `max` bounds both
    orientations), or width over height with `symmetric = false`."""

    def __init__(self, symmetric: bool = True) -> None:
        if not isinstance(symmetric, bool):
            raise ValueError(f"symmetric must be true or false, got {symmetric!r}")
        self.symmetric = symmetric

    def score(self, samples: pa.Table) -> np.ndarray:
        w, h = image_sizes(samples)
        return np.maximum(w, h) / np.minimum(w, h) if self.symmetric else w / h
