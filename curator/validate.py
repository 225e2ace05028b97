"""Validation of raw, untrusted input, in one place: records become sample rows or rejections.

`validate_batch` is what the validate stage runs. Validation rejects bad records with a
reason; `repair_batch` is the last line of defence for anything that still makes it raise
(a record that failed its batch would fail it again on every replay, stopping the stream).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa

from curator.batch import RawBatch, ValidBatch
from curator.fields import canonical_record, given_id
from curator.records import (
    RAW_COLUMNS,
    SAMPLE_SCHEMA,
    InvalidRecord,
    Limits,
    Position,
    Rejection,
    rejection_decisions,
    rejections_table,
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_text(name: str, value: str) -> str:
    """Strings must be storable: lone surrogates (possible in JSON) cannot be written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord(f"field '{name}' is not valid Unicode text (lone surrogate characters)") from None
    return value


def storable(value: Any, limit: int | None = None) -> str:
    """Text Arrow can store, from an untrusted value (ids and reasons of rejections): lone
    surrogates, which JSON escapes can carry and UTF-8 cannot encode, become backslash escapes."""
    text = str(value)[:limit]
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _as_int_label(value: Any) -> int | None:
    if value is None:
        return None
    label = _parse_int_label(value)
    if not INT64_MIN <= label <= INT64_MAX:
        raise InvalidRecord(f"field 'label' {label} does not fit a 64-bit integer class id")
    return label


def _parse_int_label(value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidRecord(f"field 'label' must be an integer class id, got a boolean ({value!r})")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise InvalidRecord(f"field 'label' must be an integer class id, got {type(value).__name__} {value!r:.40}")


def validate_record(raw: dict[str, Any], position: Position, limits: Limits | None = None) -> dict[str, Any]:
    """Turn one raw record into a sample row, or raise InvalidRecord with the reason and its code.

    A sample needs an image (bytes or URI), a non-empty caption, or a precomputed embedding:
    something to embed. Other tools' field names and images given as text are mapped first
    (`curator.fields`). Unknown fields are kept, as JSON, in `metadata`.
    """
    limits = limits or Limits()
    if not isinstance(raw, dict):
        raise InvalidRecord(f"record must be an object with fields, got {type(raw).__name__}", "not-an-object")
    raw = canonical_record(raw)
    rid = raw.get("id")
    if rid is None or (isinstance(rid, str) and not rid.strip()):
        rid = f"{position.source}:{position.partition}:{position.offset}"
    elif not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise InvalidRecord(f"field 'id' must be a string or integer, got {type(rid).__name__}")
    rid = _check_text("id", str(rid))

    image = raw.get("image")
    if image is not None:
        if isinstance(image, memoryview):
            image = bytes(image)
        if not isinstance(image, (bytes, bytearray)):
            raise InvalidRecord(f"field 'image' must be bytes, base64 text, a path or a URI, "
                                f"got {type(image).__name__}")
        if len(image) == 0:
            raise InvalidRecord("field 'image' is empty", "image-undecodable")
        if len(image) > limits.max_image_bytes:
            raise InvalidRecord(f"image is {len(image)} bytes, over the limit of {limits.max_image_bytes}",
                                "too-large")
        image = bytes(image)
    uri = raw.get("image_uri")
    if uri is not None and (not isinstance(uri, str) or not uri.strip()):
        raise InvalidRecord("field 'image_uri' must be a non-empty string")
    if uri is not None:
        _check_text("image_uri", uri)

    text = raw.get("text")
    if text is not None:
        if not isinstance(text, str):
            raise InvalidRecord(f"field 'text' must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidRecord("field 'text' is an empty caption", "empty-caption")
        if len(text) > limits.max_text_chars:
            raise InvalidRecord(f"caption has {len(text)} characters, over the limit of {limits.max_text_chars}",
                                "too-large")
        _check_text("text", text)

    label = _as_int_label(raw.get("label"))

    emb = raw.get("embedding")
    if emb is not None:
        try:
            arr = np.asarray(emb, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"field 'embedding' is not a list of numbers ({exc})", "bad-embedding") from None
        if arr.ndim != 1 or arr.size == 0:
            raise InvalidRecord(f"field 'embedding' must be a flat, non-empty list, got shape {arr.shape}",
                                "bad-embedding")
        if limits.embedding_dim is not None and arr.size != limits.embedding_dim:
            raise InvalidRecord(f"embedding has {arr.size} values, expected {limits.embedding_dim}", "bad-embedding")
        if not np.all(np.isfinite(arr)):
            raise InvalidRecord("embedding contains NaN or infinite values", "bad-embedding")
        if float(np.dot(arr, arr)) == 0.0:
            raise InvalidRecord("embedding is all zeros", "bad-embedding")
        emb = arr.tolist()

    if image is None and uri is None and text is None and emb is None:
        raise InvalidRecord("record has nothing to embed: give 'image' (bytes, base64, a path or URI), 'image_uri' "
                            "(or 'image_path', 'url', ...), 'text' (or 'caption') or 'embedding'", "nothing-to-embed")

    meta = raw.get("metadata")
    extra = {k: v for k, v in raw.items() if k not in RAW_COLUMNS}
    if meta is not None and not isinstance(meta, (str, dict)):
        raise InvalidRecord(f"field 'metadata' must be an object or JSON text, got {type(meta).__name__}")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError:
            meta = {"metadata": meta}
    if extra:
        meta = {**(meta or {}), **extra}
    try:
        meta_text = json.dumps(meta, default=_json_default, allow_nan=False) if meta else None
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"metadata is not JSON-serialisable ({exc})") from None

    return {
        "id": rid,
        "image": image,
        "image_uri": uri,
        "text": text,
        "label": label,
        "metadata": meta_text,
        "source": position.source,
        "partition": position.partition,
        "offset": position.offset,
        "embedding": emb,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def validate_records(
    raws: list[dict[str, Any]], positions: list[Position], limits: Limits | None = None
) -> tuple[pa.Table, list[Rejection]]:
    """Validate a batch: good records become a SAMPLE_SCHEMA table, bad ones rejections."""
    rows: list[dict[str, Any]] = []
    rejects: list[Rejection] = []
    for raw, pos in zip(raws, positions, strict=True):
        try:
            rows.append(validate_record(raw, pos, limits))
        except InvalidRecord as exc:
            rid = given_id(raw)
            rejects.append(Rejection(pos, str(exc), None if rid is None else storable(rid, 200), raw_preview(raw),
                                     exc.code))
    return samples_table(rows), rejects


def samples_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def raw_preview(raw: Any, limit: int = 4096) -> bytes:
    """The record as JSON text (truncated), for the quarantine table and dead letters."""
    try:
        data = json.dumps(raw, default=_json_default)[:limit]
    except (TypeError, ValueError, RecursionError):
        data = repr(raw)[:limit]
    return data.encode("utf-8", "replace")


def _check_storable(rejects: list[Rejection]) -> None:
    """Raise if the quarantine / decision rows of these rejections cannot be built."""
    if rejects:
        rejections_table(rejects)
        rejection_decisions(rejects, "", "")


def repair_batch(batch: RawBatch, limits: Limits | None = None) -> RawBatch:
    """A copy of `batch` in which every record the core cannot even validate or record -- anything
    that makes validation raise instead of reject -- is a rejection at its position instead."""
    errors = []
    for e in batch.errors:
        rid, reason = None if e.id is None else storable(e.id), storable(e.reason)
        errors.append(e if (rid, reason) == (e.id, e.reason) else Rejection(e.position, reason, rid, e.raw, e.code))
    out = RawBatch(errors=errors, trusted=batch.trusted, embedding_dim=batch.embedding_dim)
    for rec, pos in zip(batch.records, batch.positions, strict=True):
        try:
            _check_storable(validate_records([rec], [pos], limits)[1])
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this record's fault
            rid = rec.get("id") if isinstance(rec, dict) else None
            out.errors.append(Rejection(pos, storable(f"record cannot be processed ({type(exc).__name__}: "
                                                      f"{str(exc)[:300]})"),
                                        None if rid is None else storable(rid, 200), raw_preview(rec),
                                        "unprocessable"))
            continue
        out.records.append(rec)
        out.positions.append(pos)
    return out


def validate_batch(batch: RawBatch, limits: Limits | None = None) -> ValidBatch:
    """Validate once: good records become a sample table, the rest rejections at their positions (a
    stream's messages are decoded first, here in the process that validates)."""
    batch = batch.decoded()
    try:
        samples, rejects = validate_records(batch.records, batch.positions, limits)
        rejects = list(batch.errors) + rejects
        _check_storable(rejects)
    except Exception:  # noqa: BLE001 - a record made validation raise instead of reject
        batch = repair_batch(batch, limits)
        samples, rejects = validate_records(batch.records, batch.positions, limits)
        rejects = list(batch.errors) + rejects
    return ValidBatch(samples, rejects, batch.positions + [e.position for e in batch.errors], len(batch),
                      batch.trusted, batch.embedding_dim)
