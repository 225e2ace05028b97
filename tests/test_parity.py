"""Parity: the stages of `build_stages` make the same decisions whether the in-process executor
(`curator ingest`) or the Ray executor (`curator serve`, actors) runs them, on the demo stream.

Same input, same batch boundaries: every column of every decision must be equal -- scores and
reasons included, not only to rounding.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pyarrow as pa
import pytest

from curator.demo_data import demo_config, write_demo_inputs
from curator.store import read_manifest, read_table
from pipelines.config import ServeConfig
from pipelines.ingest import run_ingest

#: what names the run rather than the decision
RUN_COLS = {"model", "config_fingerprint"}


def _decisions(run: Path) -> pa.Table:
    t = read_table(run, "decisions")
    return t.select([c for c in t.column_names if c not in RUN_COLS]).sort_by("seq")


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("shards", [1, 3])
def test_in_process_and_ray_executors_decide_identically(ray_local, tmp_path: Path, shards: int) -> None:
    """With 3 shards (probe 2): shards in the selector's process, and shard actors on Ray."""
    from pipelines.service import serve

    write_demo_inputs(tmp_path, seed=3)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    cfg = demo_config(tmp_path, 3, {"store": {"commit_every": 300}, "selector": {"shards": shards, "probe": 2}})
    cfg.store.out = str(local)
    run_ingest(cfg, progress=False)

    cfg.store.out = str(on_ray)
    scfg = ServeConfig(run=cfg)
    s = scfg.service
    s.port, s.embed_actors, s.embed_num_cpus, s.selector_num_cpus, s.shard_num_cpus = 0, 2, 0.4, 0.4, 0.2
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert serve(scfg) == 0
    finally:
        signal.signal(signal.SIGTERM, old)

    a, b = _decisions(local), _decisions(on_ray)
    assert a.num_rows == b.num_rows > 1000
    for col in a.column_names:
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    assert sorted(read_table(local, "kept").column("id").to_pylist()) == \
        sorted(read_table(on_ray, "kept").column("id").to_pylist())
    ma, mb = read_manifest(local), read_manifest(on_ray)
    assert ma is not None and mb is not None
    assert ma["positions"] == mb["positions"] and ma["counts"] == mb["counts"]
