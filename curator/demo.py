"""`curator demo`: the digits stream (curator.demo_data) through a full curation run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curator.config import RunConfig, load_config
from curator.demo_data import digits_stream

#: Settings the demo's embedding (L2-normalised pixel intensities) needs; flags override them.
DEMO_DEFAULTS: dict[str, dict[str, Any]] = {
    "embedder": {"kind": "precomputed", "model": "digits-pixels", "pretrained": ""},
    # copies (pixel noise std 0.5) sit at cos >= 0.9969; distinct digits at most 0.9956
    "selector": {"eps_dup": 0.004, "k_label": 5},
    "source": {"batch_size": 128},
    "store": {"commit_every": 512},
}


def demo_config(out: str | Path, seed: int, overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEMO_DEFAULTS.items()}
    for sec, vals in (overrides or {}).items():
        merged.setdefault(sec, {}).update(vals)
    merged.setdefault("selector", {}).setdefault("seed", seed)
    out = Path(out)
    merged["store"]["out"] = str(out)
    merged["source"]["paths"] = [str(out / "inputs" / "stream.parquet")]
    merged["source"]["bootstrap"] = [str(out / "inputs" / "bootstrap.parquet")]
    return load_config(None, merged)


def write_demo_inputs(out: str | Path, seed: int) -> Any:
    """Write the stream, the bootstrap and the ground truth as Parquet under OUT/inputs."""
    ds = digits_stream(seed)
    d = Path(out) / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(ds.stream), d / "stream.parquet")
    pq.write_table(pa.Table.from_pylist(ds.bootstrap), d / "bootstrap.parquet")
    pq.write_table(ds.truth, d / "truth.parquet")
    return ds


DEMO_QUERY = ("SELECT label, count(*) AS kept, count(*) FILTER (WHERE decision = 'relabelled') AS relabelled, "
              "round(avg(gain), 4) AS mean_gain FROM kept GROUP BY label ORDER BY label")


def run_demo(out: str | Path, seed: int = 0, overrides: dict[str, dict[str, Any]] | None = None,
             progress: bool = True, engine: str = "inprocess",
             serve_overrides: dict[str, dict[str, Any]] | None = None) -> int:
    """Write the demo's inputs under OUT and curate them; `engine`: 'inprocess' (`curator ingest`'s loop)
    or 'ray' (the service's actor graph, `pipelines.graph`; `serve_overrides` sets its [service] options)."""
    from curator.cli import run_ingest, summary
    from curator.query import format_table, query

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
        from pipelines.config import ServeConfig, apply_serve_overrides, validate_serve_config
        from pipelines.service import serve

        scfg = ServeConfig(run=cfg)
        # a demo is small: one embedder actor, no fixed HTTP port, a small object store
        scfg.service.embed_actors, scfg.service.port, scfg.service.object_store_mb = 1, 0, 256
        apply_serve_overrides(scfg, serve_overrides or {}, "demo")
        validate_serve_config(scfg)
        serve(scfg)
    else:
        run_ingest(cfg, progress=progress)
    print("\nDecisions:")
    print(summary(out))
    print(f"DuckDB over the curated set ({out.resolve()}):\n  curator query {out} \"{DEMO_QUERY}\"")
    print(format_table(query(out, DEMO_QUERY)))
    return 0
