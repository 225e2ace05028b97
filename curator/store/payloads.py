"""Items of a run read again from its own input files, by position: the payloads it did not store.

A kept item's image is in the curated set unless ``store.store_images`` is off; a dropped item
keeps only its decision record. Both carry their position: ``source``, the file the item came
from (a Parquet, JSONL or WebDataset tar file, or the image file itself), and ``offset``, its
row, line or sample in that file (0 for an image file). While the inputs are on disk that is
enough to read the item again, for the report's thumbnails and for `curator export`.

Only files the run's config.toml names as inputs (or files inside folders it names, or matching
its globs) are opened: a decision record cannot make this read an arbitrary path. A Kafka run
has nothing to read back. A JSONL or tar file is read forward from where the last request left
it (the last few files stay open), so positions asked for in stream order -- or in (source,
offset) order -- cost one pass over each file; Parquet rows are read by row group.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import tomllib

from curator.fields import ALIASES, IMAGE_FIELDS, canonical_record
from curator.formats import FORMATS, WDS_FIELDS, kind_of_file, wds_key

#: A payload: the item's image bytes and caption, each None when the input has none.
Payload = dict[str, Any]
#: What one image, line or tar member may weigh before it is not read back.
MAX_ITEM_BYTES = 64 * 1024 * 1024
#: Files a reader keeps open (read forward, or a Parquet file's current row group).
OPEN_FILES = 8
_TEXT_COLUMNS = ("text", *ALIASES["text"])


@dataclass
class RunInputs:
    """The inputs a run's config.toml names: paths (files or folders), glob patterns, the format."""

    paths: list[Path] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    format: str = "auto"

    @classmethod
    def of(cls, run_dir: str | Path) -> RunInputs:
        try:
            src = tomllib.loads((Path(run_dir) / "config.toml").read_text()).get("source", {})
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            return cls()
        given = [x for x in (*src.get("paths", []), *src.get("bootstrap", [])) if isinstance(x, str) and x]
        fmt = src.get("format", "auto")
        return cls([Path(x).resolve() for x in given if not glob.has_magic(x)],
                   [os.path.abspath(x) for x in given if glob.has_magic(x)], fmt if fmt in FORMATS else "auto")

    def resolve(self, source: Any) -> Path | None:
        """The file a position's `source` names, if it is one of these inputs and still a file."""
        if not isinstance(source, str) or not source:
            return None
        try:
            path = Path(source).resolve()
        except (OSError, ValueError):
            return None
        inside = any(path == p or p in path.parents for p in self.paths)
        if not inside and not any(fnmatch.fnmatchcase(str(path), pat) for pat in self.patterns):
            return None
        return path if path.is_file() else None

    def kind(self, path: Path) -> str | None:
        kind = kind_of_file(path.name)
        return kind if kind is not None or self.format == "auto" else self.format


class SourceReader:
    """Reads items back by (source, offset) from a run's input files; see the module docstring."""

    def __init__(self, run_dir: str | Path) -> None:
        self.inputs = RunInputs.of(run_dir)
        self._open: dict[Path, _Forward | _ParquetFile] = {}  # in the order last used

    def get(self, source: Any, offset: Any) -> Payload | None:
        """{"image": bytes | None, "text": str | None} of the item at this position, or None when it
        cannot be read (not an input of the run, gone, changed, damaged, or over MAX_ITEM_BYTES)."""
        path = self.inputs.resolve(source)
        if path is None or not isinstance(offset, int) or offset < 0:
            return None
        kind = self.inputs.kind(path)
        try:
            if kind == "images":
                if offset != 0 or path.stat().st_size > MAX_ITEM_BYTES:
                    return None
                return {"image": path.read_bytes(), "text": None}
            if kind not in ("parquet", "jsonl", "webdataset"):
                return None
            f = self._open.pop(path, None)
            if f is None or (isinstance(f, _Forward) and offset < f.at):
                f = _ParquetFile(path) if kind == "parquet" else _Forward(path, kind)
            self._open[path] = f
            while len(self._open) > OPEN_FILES:
                del self._open[next(iter(self._open))]
            row = f.row(offset)
            if isinstance(row, bytes):
                row = json.loads(row)
            return _payload(row, path.parent) if isinstance(row, dict) else None
        except Exception:  # noqa: BLE001 - an input changed or damaged since the run only costs this payload
            self._open.pop(path, None)
            return None


def read_payloads(run_dir: str | Path, positions: Iterable[tuple[Any, Any]]) -> dict[tuple[str, int], Payload]:
    """{(source, offset): payload} for the positions that can be read back (see `SourceReader.get`)."""
    reader = SourceReader(run_dir)
    wanted = sorted({(s, o) for s, o in positions if isinstance(s, str) and isinstance(o, int)})
    out = {}
    for source, offset in wanted:
        got = reader.get(source, offset)
        if got is not None:
            out[(source, offset)] = got
    return out


def _payload(raw: dict[str, Any], base_dir: Path) -> Payload:
    """The image bytes and caption of a raw record, whatever its fields are called (`curator.fields`)."""
    try:
        rec = canonical_record(raw, base_dir)
    except ValueError:
        rec = {}
    image, text = rec.get("image"), rec.get("text")
    if isinstance(image, memoryview):
        image = image.tobytes()
    return {"image": image if isinstance(image, (bytes, bytearray)) else None,
            "text": text if isinstance(text, str) else None}


class _ParquetFile:
    """Rows of one Parquet file by index, one row group in memory at a time, payload columns only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = pq.ParquetFile(path)
        names = set(self.file.schema_arrow.names)
        self.columns = [c for c in (*IMAGE_FIELDS, *_TEXT_COLUMNS) if c in names]
        self.starts: list[int] = []
        total = 0
        for g in range(self.file.metadata.num_row_groups):
            self.starts.append(total)
            total += self.file.metadata.row_group(g).num_rows
        self.rows = total
        self._group: tuple[int, pa.Table] | None = None

    def row(self, offset: int) -> dict[str, Any] | None:
        if offset >= self.rows or not self.columns:
            return None
        g = max(i for i, s in enumerate(self.starts) if s <= offset)
        if self._group is None or self._group[0] != g:
            self._group = (g, self.file.read_row_group(g, columns=self.columns))
        return self._group[1].slice(offset - self.starts[g], 1).to_pylist()[0]


class _Forward:
    """A JSONL or tar file read forward: `row(offset)` returns the record there, skipping what lies before."""

    def __init__(self, path: Path, kind: str) -> None:
        self.records = _lines(path) if kind == "jsonl" else _samples(path)
        self.at = 0  # the next offset this reader can return

    def row(self, offset: int) -> Any:
        for at, rec in self.records:
            self.at = at + 1
            if at == offset:
                return rec
            if at > offset:
                return None
        return None


def _lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, the line) of a JSONL file, counted as the file source counts them (from 0,
    blank lines included); a blank or oversized line as None."""
    with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as f:
        for i, line in enumerate(f):
            yield i, line if line.strip() and len(line) <= MAX_ITEM_BYTES else None


def _samples(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(sample index, {field: value}) of a WebDataset tar: consecutive members sharing a key are one
    sample, counted as the file source counts them; images as bytes, captions as text."""
    index, key = -1, None
    sample: dict[str, Any] = {}
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            named = wds_key(member.name) if member.isfile() else None
            if named is None:
                continue
            if named[0] != key:
                if key is not None:
                    yield index, sample
                index, key, sample = index + 1, named[0], {}
            target = WDS_FIELDS.get(named[1])
            if target in ("image", "text") and member.size <= MAX_ITEM_BYTES:
                data = tf.extractfile(member)
                raw = data.read() if data is not None else b""
                sample[target] = raw if target == "image" else raw.decode("utf-8", "replace")
    if key is not None:
        yield index, sample
