"""File sources: Parquet, JSONL, image folders and WebDataset tars, read as a resumable stream.

Positions make a bounded run over files resumable exactly like a Kafka topic:

- ``source``    the file path as given (a file found inside a given folder: ``folder/relative``;
                an image folder: the folder path),
- ``partition`` the index of that file (or image folder) in the expanded list -- the given paths
                in the given order, each folder expanded to its files in sorted order,
- ``offset``    the row (Parquet), line (JSONL, 0-based, blank lines count), image (index in the
                folder's sorted file list) or sample (tar) within it.

``batches(batch_size, start)`` skips everything before ``start[source][partition]``. Resuming
assumes the files did not change in between (an image added to a folder shifts the offsets).

Nothing here trusts the input: unparseable lines, unreadable or corrupt files become
``Rejection``\\ s in ``RawBatch.errors`` (with the reason and position), never exceptions, so one bad
file cannot stop a run. Only mistakes in the *call* (a missing path, an unknown extension) raise.
"""

from __future__ import annotations

import bz2
import copy
import gzip
import itertools
import json
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.json_records import json_id, record_from_json
from curator.batch import Positions, RawBatch, advance
from curator.records import Position, Rejection

FORMATS = ("auto", "parquet", "jsonl", "images", "webdataset")
PARQUET_EXTS = (".parquet", ".pq")
JSONL_EXTS = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
TAR_EXTS = (".tar", ".tar.gz", ".tgz")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: WebDataset member extensions (after the key's first dot) and the field each one fills.
WDS_FIELDS = {
    **{ext.lstrip("."): "image" for ext in IMAGE_EXTS},
    "txt": "text",
    "caption": "text",
    "cls": "label",
    "json": "metadata",
}
_FORMAT_EXTS = {"parquet": PARQUET_EXTS, "jsonl": JSONL_EXTS, "webdataset": TAR_EXTS}
_PREVIEW_BYTES = 4096

SUPPORTED = (
    "Parquet (.parquet), JSONL (.jsonl, .ndjson, optionally .gz), WebDataset tars (.tar, .tar.gz), "
    f"and image folders ({', '.join(IMAGE_EXTS)})"
)


class FileSourceError(ValueError):
    """The paths given to a FileSource cannot be read as asked; the message says which and why."""


# --------------------------------------------------------------------------- units


@dataclass
class _Unit:
    """One partition of a file source: a data file, or an image folder with its sorted files."""

    source: str
    partition: int
    kind: str  # parquet | jsonl | images | webdataset
    path: Path
    files: list[str] = field(default_factory=list)  # images: paths relative to `path`, posix, sorted


def _has_ext(name: str, exts: Iterable[str]) -> bool:
    low = name.lower()
    return any(low.endswith(e) for e in exts)


def _kind_of_file(path: Path) -> str | None:
    for kind, exts in _FORMAT_EXTS.items():
        if _has_ext(path.name, exts):
            return kind
    if _has_ext(path.name, IMAGE_EXTS):
        return "images"
    return None


def _walk(folder: Path) -> list[str]:
    """All regular files under `folder`, as sorted posix relative paths (hidden entries skipped)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            if name.startswith("."):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            out.append(rel.replace(os.sep, "/"))
    return sorted(out)


def _expand(paths: Iterable[str | os.PathLike[str]], fmt: str) -> list[_Unit]:
    if fmt not in FORMATS:
        raise FileSourceError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    units: list[_Unit] = []

    def add(source: str, kind: str, path: Path, files: list[str] | None = None) -> None:
        units.append(_Unit(source, len(units), kind, path, files or []))

    for given in paths:
        given_str = os.fspath(given)
        p = Path(given_str)
        if not p.exists():
            raise FileSourceError(f"input path {given_str!r} does not exist")
        if p.is_dir():
            rels = _walk(p)
            if fmt == "images":
                images = [r for r in rels if _has_ext(r, IMAGE_EXTS)]
                if not images:
                    raise FileSourceError(f"image folder {given_str!r} holds no images ({', '.join(IMAGE_EXTS)})")
                add(given_str, "images", p, images)
                continue
            data = [
                (r, _kind_of_file(Path(r)) if fmt == "auto" else fmt)
                for r in rels
                if _has_ext(r, _FORMAT_EXTS[fmt] if fmt != "auto" else (*PARQUET_EXTS, *JSONL_EXTS, *TAR_EXTS))
            ]
            if data:
                for rel, kind in data:
                    add(os.path.join(given_str, rel), str(kind), p / rel)
                continue
            images = [r for r in rels if _has_ext(r, IMAGE_EXTS)]
            if fmt == "auto" and images:
                add(given_str, "images", p, images)
                continue
            raise FileSourceError(f"folder {given_str!r} holds no readable files; supported: {SUPPORTED}")
        kind = _kind_of_file(p) if fmt == "auto" else fmt
        if kind is None:
            raise FileSourceError(
                f"cannot read {given_str!r}: unknown extension {''.join(p.suffixes) or '(none)'!r}; "
                f"supported: {SUPPORTED}; or pass format= to force one"
            )
        if kind == "images":  # a single image file: a one-image folder named by the file
            add(given_str, "images", p.parent, [p.name])
        else:
            add(given_str, kind, p)
    return units


# --------------------------------------------------------------------------- the source


Item = tuple[dict[str, Any] | Rejection, Position]


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
        self.max_record_bytes = max_record_bytes
        self.units = _expand(paths, format)
        self._start: Positions = {}
        self._yielded: Positions = {}
        self._ended = False

    @property
    def sources(self) -> list[str]:
        return [u.source for u in self.units]

    def total(self) -> int | None:
        """Records in all inputs when cheap to know (Parquet metadata, image counts), else None."""
        n = 0
        for u in self.units:
            k = self._length(u)
            if k is None:
                return None
            n += k
        return n

    # -- resume state (connectors.base.Source)

    def seek(self, positions: Positions) -> None:
        """Resume from these positions (the next offset per file): nothing before them is yielded."""
        self._start = {s: dict(parts) for s, parts in (positions or {}).items()}
        self._yielded = {s: dict(parts) for s, parts in self._start.items()}
        self._ended = False

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
        items = (x for unit in self.units for x in self._read(unit, _start_offset(self._start, unit), batch_size))
        for batch in _in_batches(items, batch_size):
            yield self._handed_out(batch)
        self._ended = True

    # -- parallel reading (Ray Data): ranges of one unit, each read on its own

    def ranges(self, start: Positions | None, rows_per_range: int) -> list[tuple[int, int, int | None]]:
        """What is left to read after `start`, as (unit index, first offset, count) ranges in stream
        order; count None = to the unit's end. Units whose length is cheap to know (Parquet
        metadata, image folders) are cut every `rows_per_range` items, the others are one range."""
        out: list[tuple[int, int, int | None]] = []
        for i, u in enumerate(self.units):
            first, n = _start_offset(start, u), self._length(u)
            if n is None:
                out.append((i, first, None))
                continue
            out += [(i, a, min(rows_per_range, n - a)) for a in range(first, n, max(1, rows_per_range))]
        return out

    def read_range(self, unit: int, first: int, count: int | None, batch_size: int) -> Iterator[RawBatch]:
        """The items of one range (see `ranges`), exactly as `batches` reads them, in batches of
        `batch_size` that do not cross the range's ends. Does not move this source's positions."""
        items = self._read(self.units[unit], first, batch_size)
        if count is not None:
            items = itertools.takewhile(lambda item_pos: item_pos[1].offset < first + count, items)
        yield from _in_batches(items, batch_size)

    def only(self, unit: int) -> FileSource:
        """A source of just one of this source's units (same index in `ranges`: 0), cheap to pickle."""
        one = copy.copy(self)
        one.units, one._start, one._yielded, one._ended = [self.units[unit]], {}, {}, False
        return one

    @staticmethod
    def _length(u: _Unit) -> int | None:
        if u.kind == "images":
            return len(u.files)
        if u.kind == "parquet":
            try:
                return pq.ParquetFile(u.path).metadata.num_rows
            except (OSError, pa.ArrowException):
                return None
        return None

    def _handed_out(self, batch: RawBatch) -> RawBatch:
        advance(self._yielded, batch.positions + [e.position for e in batch.errors])
        return batch

    # -- readers: each yields (record | Rejection, position) from offset `first` on

    def _read(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        reader = {
            "parquet": self._read_parquet,
            "jsonl": self._read_jsonl,
            "images": self._read_images,
            "webdataset": self._read_tar,
        }[unit.kind]
        return reader(unit, first, batch_size)

    def _reject(self, unit: _Unit, offset: int, reason: str, rid: str | None = None, raw: bytes | None = None) -> Item:
        pos = Position(unit.source, unit.partition, offset)
        return Rejection(pos, reason, rid, None if raw is None else raw[:_PREVIEW_BYTES]), pos

    def _read_parquet(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        """Record batches of the row groups from `first` on: never the whole file in memory."""
        try:
            pf = pq.ParquetFile(unit.path)
            meta = pf.metadata
        except (OSError, pa.ArrowException) as exc:
            if first == 0:  # reported once, at offset 0; a resumed run has already recorded it
                yield self._reject(unit, 0, f"unreadable Parquet file: {exc}")
            return
        row = row_at = skip = 0
        groups: list[int] = []
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if row + n > first:
                if not groups:
                    skip = max(0, first - row)
                    row_at = row
                groups.append(g)
            row += n
        if not groups:
            return
        offset = row_at
        try:
            for rb in pf.iter_batches(batch_size=batch_size, row_groups=groups, use_threads=False):
                if skip:
                    cut = min(skip, rb.num_rows)
                    rb = rb.slice(cut)
                    skip -= cut
                    offset += cut
                for rec in rb.to_pylist():
                    yield rec, Position(unit.source, unit.partition, offset)
                    offset += 1
        except (OSError, pa.ArrowException) as exc:
            yield self._reject(unit, offset, f"Parquet file is corrupt from row {offset} on: {exc}")

    def _open_text(self, path: Path) -> IO[bytes]:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115

    def _read_jsonl(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        limit = self.max_record_bytes
        try:
            f = self._open_text(unit.path)
        except OSError as exc:
            if first == 0:
                yield self._reject(unit, 0, f"unreadable JSONL file: {exc}")
            return
        line_no = -1
        with f:
            try:
                while True:
                    line = f.readline(limit + 1)
                    if not line:
                        return
                    line_no += 1
                    if len(line) > limit and not line.endswith(b"\n"):
                        while True:  # drain the rest of the oversized line without holding it
                            rest = f.readline(1 << 20)
                            if not rest or rest.endswith(b"\n"):
                                break
                        if line_no >= first:
                            yield self._reject(
                                unit, line_no, f"line is over {limit} bytes (max_record_bytes)", raw=line
                            )
                        continue
                    if line_no < first or not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except (ValueError, RecursionError) as exc:
                        yield self._reject(unit, line_no, f"invalid JSON on line {line_no + 1}: {exc}", raw=line)
                        continue
                    try:
                        rec = record_from_json(obj)
                    except ValueError as exc:
                        yield self._reject(unit, line_no, f"line {line_no + 1}: {exc}", json_id(obj), line)
                        continue
                    yield rec, Position(unit.source, unit.partition, line_no)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                yield self._reject(unit, line_no + 1, f"JSONL file is corrupt after line {line_no + 1}: {exc}")

    def _read_images(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        labels = _folder_labels(unit.files)
        for offset in range(first, len(unit.files)):
            rel = unit.files[offset]
            path = unit.path / rel
            try:
                size = path.stat().st_size
                if size > self.max_record_bytes:
                    yield self._reject(unit, offset, f"image is {size} bytes, over max_record_bytes", rel)
                    continue
                image = path.read_bytes()
            except OSError as exc:
                yield self._reject(unit, offset, f"unreadable image: {exc}", rel)
                continue
            rec: dict[str, Any] = {"id": rel, "image": image}
            label, class_name = labels.get(rel, (None, None))
            if label is not None:
                rec["label"] = label
            if class_name is not None:
                rec["metadata"] = {"class_name": class_name}
            caption = _sidecar_caption(path)
            if caption is not None:
                rec["text"] = caption
            yield rec, Position(unit.source, unit.partition, offset)

    def _read_tar(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        """Stream the tar once (no seeking, no extraction to disk), grouping consecutive members by key.

        Python's tarfile ends quietly when a tar is cut at a member boundary, so the reader checks
        the end-of-archive marker itself; a cut tar rejects its last (possibly partial) sample.
        """
        index = -1
        key: str | None = None
        sample: dict[str, Any] = {}
        problem: str | None = None

        def finish() -> Item | None:
            if key is None or index < first:
                return None
            if problem is not None:
                return self._reject(unit, index, problem, key)
            return {"id": key, **sample}, Position(unit.source, unit.partition, index)

        try:
            stream = _TailReader(_open_maybe_compressed(unit.path))
            tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - closed by the `with` below
        except (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError) as exc:
            if first == 0:
                yield self._reject(unit, 0, f"unreadable tar file: {exc}")
            return
        try:
            with stream, tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    dirname, _, base = member.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot or not stem:
                        continue  # WebDataset keys are "dir/stem"; members without an extension carry nothing
                    mkey = f"{dirname}/{stem}" if dirname else stem
                    if mkey != key:
                        done = finish()
                        if done is not None:
                            yield done
                        key, sample, problem = mkey, {}, None
                        index += 1
                    target = WDS_FIELDS.get(ext.lower())
                    if index < first or target is None or problem is not None:
                        continue  # skipped (resume), unknown extension, or already rejected
                    if member.size > self.max_record_bytes:
                        problem = f"member {member.name!r} is {member.size} bytes, over max_record_bytes"
                        continue
                    fobj = tf.extractfile(member)
                    data = fobj.read() if fobj is not None else b""
                    if target == "image":
                        sample["image"] = data
                        continue
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        problem = f"member {member.name!r} is not UTF-8 text"
                        continue
                    sample[target] = text.strip() if target == "label" else text
                if key is not None and not stream.ended_with_zero_block():
                    raise EOFError("no end-of-archive marker")
                done = finish()
                if done is not None:
                    yield done
        except (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError) as exc:
            at = max(index, 0)
            if at >= first:
                yield self._reject(unit, at, f"tar file is truncated or corrupt at sample {at}: {exc}", key)


class _TailReader:
    """A read-only file wrapper that remembers the last block read (to see how a tar stream ended)."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._tail = b""

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if data:
            self._tail = (self._tail + data)[-tarfile.BLOCKSIZE :]
        return data

    def ended_with_zero_block(self) -> bool:
        return self._tail == bytes(tarfile.BLOCKSIZE)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> _TailReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_maybe_compressed(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed by magic number (gzip, bzip2, xz); truncation raises EOFError."""
    f = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    magic = f.read(6)
    f.seek(0)
    if magic[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic[:3] == b"BZh":
        return bz2.BZ2File(f, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f, "rb")
    return f


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


def _start_offset(start: Positions | None, unit: _Unit) -> int:
    """Next offset to read for a unit. Keyed by source path; the partition index is only a tie-breaker,
    so a file still resumes correctly when other files were added to or removed from the list."""
    parts = (start or {}).get(unit.source)
    if not parts:
        return 0
    if unit.partition in parts:
        return int(parts[unit.partition])
    if len(parts) == 1:
        return int(next(iter(parts.values())))
    return 0


def _folder_labels(files: list[str]) -> dict[str, tuple[int | None, str | None]]:
    """Label per image from its parent folder: the integer itself, or the sorted-class-name index."""
    parents = {rel: rel.rpartition("/")[0].rpartition("/")[2] for rel in files}
    names = sorted({p for p in parents.values() if p})
    if not names:
        return {}
    if all(n.lstrip("-").isdigit() for n in names):
        return {rel: (int(p), None) for rel, p in parents.items() if p}
    index = {n: i for i, n in enumerate(names)}
    return {rel: (index[p], p) for rel, p in parents.items() if p}


def _sidecar_caption(image_path: Path) -> str | None:
    for cand in (image_path.with_suffix(".txt"), image_path.with_name(image_path.name + ".txt")):
        try:
            with open(cand, "rb") as f:
                data = f.read(1 << 20)
        except OSError:
            continue
        return data.decode("utf-8", "replace").strip() or None  # an empty sidecar is no caption
    return None


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
    "FileSource",
    "FileSourceError",
    "class_names",
]
