"""Selection from embeddings you already have: a numpy array (or an Arrow table) in, decisions out.

`InfoGrowthSelector` takes what the pipeline's stages hand it: validated sample tables (with the
stream positions `curator.records.SAMPLE_SCHEMA` names) and unit-norm `Embeddings`. For library
use, `select_embeddings` makes both from plain arrays -- ids, positions, L2 normalisation -- after
checking them, and returns the decisions table (`curator query`'s `decisions` view, same columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curator.config import SelectorConfig
from curator.embed.base import Embeddings, normalise_rows
from curator.records import DECISION_SCHEMA, SAMPLE_SCHEMA
from curator.select.selector import InfoGrowthSelector

#: The `source` of every row's position (its `offset` is the row's stream position).
SOURCE = "embeddings"


def select_embeddings(
    embeddings: np.ndarray | pa.Table,
    *,
    ids: Sequence[str] | None = None,
    labels: Sequence[int | None] | np.ndarray | None = None,
    text_embeddings: np.ndarray | None = None,
    trusted: int = 0,
    config: SelectorConfig | None = None,
    selector: InfoGrowthSelector | None = None,
    batch_size: int = 1024,
) -> pa.Table:
    """Decide, row by row in order, what to keep: one decision per row (the `decisions` columns).

    - `embeddings`: an (n, d) array, one item per row, in any scale (rows are L2-normalised), e.g.
      CLIP image features; or an Arrow table with an ``embedding`` column (lists of floats) and,
      optionally, ``id``, ``label`` and ``text_embedding`` columns in place of the arguments below.
    - `ids`: one string per row (default: the row's stream position, as text); `dup_of` names them.
    - `labels`: an integer class per row (None or negative: no label); turns on label cleaning.
    - `text_embeddings`: (n, d_t) caption embeddings of the same rows, from the same model as
      `embeddings` (CLIP's two towers) so that caption alignment means something; a row of zeros:
      no caption for that item.
    - `trusted`: the first `trusted` rows are a trusted bootstrap: accepted unjudged, and the
      evidence the "auto" thresholds are calibrated on (recommended; else the first items are).
    - `config`: the selector's settings (every threshold "auto" by default); or `selector`: one to
      go on with (its index holds what earlier calls accepted), for a stream given in parts.

    Decisions do not depend on `batch_size` (rows decided per step; it bounds memory only). The
    decisions' ``offset`` and ``seq`` are the row's stream position (the row number, counting the
    rows of earlier calls with the same `selector`). Raises ValueError naming the bad rows or
    arguments.
    """
    if config is not None and selector is not None:
        raise ValueError("give config or selector, not both (a selector has its config)")
    x, ids, labels, text_embeddings = _columns(embeddings, ids, labels, text_embeddings)
    n = len(x)
    if not 0 <= trusted <= n:
        raise ValueError(f"trusted must be between 0 and the number of rows ({n}), got {trusted}")
    sel = selector if selector is not None else InfoGrowthSelector(config)
    if trusted and sel.seq > sel.trusted_seen:
        raise ValueError("trusted rows must come before the stream: this selector has already decided "
                         f"{sel.seq - sel.trusted_seen} untrusted items")
    image, text, has_text = _vectors(x, text_embeddings)
    start = sel.seq
    samples = pa.table({
        "id": pa.array([str(start + i) for i in range(n)] if ids is None else [str(i) for i in ids], pa.string()),
        "label": _labels(labels, n),
        "source": pa.array([SOURCE] * n, pa.string()),
        "partition": pa.array(np.zeros(n, np.int32)),
        "offset": pa.array(np.arange(start, start + n, dtype=np.int64)),
    })
    samples = pa.table({f.name: samples.column(f.name) if f.name in samples.column_names
                        else pa.nulls(n, f.type) for f in SAMPLE_SCHEMA}, schema=SAMPLE_SCHEMA)
    step = max(1, int(batch_size))
    out: list[pa.Table] = []
    for lo, hi, is_trusted in ((0, trusted, True), (trusted, n, False)):
        for a in range(lo, hi, step):
            b = min(a + step, hi)
            emb = Embeddings(image[a:b], None if text is None else text[a:b], np.ones(b - a, bool),
                             has_text[a:b])
            decide = sel.bootstrap if is_trusted else sel.select
            out.append(decide(samples.slice(a, b - a), emb).decisions)
        if is_trusted and trusted:
            sel.finish_bootstrap()
    return pa.concat_tables(out) if out else DECISION_SCHEMA.empty_table()


def _columns(embeddings: np.ndarray | pa.Table, ids: Sequence[str] | None, labels: object,
             text_embeddings: np.ndarray | None) -> tuple[np.ndarray, Sequence[str] | None, object, object]:
    """The arrays, from the arguments or from an Arrow table's columns (an argument wins)."""
    if isinstance(embeddings, pa.Table):
        tbl = embeddings
        if "embedding" not in tbl.column_names:
            raise ValueError(f"the table has no 'embedding' column (columns: {', '.join(tbl.column_names)})")
        x = _list_column(tbl, "embedding")
        if ids is None and "id" in tbl.column_names:
            ids = tbl.column("id").to_pylist()
        if labels is None and "label" in tbl.column_names:
            labels = tbl.column("label").to_pylist()
        if text_embeddings is None and "text_embedding" in tbl.column_names:
            text_embeddings = _list_column(tbl, "text_embedding")
        return x, ids, labels, text_embeddings
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"embeddings must be an (n, d) array, one item per row; got shape {x.shape}")
    if ids is not None and len(ids) != len(x):
        raise ValueError(f"ids has {len(ids)} entries for {len(x)} rows")
    return x, ids, labels, text_embeddings


def _list_column(tbl: pa.Table, name: str) -> np.ndarray:
    col = tbl.column(name).combine_chunks()
    if col.null_count:
        rows = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
        raise ValueError(f"column {name!r} is null in rows {rows[:10].tolist()}")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False) if len(col) else np.zeros(0, np.int64)
    if len(lengths) and lengths.min() != lengths.max():
        raise ValueError(f"column {name!r} holds vectors of different sizes ({lengths.min()} to {lengths.max()})")
    d = int(lengths[0]) if len(lengths) else 0
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), d)


def _vectors(x: np.ndarray, t: object) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Unit rows of the embeddings (every row must have a direction) and of the captions (zeros: none)."""
    image, ok = normalise_rows(np.asarray(x, dtype=np.float64))
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise ValueError(f"{len(bad)} embedding rows are all zeros or not finite (rows {bad[:10].tolist()}); "
                         "drop them first")
    if t is None:
        return image, None, np.zeros(len(x), bool)
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 2 or len(t) != len(x):
        raise ValueError(f"text_embeddings must be ({len(x)}, d_t), one row per embedding; got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError(f"text_embeddings rows {np.flatnonzero(~np.isfinite(t).all(axis=1))[:10].tolist()} "
                         "are not finite")
    text, has = normalise_rows(t)
    return image, text if has.any() else None, has


def _labels(labels: object, n: int) -> pa.Array:
    """Integer class ids as Arrow (None or negative: no label); anything else is an error naming the row."""
    if labels is None:
        return pa.nulls(n, pa.int64())
    values = labels.tolist() if isinstance(labels, np.ndarray) else list(labels)  # type: ignore[call-overload]
    if len(values) != n:
        raise ValueError(f"labels has {len(values)} entries for {n} rows")
    out: list[int | None] = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and float(v).is_integer():
            out.append(int(v) if v >= 0 else None)
        else:
            raise ValueError(f"labels must be integer class ids (None: no label); row {i} has {v!r:.40}")
    return pa.array(out, pa.int64())
