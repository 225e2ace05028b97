"""The curated-set store: Parquet parts made visible only by an atomic manifest.

Layout of a run directory::

    manifest.json                   the committed state (atomic: temp file, fsync, rename)
    config.toml                     the configuration the run was started with
    kept/shard=0/part-000001.parquet       curated samples (embedding: fixed-size float32 list)
    decisions/shard=0/part-000001.parquet  one record per input item
    quarantine/shard=0/part-000001.parquet bad input with the reason
    checkpoints/ckpt-000001/        FAISS index snapshot of that commit

A part exists on disk before the manifest names it; readers only read what the manifest
names, so a crash between the two leaves an orphan that is ignored and later removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "curator-run/1"
TABLES = ("kept", "decisions", "quarantine")
KEEP_CHECKPOINTS = 2


class StoreError(RuntimeError):
    """The run directory is missing, damaged, or belongs to another configuration."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename, fsync the directory: the file is either old or new, never torn."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_parquet_durable(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The committed manifest, or None for a directory with no commit yet."""
    p = Path(run_dir) / MANIFEST
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{p} is not valid JSON ({exc}); the run directory is damaged") from None
    if m.get("format") != FORMAT:
        raise StoreError(f"{p} has format {m.get('format')!r}, expected {FORMAT!r}")
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


def read_table(run_dir: str | Path, table: str) -> pa.Table:
    """One committed table of a run as Arrow (for tests, benchmarks, training jobs)."""
    parts = committed_parts(run_dir)[table]
    if not parts:
        return pa.table({})
    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


@dataclass
class StoreWriter:
    """Buffers a commit's rows, then makes them durable with one manifest write."""

    run_dir: Path
    shard: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # model, fingerprint, dims: fixed per run
    manifest: dict[str, Any] = field(default_factory=dict)
    _pending: dict[str, list[pa.Table]] = field(default_factory=lambda: {t: [] for t in TABLES})

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
        w = cls(run, shard, dict(meta), m)
        w._collect_garbage()
        return w

    @property
    def commit_no(self) -> int:
        return int(self.manifest["commit"])

    def stage(self, table: str, rows: pa.Table) -> None:
        if rows.num_rows:
            self._pending[table].append(rows)

    def pending_rows(self, table: str = "decisions") -> int:
        return sum(t.num_rows for t in self._pending[table])

    def commit(
        self,
        positions: dict[str, dict[int, int]],
        selector_state: dict[str, Any] | None,
        save_checkpoint: Callable[[Path], None] | None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write staged parts, the checkpoint, then the manifest naming them (in that order)."""
        no = self.commit_no + 1
        m = json.loads(json.dumps(self.manifest))  # a copy: the old one stays valid until the rename
        for t in TABLES:
            if self._pending[t]:
                rel = f"{t}/shard={self.shard}/part-{no:06d}.parquet"
                tbl = pa.concat_tables(self._pending[t], promote_options="default")
                write_parquet_durable(tbl, self.run_dir / rel)
                m["parts"][t].append(rel)
        if save_checkpoint is not None:
            rel = f"checkpoints/shard={self.shard}/ckpt-{no:06d}"
            ck = self.run_dir / rel
            if ck.exists():
                shutil.rmtree(ck)
            save_checkpoint(ck)
            ck.mkdir(parents=True, exist_ok=True)  # a run with nothing indexed yet (all input rejected)
            fsync_dir(ck.parent)
            m["checkpoint"] = rel
        m["commit"] = no
        m["updated"] = time.time()
        m["positions"] = {s: {str(p): int(o) for p, o in parts.items()} for s, parts in positions.items()}
        m["selector_state"] = selector_state
        if extra:
            m.update(extra)
        atomic_write_bytes(self.run_dir / MANIFEST, json.dumps(m, indent=1, sort_keys=True).encode())
        self.manifest = m
        self._pending = {t: [] for t in TABLES}
        self._prune_checkpoints()
        return m

    def _prune_checkpoints(self) -> None:
        d = self.run_dir / "checkpoints" / f"shard={self.shard}"
        if not d.exists():
            return
        current = self.manifest.get("checkpoint")
        cks = sorted(p for p in d.iterdir() if p.name.startswith("ckpt-"))
        for p in cks[:-KEEP_CHECKPOINTS]:
            if current and p == self.run_dir / current:
                continue
            shutil.rmtree(p, ignore_errors=True)

    def _collect_garbage(self) -> None:
        """Remove parts and checkpoints a crashed run left behind (never named by the manifest)."""
        named = {self.run_dir / p for t in TABLES for p in self.manifest["parts"].get(t, [])}
        for t in TABLES:
            d = self.run_dir / t / f"shard={self.shard}"
            if d.exists():
                for p in d.iterdir():
                    if p not in named:
                        log.info("removing uncommitted part %s", p)
                        p.unlink()
        d = self.run_dir / "checkpoints" / f"shard={self.shard}"
        cur = self.manifest.get("checkpoint")
        if d.exists():
            for p in d.iterdir():
                if p.name.startswith("ckpt-") and cur and p.name > Path(cur).name:
                    shutil.rmtree(p, ignore_errors=True)
