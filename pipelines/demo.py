"""`curator demo` and `make run`: the digits stream (curator.demo_data) through a full curation run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from curator.demo_data import DEMO_QUERY, demo_config, write_demo_inputs
from curator.store.query import decision_summary, format_table, query
from pipelines.config import ServeConfig, apply_serve_overrides, validate_serve_config
from pipelines.ingest import run_ingest
from pipelines.service import serve


def run_demo(out: str | Path, seed: int = 0, overrides: dict[str, dict[str, Any]] | None = None,
             progress: bool = True, engine: str = "inprocess",
             serve_overrides: dict[str, dict[str, Any]] | None = None) -> int:
    """Write the demo's inputs under OUT and curate them; `engine`: 'inprocess' (`curator ingest`'s loop)
    or 'ray' (the service's actor graph, `pipelines.executors`; `serve_overrides` sets its [service] options)."""

    if engine not in ("inprocess", "ray"):
        raise ValueError(f"engine must be 'inprocess' or 'ray', got {engine!r}")

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    ds = write_demo_inputs(out, seed)
    cfg = demo_config(out, seed, overrides)
    print(f"digits demo: {len(ds.stream)} streamed items (20% labels flipped, 30% near-duplicate copies), "
          f"{len(ds.bootstrap)} trusted bootstrap items, {len(ds.test_y)} held out; embedder "
          f"{cfg.embedder.kind}:{cfg.embedder.model}" + (" -- through the Ray actor graph" if engine == "ray" else ""))
    if engine == "ray":
        scfg = ServeConfig(run=cfg)
        # a demo is small: one embedder actor, no fixed HTTP port, a small object store
        scfg.service.embed_actors, scfg.service.port, scfg.service.object_store_mb = 1, 0, 256
        apply_serve_overrides(scfg, serve_overrides or {}, "demo")
        validate_serve_config(scfg)
        serve(scfg)
    else:
        run_ingest(cfg, progress=progress)
    print("\nDecisions:")
    print(decision_summary(out))
    print(f"DuckDB over the curated set ({out.resolve()}):\n  curator query {out} \"{DEMO_QUERY}\"")
    print(format_table(query(out, DEMO_QUERY)))
    return 0
