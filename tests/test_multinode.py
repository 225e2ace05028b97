"""Two Ray nodes on this machine (`ray.cluster_utils.Cluster`): the embedder pool and the selector
shards spread over both, and the curated set equals a single-process run's."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from curator.demo_data import demo_config, write_demo_inputs
from curator.store import read_table
from pipelines.config import ServeConfig
from pipelines.ingest import run_ingest

COLS = ["id", "decision", "label_out", "dup_of", "seq", "reason"]


@pytest.mark.ray
@pytest.mark.timeout(400)
def test_two_nodes_place_shards_and_embedders_on_both_and_decide_as_one_process(tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.service import Service

    write_demo_inputs(tmp_path, 1)
    cfg = demo_config(tmp_path, 1, {"selector": {"shards": 2, "probe": 1}, "store": {"commit_every": 400}})
    cfg.store.out = str(tmp_path / "local")
    run_ingest(cfg, progress=False)  # the reference: everything in this process

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 150 * 2**20})
    cluster.add_node(num_cpus=2, object_store_memory=150 * 2**20)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        cfg.store.out = str(tmp_path / "cluster")
        scfg = ServeConfig(run=cfg)
        s = scfg.service
        s.port, s.embed_actors, s.embed_num_cpus, s.selector_num_cpus, s.shard_num_cpus = 0, 2, 0.5, 0.5, 0.5
        svc = Service(scfg)
        assert svc.run() == 0
        ex = svc.executor
        embed_nodes = {i.node_id for i in ex.embed_info}
        shard_nodes = {i.node_id for i in ex.shard_info}
        assert len(embed_nodes) == 2 and len(shard_nodes) == 2, (embed_nodes, shard_nodes)
    finally:
        signal.signal(signal.SIGTERM, old)
        ray.shutdown()
        cluster.shutdown()
    a = read_table(tmp_path / "local", "decisions").sort_by("id")
    b = read_table(tmp_path / "cluster", "decisions").sort_by("id")
    for c in COLS:
        assert a.column(c).to_pylist() == b.column(c).to_pylist(), c
    assert sorted(read_table(tmp_path / "local", "kept").column("id").to_pylist()) == \
        sorted(read_table(tmp_path / "cluster", "kept").column("id").to_pylist())
