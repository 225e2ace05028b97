"""File sources: Parquet, JSONL, image folders and WebDataset tars, read as a resumable stream.

A position names a file by what it is, not by where it sits in a listing, so a re-run on the same
run directory decides exactly the items it has not decided, also after files were added, removed,
renamed or appended to:

- ``source``    the file's path as given (a file found inside a given folder: ``folder/relative``;
                an image in an image folder: ``folder/relative`` of the image itself),
- ``partition`` the file's identity tag (`IDENTITY_BIT` set): a hash of its first record for data
                files (the first JSONL line, the first tar header, the first Parquet row), so
                appending rows keeps it; a hash of size and modification time for an image,
- ``offset``    the row (Parquet), line (JSONL, 0-based, blank lines count) or sample (tar) within
                the file; 0 for an image.

On `seek`, a file whose path and tag are in the positions resumes at its next offset; a path whose
tag changed was rewritten and is read from its start (counted and logged); a new path carrying the
tag of a path that disappeared was renamed and resumes where the old path stopped. Files are listed
in the given order, folders expanded in sorted order; a path with ``*``, ``?`` or ``[`` is a glob.

The listing, identity tags and resume plan are `connectors.file_units`; the per-format readers
`connectors.file_readers`. Nothing here trusts the input: unparseable lines, unreadable or corrupt files become
``Rejection``\\ s in ``RawBatch.errors`` (with the reason and position), never exceptions, so one bad
file cannot stop a run. Only mistakes in the *call* (a missing path, an unknown extension) raise.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.file_readers import Item, UnitReader
from connectors.file_units import (
    FORMATS,
    IDENTITY_BIT,
    SUPPORTED,
    FileSourceError,
    FileUnit,
    ResumeReport,
    expand,
    identity_tag,
    plan,
)
from curator.batch import Positions, RawBatch, advance
from curator.records import Rejection

log = logging.getLogger("curator")


class FileSource:
    """Parquet / JSONL / image-folder / WebDataset-tar files as one resumable stream of raw records.

    Image-folder labels: the parent folder's name when every class folder name is an integer;
    otherwise the index of the name among the sorted class names (torchvision ImageFolder's
    convention), with the name kept in ``metadata.class_name``. Images directly in the root have no
    label. A sidecar ``NAME.txt`` (or ``NAME.jpg.txt``) next to an image becomes its caption.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        format: str = "auto",  # noqa: A002 - matches the config field
        max_record_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = list(paths)
        if not paths:
            raise FileSourceError("no input paths given")
        self.format = format
        self.reader = UnitReader(max_record_bytes)
        self.units = expand(paths, format)
        self._start: Positions = {}
        self._yielded: Positions = {}
        self._ended = False
        self.resume = ResumeReport()

    @property
    def sources(self) -> list[str]:
        return [u.source for u in self.units]

    def total(self) -> int | None:
        """Records left to read after the last `seek` when cheap to know (Parquet metadata, image
        counts), else None."""
        n = 0
        for u in self.units:
            k = self._length(u)
            if k is None:
                return None
            n += k if u.kind == "images" else max(0, k - u.first)
        return n

    # -- resume state (connectors.base.Source)

    def seek(self, positions: Positions) -> None:
        """Resume from these positions: only what they do not cover is yielded (see the module doc)."""
        self._start = {s: dict(parts) for s, parts in (positions or {}).items()}
        self._yielded = {s: dict(parts) for s, parts in self._start.items()}
        self._ended = False
        self.resume = plan(self.units, self._start)
        if self._start and (self.resume.renamed or self.resume.changed or self.resume.new):
            log.info("%s", self.resume.line())
        if self.resume.changed:
            log.warning("%d input file(s) changed since their items were decided (a new first record, size or "
                        "time): their items are decided again", self.resume.changed)

    def snapshot(self) -> Positions:
        return {s: dict(parts) for s, parts in self._yielded.items()}

    def caught_up(self) -> bool:
        """Files have an end: true once `batches` has yielded everything."""
        return self._ended

    def batches(self, batch_size: int, start: Positions | None = None) -> Iterator[RawBatch]:
        """Raw records in order, `batch_size` items (records + errors) per batch; batches may span files."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if start is not None:
            self.seek(start)
        items = (x for unit in self.units for x in self.reader.read(unit, unit.first if unit.kind != "images" else 0))
        for batch in _in_batches(items, batch_size):
            yield self._handed_out(batch)
        self._ended = True

    # -- parallel reading (Ray Data): ranges of one unit, each read on its own

    def ranges(self, start: Positions | None, rows_per_range: int) -> list[tuple[int, int, int | None]]:
        """What is left to read after `start` (planned as `seek` does, without moving this source's
        positions; the last `seek` when None), as (unit index, first, count)
        ranges in stream order; `first` is a row for data files and an index into what is left for an
        image folder; count None = to the unit's end. Units whose length is cheap to know (Parquet
        metadata, image folders) are cut every `rows_per_range` items, the others are one range."""
        if start is not None:
            plan(self.units, {s: dict(parts) for s, parts in start.items()})
        out: list[tuple[int, int, int | None]] = []
        for i, u in enumerate(self.units):
            first, n = (0, len(u.remaining())) if u.kind == "images" else (u.first, self._length(u))
            if n is None:
                out.append((i, first, None))
                continue
            out += [(i, a, min(rows_per_range, n - a)) for a in range(first, n, max(1, rows_per_range))]
        return out

    def read_range(self, unit: int, first: int, count: int | None, batch_size: int) -> Iterator[RawBatch]:
        """The items of one range (see `ranges`), exactly as `batches` reads them, in batches of
        `batch_size` that do not cross the range's ends. Does not move this source's positions."""
        items: Iterator[Item] = self.reader.read(self.units[unit], first)
        if count is not None:
            items = itertools.islice(items, count)  # counted ranges yield one item per row or image
        yield from _in_batches(items, batch_size)

    def only(self, unit: int) -> FileSource:
        """A source of just one of this source's units (same index in `ranges`: 0), cheap to pickle."""
        one = copy.copy(self)
        one.units, one._start, one._yielded, one._ended = [self.units[unit]], {}, {}, False
        return one

    @staticmethod
    def _length(u: FileUnit) -> int | None:
        if u.kind == "images":
            return len(u.remaining())
        if u.kind == "parquet":
            try:
                return pq.ParquetFile(u.path).metadata.num_rows
            except (OSError, pa.ArrowException):
                return None
        return None

    def _handed_out(self, batch: RawBatch) -> RawBatch:
        advance(self._yielded, batch.positions + [e.position for e in batch.errors])
        return batch


def _in_batches(items: Iterable[Item], batch_size: int) -> Iterator[RawBatch]:
    """Records and rejections in read order, `batch_size` of them (together) per batch."""
    batch = RawBatch()
    for item, pos in items:
        if isinstance(item, Rejection):
            batch.errors.append(item)
        else:
            batch.records.append(item)
            batch.positions.append(pos)
        if len(batch) >= batch_size:
            yield batch
            batch = RawBatch()
    if len(batch):
        yield batch


def class_names(source: FileSource) -> dict[str, list[str]]:
    """For each image folder with named (non-integer) classes, the names in label order."""
    out: dict[str, list[str]] = {}
    for u in source.units:
        if u.kind != "images":
            continue
        names = sorted({rel.rpartition("/")[0].rpartition("/")[2] for rel in u.files} - {""})
        if names and not all(n.lstrip("-").isdigit() for n in names):
            out[u.source] = names
    return out


__all__ = [
    "FORMATS",
    "IDENTITY_BIT",
    "SUPPORTED",
    "FileSource",
    "FileSourceError",
    "class_names",
    "identity_tag",
]
