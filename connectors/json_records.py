"""Raw records from JSON: JSONL lines and Kafka JSON messages decode the same way."""

from __future__ import annotations

import json
import os
from typing import Any

from curator.fields import canonical_record, given_id
from curator.records import InvalidRecord


def record_from_json(obj: Any, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A raw record from one decoded JSON value; shared by JSONL files and Kafka JSON messages.

    JSON has no bytes, so an image travels as base64 text (or a ``data:`` URI) in ``image``, or as a
    path or URI there or in ``image_path`` / ``url`` / ...; other tools' field names are mapped
    (`curator.fields`). `base_dir`: the JSONL file's folder, which relative paths are relative to.
    Raises InvalidRecord (a ValueError) with the reason and its code.
    """
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(obj), type(obj).__name__)
        raise InvalidRecord(f"expected a JSON object with fields, got {kind}", "not-an-object")
    return canonical_record(obj, base_dir)


def json_id(obj: Any) -> str | None:
    """The record's id (or its alias: ``key``, ``uid``, ...) for a rejection of it, when it has a usable one."""
    value = given_id(obj)
    return str(value)[:200] if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def read_json_bytes(data: bytes, base_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Decode one JSON message/line into a raw record (InvalidRecord with the reason when it is not one)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidRecord(f"invalid JSON: {exc}", "invalid-json") from None
    return record_from_json(obj, base_dir)
