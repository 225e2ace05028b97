"""Arrow schemas for everything curator reads and writes, and validation of raw input.

All schemas live here so that the store, the query views, the connectors and the
pipelines agree on one definition. Positions are flat columns (source, partition,
offset) so DuckDB can filter on them directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pyarrow as pa


class Decision(str, Enum):
    """What happened to one input item. Exactly one per item."""

    KEPT = "kept"
    RELABELLED = "relabelled"
    RECAPTIONED = "recaptioned"
    DROPPED_NOISY = "dropped-noisy"
    DROPPED_DUPLICATE = "dropped-duplicate"
    DROPPED_BY_BUDGET = "dropped-by-budget"
    REJECTED_BAD_INPUT = "rejected-bad-input"


#: Decisions whose item is part of the curated (kept) set.
KEPT_DECISIONS = frozenset({Decision.KEPT, Decision.RELABELLED, Decision.RECAPTIONED})

POSITION_FIELDS = [
    pa.field("source", pa.string(), nullable=False),  # topic, or file path
    pa.field("partition", pa.int32(), nullable=False),  # Kafka partition, or file index in a file source
    pa.field("offset", pa.int64(), nullable=False),  # Kafka offset, or row within the file
]

#: A validated input item. `embedding` is only set for precomputed embeddings.
SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("text", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("metadata", pa.string()),  # JSON object text
        *POSITION_FIELDS,
        pa.field("embedding", pa.list_(pa.float32())),
    ]
)

#: Raw columns a source may provide; anything else is folded into metadata.
RAW_COLUMNS = ("id", "image", "image_uri", "text", "label", "metadata", "embedding")

DECISION_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        *POSITION_FIELDS,
        pa.field("seq", pa.int64()),  # position in the selector's input order (-1 for rejected input)
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("label_in", pa.int64()),
        pa.field("label_out", pa.int64()),
        pa.field("label_noisy", pa.bool_()),  # the cleaner judged the given label wrong
        pa.field("label_agreement", pa.float32()),  # similarity-weighted share of neighbours with label_in
        pa.field("align", pa.float32()),  # cos(image, text) of the given caption
        pa.field("align_out", pa.float32()),  # after a recaption
        pa.field("text_out", pa.string()),  # the new caption when recaptioned
        pa.field("gain", pa.float32()),  # mean (1 - cos) to the k nearest accepted items, averaged over modalities
        pa.field("gain_image", pa.float32()),
        pa.field("gain_text", pa.float32()),
        pa.field("gain_norm", pa.float32()),  # min(1, gain / q99(gain))
        pa.field("max_sim", pa.float32()),  # cosine to the nearest accepted item (dedup modality)
        pa.field("dup_of", pa.string()),  # id of that nearest item when dropped as a duplicate
        pa.field("keep_prob", pa.float32()),  # budget keep probability (1 without a budget)
        pa.field("model", pa.string()),
        pa.field("config_fingerprint", pa.string()),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        *POSITION_FIELDS,
        pa.field("id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("raw", pa.binary()),  # the offending record, truncated, for inspection
    ]
)


def kept_schema(dim: int, text_dim: int | None = None) -> pa.Schema:
    """Schema of the curated set: the sample with its corrected label and embeddings."""
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("text", pa.string()),
        pa.field("label", pa.int64()),  # corrected label when relabelled
        pa.field("label_original", pa.int64()),
        pa.field("metadata", pa.string()),
        *POSITION_FIELDS,
        pa.field("seq", pa.int64()),
        pa.field("decision", pa.string()),
        pa.field("gain", pa.float32()),
        pa.field("gain_norm", pa.float32()),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
    ]
    if text_dim:
        fields.append(pa.field("text_embedding", pa.list_(pa.float32(), text_dim)))
    return pa.schema(fields)


@dataclass(frozen=True)
class Position:
    """Where an item came from: (topic, partition, offset) or (file, file index, row)."""

    source: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Rejection:
    """An input that cannot be processed, and why."""

    position: Position
    reason: str
    id: str | None = None
    raw: bytes | None = None


@dataclass
class Limits:
    """Bounds on untrusted input: what a record may weigh before we refuse to touch it."""

    max_record_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # decompression-bomb guard
    max_text_chars: int = 10_000
    embedding_dim: int | None = None  # when set, precomputed embeddings must have it


class InvalidRecord(ValueError):
    """A record failed validation; the message is the reason recorded for it."""


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_text(name: str, value: str) -> str:
    """Strings must be storable: lone surrogates (possible in JSON) cannot be written as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecord(f"field '{name}' is not valid Unicode text (lone surrogate characters)") from None
    return value


def _safe_str(value: Any, limit: int = 200) -> str:
    """A printable, storable rendering of an untrusted value (for ids and reasons of rejections)."""
    return str(value)[:limit].encode("utf-8", "replace").decode("utf-8")


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
    """Turn one raw record into a sample row, or raise InvalidRecord with the reason.

    A sample needs an image (bytes or URI), a non-empty caption, or a precomputed embedding:
    something to embed. Unknown fields are kept, as JSON, in `metadata`.
    """
    limits = limits or Limits()
    if not isinstance(raw, dict):
        raise InvalidRecord(f"record must be an object with fields, got {type(raw).__name__}")
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
            raise InvalidRecord(f"field 'image' must be bytes, got {type(image).__name__}")
        if len(image) == 0:
            raise InvalidRecord("field 'image' is empty")
        if len(image) > limits.max_image_bytes:
            raise InvalidRecord(f"image is {len(image)} bytes, over the limit of {limits.max_image_bytes}")
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
            raise InvalidRecord("field 'text' is an empty caption")
        if len(text) > limits.max_text_chars:
            raise InvalidRecord(f"caption has {len(text)} characters, over the limit of {limits.max_text_chars}")
        _check_text("text", text)

    label = _as_int_label(raw.get("label"))

    emb = raw.get("embedding")
    if emb is not None:
        try:
            arr = np.asarray(emb, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidRecord(f"field 'embedding' is not a list of numbers ({exc})") from None
        if arr.ndim != 1 or arr.size == 0:
            raise InvalidRecord(f"field 'embedding' must be a flat, non-empty list, got shape {arr.shape}")
        if limits.embedding_dim is not None and arr.size != limits.embedding_dim:
            raise InvalidRecord(f"embedding has {arr.size} values, expected {limits.embedding_dim}")
        if not np.all(np.isfinite(arr)):
            raise InvalidRecord("embedding contains NaN or infinite values")
        if float(np.dot(arr, arr)) == 0.0:
            raise InvalidRecord("embedding is all zeros")
        emb = arr.tolist()

    if image is None and uri is None and text is None and emb is None:
        raise InvalidRecord("record has nothing to embed: give 'image', 'image_uri', 'text' or 'embedding'")

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
            rid = raw.get("id") if isinstance(raw, dict) else None
            rejects.append(Rejection(pos, str(exc), None if rid is None else _safe_str(rid), _raw_preview(raw)))
    return samples_table(rows), rejects


def samples_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def _raw_preview(raw: Any, limit: int = 4096) -> bytes:
    try:
        data = json.dumps(raw, default=_json_default)[:limit]
    except (TypeError, ValueError, RecursionError):
        data = repr(raw)[:limit]
    return data.encode("utf-8", "replace")


def rejections_table(rejects: list[Rejection]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "source": r.position.source,
                "partition": r.position.partition,
                "offset": r.position.offset,
                "id": r.id,
                "reason": r.reason,
                "raw": (r.raw or b"")[:4096],
            }
            for r in rejects
        ],
        schema=QUARANTINE_SCHEMA,
    )


def rejection_decisions(rejects: list[Rejection], model: str, fingerprint: str) -> pa.Table:
    """Decision records for rejected input, so every input item has exactly one decision."""
    rows = [
        {
            "id": r.id,
            "source": r.position.source,
            "partition": r.position.partition,
            "offset": r.position.offset,
            "seq": -1,
            "decision": Decision.REJECTED_BAD_INPUT.value,
            "reason": r.reason,
            "model": model,
            "config_fingerprint": fingerprint,
        }
        for r in rejects
    ]
    return pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)
