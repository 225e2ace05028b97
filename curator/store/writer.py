"""The curated-set store: Parquet parts made visible only by an atomic manifest.

Layout of a run directory::

    manifest.json                   the committed state (atomic: temp file, fsync, rename)
    config.toml                     the configuration the run was started with
    kept/shard=0/part-000001.parquet       curated samples (embedding: fixed-size float32 list)
    decisions/shard=0/part-000001.parquet  one record per input item
    quarantine/shard=0/part-000001.parquet bad input with the reason
    checkpoints/shard=0/ckpt-000001/image/ an index snapshot that commit wrote: a base or a delta
    state/loo-2048-<digest>.f32            a large part of the selector's state, named in manifest.json

A part exists on disk before the manifest names it; readers only read what the manifest
names, so a crash between the two leaves an orphan that is ignored and later removed. The same
holds for index snapshots, which the manifest names as chains (`curator.store.snapshots`).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curator.index.deltas import fsync_path
from curator.store.snapshots import Chains, ShardSnapshots

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "curator-run/2"
#: formats this version reads: /1 named one folder of whole index snapshots per shard, /2 chains
READS = ("curator-run/1", FORMAT)
TABLES = ("kept", "decisions", "quarantine")
#: folder of the state files (`StoreWriter.put_state_file`), which the manifest lists as "state_files"
STATE_DIR = "state"


class StoreError(RuntimeError):
    """The run directory is missing, damaged, or belongs to another configuration."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: the file is either old or new, never torn."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


#: how image files that are compressed in their own format begin (JPEG, PNG, GIF, WEBP; AVIF and HEIF
#: say "ftyp" at byte 4); `parquet_options` stores such a column as given
_COMPRESSED_IMAGE = ((0, b"\xff\xd8\xff"), (0, b"\x89PNG"), (0, b"GIF8"), (8, b"WEBP"), (4, b"ftyp"))


def compressed_images(col: pa.ChunkedArray, sample: int = 64) -> bool:
    """Whether the first `sample` non-null values of a binary column are (nearly all) image files
    compressed in their own format (read from their first 12 bytes only)."""
    heads = pc.binary_slice(col, 0, 12).drop_null().slice(0, sample).to_pylist()
    hits = sum(any(h[o:o + len(m)] == m for o, m in _COMPRESSED_IMAGE) for h in heads)
    return bool(heads) and hits >= 0.9 * len(heads)


def parquet_options(table: pa.Table) -> dict[str, Any]:
    """zstd, and dictionaries where values repeat. Not for the columns whose values are each unique and
    large: the image files and the embeddings, where a dictionary is built until it overflows and then
    thrown away (a 512-d embedding: 43 -> 8 us per kept row, and 24% smaller); nor zstd for images in a
    compressed format of their own (JPEG, PNG, GIF, WEBP), on which it gains nothing."""
    unique = {f.name for f in table.schema if _vector(f.type)}
    if "image" in table.column_names and pa.types.is_binary(table.schema.field("image").type):
        unique.add("image")
    if not unique:
        return {"compression": "zstd"}
    as_given = "image" in unique and compressed_images(table.column("image"))
    leaves = _leaf_paths(table.schema)  # per-column options name Parquet's leaf columns; others get none
    top = {c: c.split(".", 1)[0] for c in leaves}
    return {"compression": {c: "NONE" if c == "image" and as_given else "zstd" for c in leaves},
            "use_dictionary": [c for c in leaves if top[c] not in unique]}


def _vector(t: pa.DataType) -> bool:
    return (pa.types.is_fixed_size_list(t) or pa.types.is_list(t)) and pa.types.is_floating(t.value_type)


@functools.lru_cache(maxsize=32)
def _leaf_paths(schema: pa.Schema) -> tuple[str, ...]:
    """The Parquet leaf columns of an Arrow schema ("embedding.list.element", ...), as pyarrow names them."""
    buf = io.BytesIO()
    pq.write_table(schema.empty_table(), buf)
    ps = pq.ParquetFile(buf).schema
    return tuple(ps.column(i).path for i in range(len(ps)))


def write_parquet_durable(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, **parquet_options(table))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The committed manifest, or None for a directory with no commit yet."""
    p = Path(run_dir) / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{p} is not valid JSON ({exc}); the run directory is damaged") from None
    if m.get("format") not in READS:
        raise StoreError(f"{p} has format {m.get('format')!r}, expected one of {', '.join(READS)}: it was "
                         "written by another curator version")
    return m


def committed_parts(run_dir: str | Path) -> dict[str, list[Path]]:
    """Absolute paths of the committed parts per table; uncommitted files are never listed."""
    run = Path(run_dir)
    m = read_manifest(run)
    if m is None:
        if not run.exists():
            raise StoreError(f"{run} does not exist; pass a run directory written by `curator ingest` or `demo`")
        raise StoreError(f"{run} has no {MANIFEST}: nothing has been committed there yet")
    return {t: [run / p for p in m["parts"].get(t, [])] for t in TABLES}


def read_table(run_dir: str | Path, table: str, columns: list[str] | None = None) -> pa.Table:
    """One committed table of a run as Arrow, or only its `columns` (for tests, benchmarks, training jobs,
    and a resuming selector's hash table)."""
    parts = committed_parts(run_dir)[table]
    if not parts:
        return pa.table({})
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in parts], promote_options="default")


@dataclass
class ShardCommit:
    """What one shard made durable for a commit: its parts, and the chains of its index snapshots."""

    shard: int
    parts: dict[str, str]  # table -> part path (relative to the run directory)
    snapshots: Chains | None = None


class ShardParts:
    """One shard's staged rows, and its index snapshots (`snapshots`): written before the manifest names them."""

    def __init__(self, run_dir: str | Path, shard: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.shard = shard
        self._pending: dict[str, list[pa.Table]] = {t: [] for t in TABLES}
        self.snapshots = ShardSnapshots(self.run_dir, shard)

    def stage(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows:
            self._pending[table].append(rows)

    def pending_rows(self, table: str = "decisions") -> int:
        return sum(t.num_rows for t in self._pending[table])

    def write(self, no: int) -> ShardCommit:
        """Commit `no`'s parts (temp file, fsync, rename), durable on return."""
        parts = {}
        for t in TABLES:
            if self._pending[t]:
                rel = f"{t}/shard={self.shard}/part-{no:06d}.parquet"
                write_parquet_durable(pa.concat_tables(self._pending[t], promote_options="default"),
                                      self.run_dir / rel)
                parts[t] = rel
        self._pending = {t: [] for t in TABLES}
        return ShardCommit(self.shard, parts)

    def collect_garbage(self, manifest: dict[str, Any]) -> None:
        """Remove parts and index snapshots a crashed run left behind (never named by the manifest)."""
        named = {self.run_dir / p for t in TABLES for p in manifest["parts"].get(t, [])}
        for t in TABLES:
            d = self.run_dir / t / f"shard={self.shard}"
            if d.exists():
                for p in d.iterdir():
                    if p not in named:
                        log.info("removing uncommitted part %s", p)
                        p.unlink()
        self.snapshots.collect_garbage(manifest)


@dataclass
class StoreWriter:
    """The run's manifest, and shard 0's parts: makes a commit durable with one manifest write.

    Other shards write their own parts (`ShardParts`, possibly in other processes) and hand their
    `ShardCommit` to `commit`, which names them in the same manifest.
    """

    run_dir: Path
    shard: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # model, fingerprint, dims: fixed per run
    manifest: dict[str, Any] = field(default_factory=dict)
    own: ShardParts | None = None
    _state_files: set[str] = field(default_factory=set)  # named for the next commit

    @classmethod
    def open(cls, run_dir: str | Path, meta: dict[str, Any], shard: int = 0) -> StoreWriter:
        """Open a run directory: resume its manifest if any, refuse one from another configuration."""
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        m = read_manifest(run)
        if m is not None:
            old = m.get("config_fingerprint")
            new = meta.get("config_fingerprint")
            if old and new and old != new:
                raise StoreError(
                    f"{run} holds a run with config fingerprint {old}, but this configuration is {new}: "
                    "decisions would not be reproducible. Use a new output directory (--store.out) "
                    "or the configuration the run was started with."
                )
        else:
            m = {"format": FORMAT, "commit": 0, "created": time.time(), "parts": {t: [] for t in TABLES},
                 "positions": {}, "checkpoint": None, "selector_state": None, "counts": {}, **meta}
        m["format"] = FORMAT  # a /1 run continues as /2: its whole snapshots are chains of one base
        w = cls(run, shard, dict(meta), m, ShardParts(run, shard))
        assert w.own is not None
        w.own.collect_garbage(m)
        w._remove_state_files(m)
        return w

    def put_state_file(self, name: str, produce: Callable[[], bytes]) -> str:
        """A file of the selector's state for the next commit to name: written (durably) only when no
        file of that name is there -- the caller names content that does not change under one name."""
        rel = f"{STATE_DIR}/{name}"
        path = self.run_dir / rel
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            atomic_write_bytes(path, produce())
        self._state_files.add(rel)
        return rel

    def read_state_file(self, rel: str) -> bytes:
        try:
            return (self.run_dir / rel).read_bytes()
        except OSError as exc:
            raise StoreError(f"{self.run_dir / rel}, which {MANIFEST} names as part of the selector's state, "
                             f"cannot be read ({exc}); the run directory is damaged") from None

    def _remove_state_files(self, manifest: dict[str, Any]) -> None:
        """Remove the state files the manifest does not name: replaced ones, or a crashed run's."""
        named = set(manifest.get("state_files") or ())
        d = self.run_dir / STATE_DIR
        for p in d.iterdir() if d.exists() else ():
            if f"{STATE_DIR}/{p.name}" not in named:
                p.unlink()

    @property
    def commit_no(self) -> int:
        return int(self.manifest["commit"])

    def stage(self, table: str, rows: pa.Table) -> None:
        assert self.own is not None
        self.own.stage(table, rows)

    def pending_rows(self, table: str = "decisions") -> int:
        assert self.own is not None
        return self.own.pending_rows(table)

    def commit(
        self,
        positions: dict[str, dict[int, int]],
        selector_state: dict[str, Any] | None,
        snapshot: Callable[[int], Chains] | None,
        extra: dict[str, Any] | None = None,
        shards: list[ShardCommit] | None = None,
    ) -> dict[str, Any]:
        """Write staged parts and `snapshot(no)` -- this writer's own index snapshots, if it has any --
        (and take the other shards' durable ones), then the manifest naming them (in that order)."""
        assert self.own is not None
        no = self.commit_no + 1
        m = _for_next_commit(self.manifest, extra)  # the old one stays valid until the rename
        own = self.own.write(no)
        if snapshot is not None:
            own.snapshots = snapshot(no)
        for c in sorted([own, *(shards or [])], key=lambda c: c.shard):
            for t, rel in c.parts.items():
                m["parts"][t].append(rel)
            if c.snapshots is not None:
                if c.shard == 0:
                    m["checkpoint"] = c.snapshots
                m.setdefault("shards", {}).setdefault("checkpoints", {})[str(c.shard)] = c.snapshots
        m["commit"] = no
        m["updated"] = time.time()
        m["positions"] = {s: {str(p): int(o) for p, o in parts.items()} for s, parts in positions.items()}
        m["selector_state"] = selector_state
        m["state_files"], self._state_files = sorted(self._state_files), set()
        # one line, by json's C encoder: an indented manifest goes through its pure-Python one, 5x the CPU
        # (3.5 ms a commit for a 100 KB manifest, most of it the selector's state)
        atomic_write_bytes(self.run_dir / MANIFEST, json.dumps(m, sort_keys=True).encode())
        self.manifest = m
        self._remove_state_files(m)
        return m


def _for_next_commit(manifest: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """`manifest` updated with `extra`, with its own copy of every container `StoreWriter.commit` then
    changes (the parts lists, the shards' checkpoints); the values it only replaces are shared. A copy
    through JSON cost more than the commit's own encoding as the parts lists grow."""
    m = {**manifest, **(extra or {})}
    m["parts"] = {t: list(p) for t, p in manifest["parts"].items()}
    if isinstance(m.get("shards"), dict):
        m["shards"] = {**m["shards"]}
        if isinstance(m["shards"].get("checkpoints"), dict):
            m["shards"]["checkpoints"] = {**m["shards"]["checkpoints"]}
    return m
