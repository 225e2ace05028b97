"""Arrow schemas and record types for everything curator reads and writes.

All schemas live here so that the store, the query views, the connectors and the
pipelines agree on one definition. Positions are flat columns (source, partition,
offset) so DuckDB can filter on them directly. Validation is `curator.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pyarrow as pa


class Decision(str, Enum):
    """What happened to one input item. Exactly one per item."""

    KEPT = "kept"
    RELABELLED = "relabelled"
    RECAPTIONED = "recaptioned"
    DROPPED_NOISY = "dropped-noisy"
    DROPPED_DUPLICATE = "dropped-duplicate"
    DROPPED_BY_BUDGET = "dropped-by-budget"
    DROPPED_FILTERED = "dropped-filtered"  # a configured filter's keep rule (`curator.ops`), before embedding
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
        pa.field("code", pa.string()),  # rejected input: why, as a stable code (REJECT_CODES); else null
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
        pa.field("dup_of", pa.string()),  # id of the accepted item it duplicates, when dropped as a duplicate
        pa.field("dup_rule", pa.string()),  # which rule found it a copy: hash-exact, hash-near or embedding
        pa.field("hash_dist", pa.int32()),  # bits its perceptual hash differs from its original's (0: exact)
        pa.field("content_hash", pa.int64()),  # 64-bit key of its payload (image bytes, vector or caption)
        pa.field("pixel_hash", pa.int64()),  # 64-bit key of its decoded pixels (null: decoded on a GPU)
        pa.field("phash", pa.int64()),  # its 64-bit perceptual hash (null: no image, or too flat)
        pa.field("keep_prob", pa.float32()),  # budget keep probability (1 without a budget)
        pa.field("model", pa.string()),
        pa.field("config_fingerprint", pa.string()),
        # every configured filter's score (`curator.ops`): {filter name: score}, a null score where the filter
        # does not apply (no caption, no image); the whole map null where no filter saw the item (rejected
        # input, a run without [[filters]]), as in parts written before filters existed
        pa.field("filters", pa.map_(pa.string(), pa.float64())),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        *POSITION_FIELDS,
        pa.field("id", pa.string()),
        pa.field("code", pa.string()),  # why, as a stable code (REJECT_CODES): GROUP BY code
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


#: Why an input was rejected, as a stable code (the `code` column of `quarantine` and of rejected
#: `decisions`), and what it means. The reason next to it says the details for this input; the
#: position has its own columns, so neither names a line or an offset.
REJECT_CODES: dict[str, str] = {
    "invalid-json": "a line or message that is not JSON (or not UTF-8 text)",
    "not-an-object": "JSON that is not an object with fields (an array, a string, a number, null)",
    "bad-field": "a field of the wrong type or with an unusable value (id, label, text, metadata, image_uri, ...)",
    "empty-caption": "a caption that is empty or only white space",
    "bad-base64": "an image field that is neither base64 image data, a data: URI, a path nor a URI",
    "too-large": "over a size limit: a line, message, image (bytes or pixels) or caption",
    "nothing-to-embed": "no image, caption or embedding",
    "no-image": "no image in a run compared by images (selector.space = 'image')",
    "no-text": "no caption in a run compared by captions (selector.space = 'text')",
    "image-unreadable": "the image's file or URL cannot be read (missing, not a file, an HTTP error, an "
                        "unsupported scheme)",
    "image-undecodable": "bytes that are not an intact image of a supported format",
    "bad-embedding": "a precomputed embedding that is missing, the wrong size, not finite or all zeros",
    "embed-failed": "the model gave a non-finite or zero embedding",
    "empty-message": "a Kafka message without a value (a tombstone)",
    "bad-arrow": "a Kafka message that is not a valid Arrow IPC stream",
    "unreadable-file": "an input file that cannot be opened, or is corrupt from this position on",
    "unprocessable": "a record that made processing fail unexpectedly (the reason names the error)",
    "unclassified": "rejected by a reader that gives no code",
}


@dataclass(frozen=True)
class Rejection:
    """An input that cannot be processed, and why: a reason for people and a code to group by."""

    position: Position
    reason: str
    id: str | None = None
    raw: bytes | None = None
    code: str = "unclassified"


class InvalidRecord(ValueError):
    """A record failed validation; the message is the reason recorded for it, `code` its REJECT_CODES key."""

    def __init__(self, reason: str, code: str = "bad-field") -> None:
        if code not in REJECT_CODES:
            raise ValueError(f"unknown rejection code {code!r}; add it to REJECT_CODES")
        super().__init__(reason)
        self.code = code

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickles (Ray) with its code
        return type(self), (str(self), self.code)


@dataclass(frozen=True)
class Fault:
    """Why one item of a batch cannot go on (an embedder's verdict): a REJECT_CODES key and the reason."""

    code: str
    reason: str

    @classmethod
    def of(cls, exc: InvalidRecord) -> Fault:
        return cls(exc.code, str(exc))


@dataclass
class Limits:
    """Bounds on untrusted input: what a record may weigh before we refuse to touch it."""

    max_record_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 50_000_000  # decompression-bomb guard
    max_text_chars: int = 10_000
    embedding_dim: int | None = None  # when set, precomputed embeddings must have it


def rejections_table(rejects: list[Rejection]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "source": r.position.source,
                "partition": r.position.partition,
                "offset": r.position.offset,
                "id": r.id,
                "code": r.code,
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
            "code": r.code,
            "model": model,
            "config_fingerprint": fingerprint,
        }
        for r in rejects
    ]
    return pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)


def filter_scores(samples: pa.Table) -> pa.Array | pa.ChunkedArray:
    """The decisions' `filters` column for these samples: the filter stage's scores, or nulls (no filter saw
    them)."""
    if "filters" in samples.column_names:
        return samples.column("filters")
    return pa.nulls(samples.num_rows, DECISION_SCHEMA.field("filters").type)
