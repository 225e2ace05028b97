"""Images and captions of dropped items, read back from the run's own Parquet inputs.

The curated set stores the payload of kept items only; a dropped item is known by its decision
record and its position (source, partition, offset). When the run read Parquet files that are
still on disk, the position names the file and row, so the gallery can show the dropped item
itself. Only files the run's config.toml names as inputs (or Parquet files inside folders it
names) are opened: a decision record cannot make the report read an arbitrary path. A Kafka
run has nothing to read back; its galleries show the decision record alone.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import tomllib

PARQUET_EXTS = (".parquet", ".pq")
PAYLOAD_COLUMNS = ("image", "text")


def allowed_inputs(run_dir: str | Path) -> list[Path]:
    """The input paths (files or folders) named by the run's config.toml."""
    p = Path(run_dir) / "config.toml"
    try:
        src = tomllib.loads(p.read_text()).get("source", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return []
    paths = [*src.get("paths", []), *src.get("bootstrap", [])]
    return [Path(x).resolve() for x in paths if isinstance(x, str) and x]


def _resolve(source: str, inputs: list[Path]) -> Path | None:
    """The Parquet file a decision's `source` names, if the run was configured to read it."""
    if not isinstance(source, str) or not source.lower().endswith(PARQUET_EXTS):
        return None
    try:
        path = Path(source).resolve()
    except (OSError, ValueError):
        return None
    if not any(path == i or i in path.parents for i in inputs) or not path.is_file():
        return None
    return path


def read_payloads(run_dir: str | Path, positions: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """{(source, offset): {"image": bytes | None, "text": str | None}} for the positions that can be read."""
    inputs = allowed_inputs(run_dir)
    by_file: dict[Path, list[tuple[str, int]]] = defaultdict(list)
    for source, offset in positions:
        path = _resolve(source, inputs)
        if path is not None and isinstance(offset, int) and offset >= 0:
            by_file[path].append((source, offset))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for path, wanted in by_file.items():
        try:
            out.update(_read_rows(path, wanted))
        except Exception:  # noqa: BLE001 - a changed or damaged input only costs the thumbnails
            continue
    return out


def _read_rows(path: Path, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    pf = pq.ParquetFile(path)
    cols = [c for c in PAYLOAD_COLUMNS if c in pf.schema_arrow.names]
    if not cols:
        return {}
    starts, total = [], 0
    for g in range(pf.metadata.num_row_groups):
        starts.append(total)
        total += pf.metadata.row_group(g).num_rows
    need: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for source, off in wanted:
        if off < total:
            g = max(i for i, s in enumerate(starts) if s <= off)
            need[g].append((source, off))
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for g, items in need.items():
        tbl = pf.read_row_group(g, columns=cols)
        for source, off in items:
            row = tbl.slice(off - starts[g], 1).to_pylist()[0]
            out[(source, off)] = {c: row.get(c) for c in PAYLOAD_COLUMNS}
    return out
