"""`curator export`: the curated set as files that other training code reads.

Users train on the curated set with their own code (OpenCLIP, timm, torchvision, Hugging Face
datasets); each format is the layout those tools read, and every item carries its InfoGrowth
gain and its decision:

- ``webdataset``: tar shards as img2dataset writes them -- ``00000.tar`` holding ``KEY.jpg`` (or
  ``.png``, ``.webp``, ...: the image's own format, bytes unchanged), ``KEY.txt`` (the caption),
  ``KEY.json`` (the metadata: id, label, decision, gain, position, ...) and ``KEY.cls`` (the
  label, when there is one), with ``00000.parquet`` (one row per item of the shard, status and
  metadata) and ``00000_stats.json`` beside each. Keys are the shard number and the index in
  the shard (``000000003``), as img2dataset makes them; OpenCLIP's ``--train-data
  'OUT/{00000..00004}.tar'`` reads them;
- ``imagefolder``: ``OUT/CLASS/ID.EXT``, as torchvision's ImageFolder and timm read it, with
  ``OUT/metadata.jsonl`` (``file_name`` and the metadata, as Hugging Face's imagefolder loader
  reads it). CLASS is the class folder name the item came from (for a relabelled item, that of
  its new label), else the label zero-padded so that sorted folder names give label order;
  unlabelled items and items without an image are left out (and counted);
- ``parquet``: the kept rows (all columns of the curated set, embeddings included) as
  ``part-00000.parquet``, ... with the images filled in.

A kept item whose image the run did not store (``store.store_images = false``) is read back
from its input file (`curator.store.payloads`); one whose input is gone is reported, not
exported (webdataset: listed in the shard's Parquet with status ``failed_to_read``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curator.embed.images import ALLOWED_FORMATS
from curator.store.payloads import SourceReader
from curator.store.query import connect
from curator.store.writer import committed_parts, parquet_options

FORMATS = ("webdataset", "imagefolder", "parquet")
#: Items per tar shard / Parquet part (img2dataset's default).
SHARD_SIZE = 10_000
#: Pillow's format names and the file extension each is written with.
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif",
              "AVIF": "avif"}
#: What each exported item says about itself (WebDataset .json, ImageFolder metadata.jsonl).
META_COLUMNS = ("id", "label", "label_original", "decision", "gain", "gain_norm", "seq", "source", "partition",
                "offset", "image_uri")
_BATCH = 256


class ExportError(ValueError):
    """The export cannot be done as asked; the message says why and what to do."""


@dataclass
class ExportSummary:
    """What an export wrote: items written of the curated set's, how many images were read back
    from the inputs, and what went wrong for the others (message -> items)."""

    format: str
    out: Path
    kept: int = 0
    written: int = 0
    read_back: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    files: int = 0

    def line(self) -> str:
        why = "".join(f"; {n} {reason}" for reason, n in sorted(self.problems.items()))
        return (f"exported {self.written} of {self.kept} kept items as {self.format} to {self.out} ({self.files} "
                f"files; {self.read_back} images read back from the run's inputs{why})")


@dataclass
class Item:
    """One kept row with its image resolved: bytes, format and size, or why there is none."""

    row: dict[str, Any]
    image: bytes | None = None
    ext: str | None = None
    size: tuple[int, int] | None = None
    problem: str | None = None  # the item has an image that could not be had

    def meta(self) -> dict[str, Any]:
        m = {k: self.row.get(k) for k in META_COLUMNS}
        m["caption"] = self.row.get("text")
        m["metadata"] = _json_object(self.row.get("metadata"))
        if self.size is not None:
            m["width"], m["height"] = self.size
        if self.image is not None:
            m["sha256"] = hashlib.sha256(self.image).hexdigest()
        return m


def export(run_dir: str | Path, fmt: str, out: str | Path, shard_size: int = SHARD_SIZE) -> ExportSummary:
    """Write the kept items of a run directory in format `fmt` under `out` (a new or empty folder)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ExportError(f"shard size must be at least 1, got {shard_size}")
    run, dest = Path(run_dir), Path(out)
    parts = committed_parts(run)["kept"]
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ExportError(f"{dest} exists and is not an empty folder; give a new folder to export into")
    dest.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(fmt, dest.resolve(), kept=sum(pq.ParquetFile(p).metadata.num_rows for p in parts))
    writer = {"webdataset": _webdataset, "imagefolder": _imagefolder, "parquet": _parquet}[fmt]
    writer(run, parts, dest, shard_size, summary)
    return summary


# --------------------------------------------------------------------------- reading


def _batches(parts: list[Path], columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The kept rows in commit order (each part is in stream order), a few hundred at a time."""
    for p in parts:
        f = pq.ParquetFile(p)
        cols = None if columns is None else [c for c in columns if c in f.schema_arrow.names]
        yield from f.iter_batches(batch_size=_BATCH, columns=cols)


def _items(run: Path, parts: list[Path], summary: ExportSummary) -> Iterator[Item]:
    """Kept rows (no embeddings) with their image: stored, else read back from the run's inputs."""
    reader = SourceReader(run)
    cols = [*META_COLUMNS, "image", "text", "metadata"]
    for batch in _batches(parts, cols):
        for row in batch.to_pylist():
            item = Item(row, row.get("image"))
            if item.image is None:
                got = reader.get(row.get("source"), row.get("offset"))
                if got is not None and got.get("image") is not None:
                    item.image = got["image"]
                    summary.read_back += 1
                    if row.get("text") is None:
                        row["text"] = got.get("text")
                elif got is None:
                    item.problem = "image not stored in the run and its input file cannot be read back"
                elif row.get("image_uri"):
                    item.problem = "image given by URI only (not fetched)"
            if item.image is not None:
                _identify(item)
            yield item


def _identify(item: Item) -> None:
    """The image's format (for its file extension) and size, from its header; no decoding."""
    Image.init()  # registers Pillow's plugins; only those of the decoder's allow-list are tried
    try:
        with Image.open(io.BytesIO(item.image or b""), formats=[f for f in ALLOWED_FORMATS if f in Image.OPEN]) as im:
            item.ext, item.size = EXTENSIONS.get(im.format or "", "img"), im.size
    except Exception:  # noqa: BLE001 - any failure to read the header means: not an image we export
        item.image, item.problem = None, "image bytes are not an image of a supported format"


# --------------------------------------------------------------------------- webdataset


def _webdataset(run: Path, parts: list[Path], dest: Path, shard_size: int, summary: ExportSummary) -> None:
    digits = len(str(shard_size - 1))
    shard, tar, started = -1, None, time.time()
    rows: list[dict[str, Any]] = []
    try:
        for i, item in enumerate(_items(run, parts, summary)):
            if i % shard_size == 0:
                if tar is not None:
                    tar.close()
                    _shard_index(dest, shard, rows, started, summary)
                shard, rows, started = shard + 1, [], time.time()
                tar = tarfile.open(dest / f"{shard:05d}.tar", "w")  # noqa: SIM115 - closed at the shard's end
                summary.files += 1
            key = f"{shard:05d}{i % shard_size:0{digits}d}"
            meta = {"key": key, **item.meta(), "status": "failed_to_read" if item.problem else "success",
                    "error_message": item.problem}
            rows.append(meta)
            if item.problem:
                summary.problems[f"left out: {item.problem}"] += 1
                continue
            members = {"json": json.dumps(meta, default=str).encode()}
            if item.image is not None:
                members[item.ext or "img"] = item.image
            if item.row.get("text") is not None:
                members["txt"] = str(item.row["text"]).encode()
            if item.row.get("label") is not None:
                members["cls"] = str(item.row["label"]).encode()
            for ext, data in members.items():
                _add(tar, f"{key}.{ext}", data)
            summary.written += 1
    finally:
        if tar is not None:
            tar.close()
    if tar is not None:
        _shard_index(dest, shard, rows, started, summary)


def _add(tar: tarfile.TarFile | None, name: str, data: bytes) -> None:
    assert tar is not None
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def _shard_index(dest: Path, shard: int, rows: list[dict[str, Any]], started: float, summary: ExportSummary) -> None:
    """``NNNNN.parquet`` (one row per item of the shard) and ``NNNNN_stats.json``, as img2dataset writes."""
    flat = [{**r, "metadata": json.dumps(r["metadata"]) if r.get("metadata") is not None else None} for r in rows]
    pq.write_table(pa.Table.from_pylist(flat), dest / f"{shard:05d}.parquet")
    status = Counter(r["status"] for r in rows)
    ended = time.time()
    stats = {"count": len(rows), "successes": status["success"], "failed_to_read": status["failed_to_read"],
             "status_dict": dict(status), "start_time": started, "end_time": ended, "duration": ended - started}
    (dest / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=1))
    summary.files += 2


# --------------------------------------------------------------------------- imagefolder


def _imagefolder(run: Path, parts: list[Path], dest: Path, shard_size: int, summary: ExportSummary) -> None:
    names, width = _class_names(run, parts)
    used: set[str] = set()
    with open(dest / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for item in _items(run, parts, summary):
            label = item.row.get("label")
            problem = item.problem or (None if item.image is not None else "no image (text only)")
            if problem is None and label is None:
                problem = "unlabelled (an image folder needs a class)"
            if problem is not None or label is None:
                summary.problems[f"left out: {problem}"] += 1
                continue
            folder = _safe(names.get(int(label)) or f"{int(label):0{width}d}")
            name = f"{folder}/{_safe(_stem(item.row['id']))}"
            if name in used:
                name += f"-{item.row.get('seq')}"
            used.add(name)
            path = dest / f"{name}.{item.ext}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(item.image or b"")
            meta.write(json.dumps({"file_name": f"{name}.{item.ext}", "class": folder, **item.meta()}, default=str)
                       + "\n")
            summary.written += 1
    summary.files = summary.written + 1


def _class_names(run: Path, parts: list[Path]) -> tuple[dict[int, str], int]:
    """(label -> class folder name, from the kept items that came from named class folders; digits of
    the largest label, to zero-pad numbered class folders with)."""
    if not parts:
        return {}, 1
    con = connect(run)
    try:
        rows = con.execute("SELECT DISTINCT label_original, json_extract_string(metadata, '$.class_name') FROM kept "
                           "WHERE label_original IS NOT NULL AND json_valid(metadata) "
                           "AND json_extract_string(metadata, '$.class_name') IS NOT NULL").fetchall()
        top = con.execute("SELECT max(abs(label)) FROM kept").fetchone()
    finally:
        con.close()
    return {int(label): str(name) for label, name in rows}, len(str((top or [0])[0] or 0))


def _stem(item_id: Any) -> str:
    """The id without an image file extension (an image folder's ids are relative paths)."""
    s = str(item_id)
    return re.sub(r"\.(jpe?g|png|webp|bmp|gif|tiff?)$", "", s, flags=re.IGNORECASE)


def _safe(name: str) -> str:
    """A file name made of the name's letters, digits, '.', '-' and '_' (others become '_'), never '.' or '..'."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:150].strip(".")
    return s or "_"


# --------------------------------------------------------------------------- parquet


def _parquet(run: Path, parts: list[Path], dest: Path, shard_size: int, summary: ExportSummary) -> None:
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts]) if parts else pa.schema([])
    reader = SourceReader(run)
    writer: pq.ParquetWriter | None = None
    rows_in_part = 0
    try:
        for batch in _batches(parts):
            tbl = _aligned(pa.Table.from_batches([batch]), schema)
            tbl = _fill_images(tbl, reader, summary)
            for chunk in _split(tbl, shard_size, rows_in_part):
                if writer is None or rows_in_part >= shard_size:
                    if writer is not None:
                        writer.close()
                    writer = pq.ParquetWriter(dest / f"part-{summary.files:05d}.parquet", schema,
                                              **parquet_options(chunk))  # the store's own encoding
                    summary.files, rows_in_part = summary.files + 1, 0
                writer.write_table(chunk)
                rows_in_part += chunk.num_rows
                summary.written += chunk.num_rows
    finally:
        if writer is not None:
            writer.close()


def _aligned(tbl: pa.Table, schema: pa.Schema) -> pa.Table:
    """`tbl` with `schema`'s columns in its order (a part from before a column existed gets nulls)."""
    cols = [tbl.column(f.name).cast(f.type) if f.name in tbl.column_names else pa.nulls(tbl.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def _fill_images(tbl: pa.Table, reader: SourceReader, summary: ExportSummary) -> pa.Table:
    images = tbl.column("image").to_pylist()
    if all(im is not None for im in images):
        return tbl
    sources, offsets = tbl.column("source").to_pylist(), tbl.column("offset").to_pylist()
    for i, im in enumerate(images):
        if im is None:
            got = reader.get(sources[i], offsets[i])
            if got is not None and got.get("image") is not None:
                images[i] = got["image"]
                summary.read_back += 1
            elif got is None:
                summary.problems["written without their image: not stored in the run, and the input file "
                                 "cannot be read back"] += 1
    idx = tbl.schema.get_field_index("image")
    return tbl.set_column(idx, tbl.schema.field(idx), pa.array(images, pa.binary()))


def _split(tbl: pa.Table, size: int, filled: int) -> Iterator[pa.Table]:
    """`tbl` cut so that no output part gets more than `size` rows (the current one has `filled`)."""
    start, room = 0, (size - filled) if filled < size else size
    while start < tbl.num_rows:
        yield tbl.slice(start, room)
        start += room
        room = size


def _json_object(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
