"""What a file source's inputs are: the given paths expanded to units (data files, image folders), each
file's identity tag, and the resume plan that matches positions to files by identity.

See `connectors.files` for what the positions mean. An identity tag has `IDENTITY_BIT` set; it hashes
bytes that do not change while a data file grows (its first record), or an image's size and
modification time.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq

from curator.batch import Positions
from curator.formats import (
    FORMAT_EXTS,
    FORMATS,
    IDENTITY_BIT,
    IMAGE_EXTS,
    JSONL_EXTS,
    PARQUET_EXTS,
    TAR_EXTS,
    has_ext,
    kind_of_file,
)

SUPPORTED = (
    "Parquet (.parquet), JSONL (.jsonl, .ndjson, optionally .gz), WebDataset tars (.tar, .tar.gz), "
    f"and image folders ({', '.join(IMAGE_EXTS)})"
)


class FileSourceError(ValueError):
    """The paths given to a FileSource cannot be read as asked; the message says which and why."""


_HEAD_BYTES = 64 * 1024  # what a data file's tag hashes at most of its first record


def identity_tag(data: bytes) -> int:
    """A file's identity tag from bytes that do not change while it grows (its first record)."""
    return IDENTITY_BIT | (int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "big") & (IDENTITY_BIT - 1))


def image_tag(st: os.stat_result) -> int:
    return identity_tag(f"{st.st_size}:{st.st_mtime_ns}".encode())


@dataclass
class FileUnit:
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


def walk(folder: Path) -> list[str]:
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


def expand(paths: Iterable[str | os.PathLike[str]], fmt: str) -> list[FileUnit]:
    if fmt not in FORMATS:
        raise FileSourceError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    units: list[FileUnit] = []

    def add(source: str, kind: str, path: Path, files: list[str] | None = None, single: bool = False) -> None:
        units.append(FileUnit(source, kind, path, files or [], single))

    for given_str in globbed(paths):
        p = Path(given_str)
        if not p.exists():
            raise FileSourceError(f"input path {given_str!r} does not exist")
        if p.is_dir():
            rels = walk(p)
            if fmt == "images":
                images = [r for r in rels if has_ext(r, IMAGE_EXTS)]
                if not images:
                    raise FileSourceError(f"image folder {given_str!r} holds no images ({', '.join(IMAGE_EXTS)})")
                add(given_str, "images", p, images)
                continue
            data = [
                (r, kind_of_file(r) if fmt == "auto" else fmt)
                for r in rels
                if has_ext(r, FORMAT_EXTS[fmt] if fmt != "auto" else (*PARQUET_EXTS, *JSONL_EXTS, *TAR_EXTS))
            ]
            if data:
                for rel, kind in data:
                    add(os.path.join(given_str, rel), str(kind), p / rel)
                continue
            images = [r for r in rels if has_ext(r, IMAGE_EXTS)]
            if fmt == "auto" and images:
                add(given_str, "images", p, images)
                continue
            raise FileSourceError(f"folder {given_str!r} holds no readable files; supported: {SUPPORTED}")
        kind = kind_of_file(p.name) if fmt == "auto" else fmt
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


def open_text(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def open_maybe_compressed(path: Path) -> IO[bytes]:
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


def globbed(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
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


def data_tag(unit: FileUnit) -> int:
    """A data file's identity: its first record's bytes (first line, first tar header, first row)."""
    try:
        if unit.kind == "jsonl":
            with open_text(unit.path) as f:
                return identity_tag(f.readline(_HEAD_BYTES))
        if unit.kind == "webdataset":
            with open_maybe_compressed(unit.path) as f:
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


def plan(units: list[FileUnit], positions: Positions) -> ResumeReport:
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
            u.tag = u.tag or data_tag(u)
            listed[u.source] = u.tag
        elif positions:
            for i in range(len(u.files)):
                try:
                    listed[u.key(i)] = image_tag((u.path / u.files[i]).stat())
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


