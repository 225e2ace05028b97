"""Readers of one unit of a file source each: Parquet row groups, JSONL lines, image files, WebDataset
tars. Each yields (record | Rejection, position) from an offset on; nothing here raises on bad input.
"""

from __future__ import annotations

import gzip
import json
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.file_units import (
    FileUnit,
    data_tag,
    identity_tag,
    image_tag,
    open_maybe_compressed,
    open_text,
)
from curator.fields import canonical_record
from curator.formats import WDS_FIELDS, wds_key
from curator.records import InvalidRecord, Position, Rejection
from curator.wire import json_id, record_from_json

Item = tuple[dict[str, Any] | Rejection, Position]
PREVIEW_BYTES = 4096


class UnitReader:
    """Reads units with the source's limits (`max_record_bytes`); the same for a stream and a range."""

    def __init__(self, max_record_bytes: int) -> None:
        self.max_record_bytes = max_record_bytes

    def read(self, unit: FileUnit, first: int, batch_size: int = 256) -> Iterator[Item]:
        """Items of `unit` from `first` on (a row, or an index into an image folder's `remaining()`)."""
        if unit.kind != "images" and not unit.tag:
            unit.tag = data_tag(unit)
        reader = {
            "parquet": self._read_parquet,
            "jsonl": self._read_jsonl,
            "images": self._read_images,
            "webdataset": self._read_tar,
        }[unit.kind]
        return reader(unit, first, batch_size)

    def _reject(self, unit: FileUnit, offset: int, reason: str, rid: str | None = None, raw: bytes | None = None,
                pos: Position | None = None, code: str = "unreadable-file") -> Item:
        pos = pos or Position(unit.source, unit.tag, offset)
        return Rejection(pos, reason, rid, None if raw is None else raw[:PREVIEW_BYTES], code), pos

    def _read_parquet(self, unit: FileUnit, first: int, batch_size: int) -> Iterator[Item]:
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
                    pos = Position(unit.source, unit.tag, offset)
                    try:  # other tools' names; paths relative to the file's folder
                        yield canonical_record(rec, unit.path.parent), pos
                    except InvalidRecord as exc:
                        yield self._reject(unit, offset, str(exc), json_id(rec), pos=pos, code=exc.code)
                    offset += 1
        except (OSError, pa.ArrowException) as exc:
            yield self._reject(unit, offset, f"Parquet file is corrupt from row {offset} on: {exc}")

    def _read_jsonl(self, unit: FileUnit, first: int, batch_size: int) -> Iterator[Item]:
        limit = self.max_record_bytes
        try:
            f = open_text(unit.path)
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
                            yield self._reject(unit, line_no, f"line is over {limit} bytes (max_record_bytes)",
                                               raw=line, code="too-large")
                        continue
                    if line_no < first or not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except (ValueError, RecursionError) as exc:
                        yield self._reject(unit, line_no, f"invalid JSON: {exc}", raw=line, code="invalid-json")
                        continue
                    try:
                        rec = record_from_json(obj, unit.path.parent)  # paths in it are relative to its folder
                    except InvalidRecord as exc:
                        yield self._reject(unit, line_no, str(exc), json_id(obj), line, code=exc.code)
                        continue
                    yield rec, Position(unit.source, unit.tag, line_no)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                yield self._reject(unit, line_no + 1, f"JSONL file is corrupt after line {line_no + 1}: {exc}")

    def _read_images(self, unit: FileUnit, first: int, batch_size: int) -> Iterator[Item]:
        labels = _folder_labels(unit.files)
        for i in unit.remaining()[first:]:
            rel = unit.files[i]
            path = unit.path / rel
            pos = Position(unit.key(i), identity_tag(b""), 0)
            try:
                st = path.stat()
                pos = Position(pos.source, image_tag(st), 0)
                if st.st_size > self.max_record_bytes:
                    yield self._reject(unit, 0, f"image is {st.st_size} bytes, over max_record_bytes", rel, pos=pos,
                                       code="too-large")
                    continue
                image = path.read_bytes()
            except OSError as exc:
                yield self._reject(unit, 0, f"unreadable image: {exc}", rel, pos=pos, code="image-unreadable")
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

    def _read_tar(self, unit: FileUnit, first: int, batch_size: int) -> Iterator[Item]:
        """Stream the tar once (no seeking, no extraction to disk), grouping consecutive members by key.

        Python's tarfile ends quietly when a tar is cut at a member boundary, so the reader checks
        the end-of-archive marker itself; a cut tar rejects its last (possibly partial) sample.
        """
        index = -1
        key: str | None = None
        sample: dict[str, Any] = {}
        problem: str | None = None
        problem_code = "bad-field"

        def finish() -> Item | None:
            if key is None or index < first:
                return None
            if problem is not None:
                return self._reject(unit, index, problem, key, code=problem_code)
            return {"id": key, **sample}, Position(unit.source, unit.tag, index)

        try:
            stream = _TailReader(open_maybe_compressed(unit.path))
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
                    named = wds_key(member.name)
                    if named is None:
                        continue  # WebDataset keys are "dir/stem"; members without an extension carry nothing
                    mkey, ext = named
                    if mkey != key:
                        done = finish()
                        if done is not None:
                            yield done
                        key, sample, problem, problem_code = mkey, {}, None, "bad-field"
                        index += 1
                    target = WDS_FIELDS.get(ext.lower())
                    if index < first or target is None or problem is not None:
                        continue  # skipped (resume), unknown extension, or already rejected
                    if member.size > self.max_record_bytes:
                        problem = f"member {member.name!r} is {member.size} bytes, over max_record_bytes"
                        problem_code = "too-large"
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


