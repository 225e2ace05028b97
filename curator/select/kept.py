"""The curated rows of a batch: what the kept items become in the `kept` table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curator.embed.base import Embeddings
from curator.records import kept_schema
from curator.select.outcome import Selection


def kept_table(samples: pa.Table, emb: Embeddings, sel: Selection, store_images: bool = True) -> pa.Table:
    """The curated rows of a batch: corrected labels and captions, with their embeddings."""
    rows = sel.kept_rows
    primary = emb.image if emb.image is not None else sel.text_emb_out
    if primary is None:
        raise ValueError("kept_table needs at least one embedding modality")
    has_text_col = emb.image is not None and sel.text_emb_out is not None
    schema = kept_schema(primary.shape[1], sel.text_emb_out.shape[1] if has_text_col else None)
    sub = samples.take(pa.array(rows, pa.int64()))
    dec = sel.decisions.take(pa.array(rows, pa.int64()))
    texts = sub.column("text").to_pylist()
    texts = [sel.text_out[j] or t for j, t in zip(rows, texts, strict=True)]
    lab_out = sel.label_out[rows]
    d = primary.shape[1]

    def fixed(x: np.ndarray, dim: int) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(x, np.float32).ravel(), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, dim)

    cols: dict[str, Any] = {
        "id": sub.column("id"),
        "image": sub.column("image") if store_images else pa.nulls(len(rows), pa.binary()),
        "image_uri": sub.column("image_uri"),
        "text": pa.array(texts, pa.string()),
        "label": pa.array([None if v < 0 else int(v) for v in lab_out], pa.int64()),
        "label_original": sub.column("label"),
        "metadata": sub.column("metadata"),
        "source": sub.column("source"),
        "partition": sub.column("partition"),
        "offset": sub.column("offset"),
        "seq": dec.column("seq"),
        "decision": dec.column("decision"),
        "gain": dec.column("gain"),
        "gain_norm": dec.column("gain_norm"),
        "embedding": fixed(primary[rows].reshape(len(rows), d), d),
    }
    if has_text_col:
        cols["text_embedding"] = fixed(sel.text_emb_out[rows], sel.text_emb_out.shape[1])
    return pa.table(cols, schema=schema)
