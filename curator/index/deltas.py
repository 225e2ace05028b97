"""Incremental snapshots of an index: a base (the whole index) and deltas (the rows added since).

Writing the whole index at every commit costs what the index weighs (2 KB per 512-d item: 2 GB at
1M items), so commits would slow down as the index grows. But items are only ever added, and adding
the same vectors to a copy of a flat or IVF index read back from disk gives that index byte for byte
(FAISS assigns and encodes each vector on its own). So a snapshot is a chain: a base written by
`VectorIndex.save`, then one delta per later snapshot holding the rows added since the link before
it -- their exact vectors, ids, vote labels and stream positions, one Parquet file. Restoring loads
the base and adds the deltas in order.

An index keeps a `Journal` of the exact vectors added since its last snapshot (one that stores
codes cannot give them back). The journal is dropped -- and the next snapshot is a new base -- when
the index is rebuilt (its serving index is a new one), when its kind's adds cannot be replayed (HNSW
draws random levels and links in racing threads), and when the rows since the base would weigh more
than `COMPACT_FRACTION` of the base as deltas: the bases then come at geometric sizes, so what the
commits write per item stays constant on average, and a restore replays a bounded share of the index.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT = "curator-index-delta/1"
FILE = "delta.parquet"
#: a new base once the deltas since the last one would weigh more than this share of it
COMPACT_FRACTION = 0.5


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Journal:
    """The exact vectors an index added since its last snapshot, in add order."""

    base: str  # the chain's base folder: a delta continues that chain only
    start: int  # the row the last snapshot ended at: the first one held here
    base_rows: int  # rows in the chain's base
    base_bytes: float  # what the base weighs on disk (about)
    chunks: list[np.ndarray] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(len(c) for c in self.chunks)

    def add(self, x: np.ndarray) -> None:
        self.chunks.append(np.array(x, np.float32, copy=True))  # the caller's array may change after

    def outgrown(self, n: int, row_bytes: float) -> bool:
        """The rows since the base (up to `n`), as deltas of `row_bytes` each, would pass the share of
        the base a chain may carry: the next snapshot is a new base."""
        return (n - self.base_rows) * row_bytes > COMPACT_FRACTION * self.base_bytes

    def vectors(self, dim: int) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, dim), np.float32)

    def written(self) -> None:
        """The vectors held are in a delta now (durable): the next one starts after them."""
        self.start += self.rows
        self.chunks = []


@dataclass
class Delta:
    """Rows `start` to `start + len(ids)` of an index, and the state of its rebuild after them."""

    start: int
    vectors: np.ndarray
    ids: pa.Array
    labels: np.ndarray
    seqs: np.ndarray
    rebuild: dict[str, Any] | None

    def __len__(self) -> int:
        return len(self.ids)


def row_bytes(dim: int) -> float:
    """What a delta stores per row: the exact vector, the label and position, an id (about)."""
    return 4.0 * dim + 16 + 16


def write(directory: Path, d: Delta) -> None:
    """`directory/delta.parquet`, fsynced with its folder (the manifest names it only afterwards)."""
    directory.mkdir(parents=True, exist_ok=True)
    dim = d.vectors.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(d.vectors.ravel(), pa.float32()), dim)
    meta = {"format": FORMAT, "start": d.start, "dim": dim, "rebuild": d.rebuild}
    table = pa.table({"vector": vectors, "id": d.ids, "label": pa.array(d.labels, pa.int64()),
                      "seq": pa.array(d.seqs, pa.int64())}).replace_schema_metadata({"curator": json.dumps(meta)})
    path = directory / FILE
    # float vectors barely compress; no dictionary and no statistics write it ~3x faster
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)
    fsync_path(path)
    fsync_path(directory)


def read(directory: Path) -> Delta:
    path = Path(directory) / FILE
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"curator", b"{}"))
    if meta.get("format") != FORMAT:
        raise RuntimeError(f"index delta {path} has format {meta.get('format')!r}, expected {FORMAT!r}; "
                           "it was written by another curator version: start a new run directory")
    dim = int(meta["dim"])
    flat = table.column("vector").combine_chunks().flatten().to_numpy()
    return Delta(int(meta["start"]), np.ascontiguousarray(flat, np.float32).reshape(-1, dim),
                 table.column("id").combine_chunks().cast(pa.string()),
                 table.column("label").to_numpy().astype(np.int64), table.column("seq").to_numpy().astype(np.int64),
                 meta.get("rebuild"))
