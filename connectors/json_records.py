"""Raw records from JSON: JSONL lines and Kafka JSON messages decode the same way."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


def record_from_json(obj: Any) -> dict[str, Any]:
    """A raw record from one decoded JSON value; shared by JSONL files and Kafka JSON messages.

    JSON has no bytes, so images travel as base64 text in ``image`` (or ``image_b64``). Raises
    ValueError with the reason when the value is not an object or the base64 is broken.
    """
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(obj), type(obj).__name__)
        raise ValueError(f"expected a JSON object with fields, got {kind}")
    rec = dict(obj)
    b64 = rec.pop("image_b64", None)
    if b64 is not None and rec.get("image") is None:
        rec["image"] = b64
    img = rec.get("image")
    if isinstance(img, str):
        try:
            rec["image"] = base64.b64decode(img, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("field 'image' is not valid base64 (images in JSON must be base64 text)") from None
    return rec


def json_id(obj: Any) -> str | None:
    """The record's id for a rejection of it, when it has a usable one."""
    if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)) and not isinstance(obj.get("id"), bool):
        return str(obj["id"])[:200]
    return None


def read_json_bytes(data: bytes) -> dict[str, Any]:
    """Decode one JSON message/line into a raw record (ValueError with the reason when it is not one)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid JSON: {exc}") from None
    return record_from_json(obj)
