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

Nothing here trusts the input: unparseable lines, unreadable or corrupt files become
``Rejection``\\ s in ``RawBatch.errors`` (with the reason and position), never exceptions, so one bad
file cannot stop a run. Only mistakes in the *call* (a missing path, an unknown extension) raise.
"""

from __future__ import annotations

import bz2
import copy
import glob
import gzip
import hashlib
import itertools
import json
import logging
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

log = logging.getLogger("curator")

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


#: Set in every identity tag, so that a position keyed by listing index (curator before identity
#: tags: small numbers) can never be taken for one.
IDENTITY_BIT = 1 << 30
_HEAD_BYTES = 64 * 1024  # what a data file's tag hashes at most of its first record


def identity_tag(data: bytes) -> int:
    """A file's identity tag from bytes that do not change while it grows (its first record)."""
    return IDENTITY_BIT | (int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big") & (IDENTITY_BIT - 1))


def _image_tag(st: os.stat_result) -> int:
    return identity_tag(f"{st.st_size}:{st.st_mtime_ns}".encode())


@dataclass
class _Unit:
    """One data file, or an image folder with its sorted files (each image is its own position).

    `first` (data files) and `todo` (images: indices into `files`) say what is left to read after
    the last `seek`."""

    source: str
    kind: str  # parquet | jsonl | images | webdataset
    path: Path
    files: list[str] = field(default_factory=list)  # images: paths relative to `path`, posix, sorted
    single: bool = False  # images: one image file given by itself (its key is `source`)
    tag: int = 0  # data files: identity tag (computed on first use)
    first: int = 0
    todo: list[int] | None = None  # images: None = all of `files`

    def key(self, i: int) -> str:
        """The position source of image `i`: the image's own path."""
        return self.source if self.single else os.path.join(self.source, self.files[i])

    def remaining(self) -> list[int]:
        return list(range(len(self.files))) if self.todo is None else self.todo


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

    def add(source: str, kind: str, path: Path, files: list[str] | None = None, single: bool = False) -> None:
        units.append(_Unit(source, kind, path, files or [], single))

    for given_str in _globbed(paths):
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
            add(given_str, "images", p.parent, [p.name], single=True)
        else:
            add(given_str, kind, p)
    return units


def _globbed(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """The given paths, each glob pattern (``*``, ``?``, ``[``) replaced by its sorted matches."""
    for given in paths:
        given_str = os.fspath(given)
        if os.path.exists(given_str) or not glob.has_magic(given_str):
            yield given_str
            continue
        found = sorted(glob.glob(given_str, recursive=True))
        if not found:
            raise FileSourceError(f"input pattern {given_str!r} matches no file")
        yield from found


def _data_tag(unit: _Unit) -> int:
    """A data file's identity: its first record's bytes (first line, first tar header, first row)."""
    try:
        if unit.kind == "jsonl":
            with _open_text(unit.path) as f:
                return identity_tag(f.readline(_HEAD_BYTES))
        if unit.kind == "webdataset":
            with _open_maybe_compressed(unit.path) as f:
                return identity_tag(f.read(tarfile.BLOCKSIZE))
        pf = pq.ParquetFile(unit.path)
        head = next(pf.iter_batches(batch_size=1, use_threads=False), None)
        first = b"" if head is None else repr(head.to_pylist()[0]).encode()[:_HEAD_BYTES]
        return identity_tag(pf.schema_arrow.to_string().encode() + first)
    except (OSError, EOFError, ValueError, tarfile.TarError, zlib.error, lzma.LZMAError, pa.ArrowException):
        return identity_tag(b"")  # unreadable: the reader reports it; the empty tag stays stable


@dataclass
class ResumeReport:
    """What `FileSource.seek` found against the positions it resumed from (logged once)."""

    done: int = 0  # files (images) or partly read data files already decided, left out or resumed
    renamed: int = 0  # new paths carrying the identity of a vanished one: not decided again
    changed: int = 0  # known paths rewritten since (a new identity): read from the start
    new: int = 0  # paths not seen before

    def line(self) -> str:
        return (f"resume: {self.done} files already (partly) decided, {self.new} new, {self.renamed} renamed "
                f"(not decided again), {self.changed} changed since decided (decided again from the start)")


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
        self.resume = _plan(self.units, self._start)
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
        items = (x for unit in self.units for x in self._read(unit, unit.first if unit.kind != "images" else 0))
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
            _plan(self.units, {s: dict(parts) for s, parts in start.items()})
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
        items: Iterator[Item] = self._read(self.units[unit], first)
        if count is not None:
            items = itertools.islice(items, count)  # counted ranges yield one item per row or image
        yield from _in_batches(items, batch_size)

    def only(self, unit: int) -> FileSource:
        """A source of just one of this source's units (same index in `ranges`: 0), cheap to pickle."""
        one = copy.copy(self)
        one.units, one._start, one._yielded, one._ended = [self.units[unit]], {}, {}, False
        return one

    @staticmethod
    def _length(u: _Unit) -> int | None:
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

    # -- readers: each yields (record | Rejection, position) from offset `first` on

    def _read(self, unit: _Unit, first: int, batch_size: int = 256) -> Iterator[Item]:
        """Items of `unit` from `first` on (a row, or an index into an image folder's `remaining()`)."""
        if unit.kind != "images" and not unit.tag:
            unit.tag = _data_tag(unit)
        reader = {
            "parquet": self._read_parquet,
            "jsonl": self._read_jsonl,
            "images": self._read_images,
            "webdataset": self._read_tar,
        }[unit.kind]
        return reader(unit, first, batch_size)

    def _reject(self, unit: _Unit, offset: int, reason: str, rid: str | None = None, raw: bytes | None = None,
                pos: Position | None = None) -> Item:
        pos = pos or Position(unit.source, unit.tag, offset)
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
                    yield rec, Position(unit.source, unit.tag, offset)
                    offset += 1
        except (OSError, pa.ArrowException) as exc:
            yield self._reject(unit, offset, f"Parquet file is corrupt from row {offset} on: {exc}")

    def _read_jsonl(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        limit = self.max_record_bytes
        try:
            f = _open_text(unit.path)
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
                    yield rec, Position(unit.source, unit.tag, line_no)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                yield self._reject(unit, line_no + 1, f"JSONL file is corrupt after line {line_no + 1}: {exc}")

    def _read_images(self, unit: _Unit, first: int, batch_size: int) -> Iterator[Item]:
        labels = _folder_labels(unit.files)
        for i in unit.remaining()[first:]:
            rel = unit.files[i]
            path = unit.path / rel
            pos = Position(unit.key(i), identity_tag(b""), 0)
            try:
                st = path.stat()
                pos = Position(pos.source, _image_tag(st), 0)
                if st.st_size > self.max_record_bytes:
                    yield self._reject(unit, 0, f"image is {st.st_size} bytes, over max_record_bytes", rel, pos=pos)
                    continue
                image = path.read_bytes()
            except OSError as exc:
                yield self._reject(unit, 0, f"unreadable image: {exc}", rel, pos=pos)
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
            yield rec, pos

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
            return {"id": key, **sample}, Position(unit.source, unit.tag, index)

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


def _open_text(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


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


def _plan(units: list[_Unit], positions: Positions) -> ResumeReport:
    """Set what is left to read in each unit after `positions` (see the module doc); say what was found."""
    report = ResumeReport()
    for parts in positions.values():
        if any(int(k) < IDENTITY_BIT for k in parts):
            raise FileSourceError(
                "this run directory's file positions were written by an older curator that numbered files by "
                "their place in the listing, which cannot be resumed safely: start a new run directory "
                "(--store.out), or finish this one with the curator version that began it")
    listed: dict[str, int] = {}  # every listed path -> its identity now
    for u in units:
        if u.kind != "images":
            u.tag = u.tag or _data_tag(u)
            listed[u.source] = u.tag
        elif positions:
            for i in range(len(u.files)):
                try:
                    listed[u.key(i)] = _image_tag((u.path / u.files[i]).stat())
                except OSError:
                    listed[u.key(i)] = identity_tag(b"")  # as the reader records an unreadable image
    # identities no longer at the path they were decided under: where a renamed file comes from
    moved: dict[int, list[int]] = {}
    for key, parts in positions.items():
        for tag, nxt in parts.items():
            if listed.get(key) != int(tag):
                moved.setdefault(int(tag), []).append(int(nxt))

    def resumed(key: str, tag: int) -> int:
        parts = positions.get(key)
        if parts is not None and tag in parts:
            report.done += 1
            return int(parts[tag])
        if moved.get(tag):
            report.renamed += 1
            moved[tag].sort()
            return moved[tag].pop()  # the furthest a file of this identity was read
        if parts is not None:
            report.changed += 1
        else:
            report.new += 1
        return 0

    for u in units:
        u.first, u.todo = 0, None
        if not positions:
            continue
        if u.kind != "images":
            u.first = resumed(u.source, u.tag)
            continue
        u.todo = [i for i in range(len(u.files)) if resumed(u.key(i), listed[u.key(i)]) == 0]
    return report


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
