"""The curated-set store: Parquet parts and the manifest (`writer`), the run-directory lock, DuckDB views."""

from __future__ import annotations

from curator.store.writer import (
    MANIFEST,
    TABLES,
    StoreError,
    StoreWriter,
    committed_parts,
    read_manifest,
    read_table,
)

__all__ = ["MANIFEST", "TABLES", "StoreError", "StoreWriter", "committed_parts", "read_manifest", "read_table"]
