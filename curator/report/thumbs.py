"""Thumbnails of untrusted image bytes, and safe text snippets for the galleries.

Image bytes in a curated set come from the stream (the web, a producer we do not control):
they are decoded with the same hardened decoder the embedder uses (format allow-list,
decompression-bomb guard), shrunk, and re-encoded as PNG by Pillow, so the page only ever
carries an image we produced. Anything that does not decode gets no thumbnail; the page shows
a placeholder. The data URI is built from base64 text, which cannot break out of an attribute.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from PIL import Image

from curator.embed.images import decode_image
from curator.records import InvalidRecord, Limits

#: Thumbnails are bounded by this many pixels per side; tiny images are enlarged to MIN_SIDE.
MAX_SIDE = 96
MIN_SIDE = 64
#: Bytes a thumbnail source may weigh, and pixels it may claim, before we refuse to decode it.
THUMB_LIMITS = Limits(max_image_bytes=16 * 1024 * 1024, max_image_pixels=40_000_000)


def thumbnail_uri(data: Any, max_side: int = MAX_SIDE) -> str | None:
    """A ``data:image/png;base64,...`` thumbnail of image bytes, or None if they are not an image."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)) or not data:
        return None
    try:
        im = decode_image(bytes(data), THUMB_LIMITS)
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        w, h = im.size
        if max(w, h) < MIN_SIDE:  # 8x8 digits: enlarge without blurring
            k = max(1, MIN_SIDE // max(w, h))
            im = im.resize((w * k, h * k), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    except InvalidRecord:
        return None
    except Exception:  # noqa: BLE001 - hostile bytes: any decoder failure means "no thumbnail"
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def snippet(value: Any, limit: int = 200) -> str | None:
    """Printable text of an untrusted value, cut to `limit` characters (escaping is the template's job)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    text = str(value)
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
