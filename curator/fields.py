"""What users' files call things: field names other tools write, and images given as text.

Datasets come as LAION / DataComp metadata (``URL``, ``TEXT``, ``uid``), img2dataset output
(``key``, ``url``, ``caption``, a ``jpg`` column), Hugging Face exports (``file_name``, an image
object with ``bytes`` / ``path``) or hand-written JSONL with a path in ``image``. `canonical_record`
maps all of them onto the engine's fields (`curator.records.RAW_COLUMNS`) so that validation,
embedding and the curated set see one shape. A field consumed here leaves the record; every other
field is kept (in ``metadata``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import sys
import urllib.parse
from typing import Any

from curator.records import InvalidRecord

#: Other names for a field, looked up in this order when the field itself is absent or null.
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("key", "uid", "SAMPLE_ID"),
    "text": ("caption", "TEXT", "txt"),
    "label": ("cls",),
}

#: Fields that hold the image itself: bytes, base64 text, a ``data:`` URI -- or, as text, a path or URI.
IMAGE_FIELDS: tuple[str, ...] = ("image", "image_b64", "jpg", "jpeg", "png", "webp")

#: Fields that hold where the image is: a path or a URI, never image data.
IMAGE_URI_FIELDS: tuple[str, ...] = ("image_uri", "image_path", "image_url", "file_name", "url", "URL")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")
_STRICT_B64 = sys.version_info >= (3, 11)  # binascii's strict_mode
_EXTENSION = re.compile(r"\.[A-Za-z0-9]{1,5}$")
MAX_PATH_CHARS = 4096


def canonical_record(raw: dict[str, Any], base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A copy of `raw` with aliased fields under the engine's names and its image as ``image`` bytes
    and/or an ``image_uri``; a relative path is taken relative to `base_dir` (the directory of the
    file that names it) when given. Applying it twice changes nothing. Raises InvalidRecord."""
    rec = dict(raw)
    for name, others in ALIASES.items():
        if rec.get(name) is None:
            for other in others:
                if rec.get(other) is not None:
                    rec[name] = rec.pop(other)
                    break
    image_field = next((f for f in IMAGE_FIELDS if rec.get(f) is not None), None)
    image, uri = None, None
    if image_field is not None:
        value = rec.pop(image_field)
        image, uri = _image_value(image_field, value, base_dir)
        if image is None and uri is None:
            rec[image_field] = value  # not an image value: validation says what is wrong with it
    if uri is None:
        uri_field = next((f for f in IMAGE_URI_FIELDS if rec.get(f) is not None), None)
        if uri_field is not None:
            value = rec.pop(uri_field)
            uri = _located(value, base_dir) if isinstance(value, str) and value.strip() else value
    if image is not None:
        rec["image"] = image
    if uri is not None:
        rec["image_uri"] = uri
    return rec


def given_id(raw: Any) -> Any:
    """The record's id as given (under ``id`` or an alias), for naming a rejection of it; None: none."""
    if not isinstance(raw, dict):
        return None
    return next((raw[f] for f in ("id", *ALIASES["id"]) if raw.get(f) is not None), None)


def _image_value(field: str, value: Any, base_dir: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    """(image bytes, image URI) from one image field's value; (None, None): not an image value."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), None
    if isinstance(value, dict):  # Hugging Face's Image feature: {"bytes": ..., "path": ...}
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return _image_value(field, data, base_dir)[0], None
        if isinstance(path, str) and path.strip():
            return None, _located(path, base_dir)
        raise InvalidRecord(f"field '{field}' is an object without 'bytes' or 'path'; give the image as base64 "
                            "text, a path or a URI", "bad-field")
    if not isinstance(value, str):
        return None, None
    text = value.strip()
    if text.startswith("data:"):
        return _data_uri(field, text), None
    if _SCHEME.match(text):
        return None, text
    if text and _STRICT_B64:  # the common case, base64 without white space: one pass instead of three
        try:
            return binascii.a2b_base64(text, strict_mode=True), None
        except binascii.Error:
            pass  # white space in it, or not base64: the checks below say which
    if _BASE64.fullmatch(text):
        try:
            return base64.b64decode("".join(text.split()), validate=True), None
        except (binascii.Error, ValueError):
            pass
    if _looks_like_path(text):
        return None, _located(text, base_dir)
    raise InvalidRecord(
        f"field '{field}' is neither base64 image data, a data: URI, a path nor a URI (got {text[:60]!r}); JSON "
        "carries images as base64 text or as a path (relative to the JSONL file's folder) or URI",
        "bad-base64")


def _data_uri(field: str, text: str) -> bytes:
    head, sep, payload = text.partition(",")
    if not sep:
        raise InvalidRecord(f"field '{field}' is a data: URI without a ',' before its data", "bad-base64")
    if head.endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRecord(f"field '{field}' is a data: URI whose base64 is broken", "bad-base64") from None
    return urllib.parse.unquote_to_bytes(payload)


def _looks_like_path(text: str) -> bool:
    """A path has a folder separator or a file extension; base64 has neither a '.' nor a '\\'."""
    if len(text) > MAX_PATH_CHARS or any(c in text for c in "\n\r\x00"):
        return False
    return "/" in text or "\\" in text or bool(_EXTENSION.search(text))


def _located(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    """A URI as given; a relative path joined to `base_dir` when there is one."""
    path = path.strip()
    if base_dir is None or _SCHEME.match(path) or os.path.isabs(path):
        return path
    return os.path.join(os.fspath(base_dir), path)
