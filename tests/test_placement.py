"""The Ray graph's resource check counts what configured filters declare: a filter that needs a GPU (or
more CPUs) makes every embedder actor reserve it, and a cluster without it is refused with a message that
names the filter. Pure Python: the check is given the cluster's resources, no Ray is started."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curator.config import ConfigError, FilterConfig, RunConfig
from curator.ops import Filter, Resources
from curator.stages import build_stages
from pipelines.config import ServeConfig
from pipelines.executors.actors import reserved
from pipelines.executors.placement import check_resources, graph_needs, pool_resources, stage_resources


class NeedsGpu(Filter):
    """A score that (says it) runs a model on half a GPU with two CPUs."""

    resources = Resources(cpus=2.0, gpus=0.5)

    def score(self, samples: pa.Table) -> np.ndarray:
        return np.zeros(samples.num_rows)


def serve_config(*ops: str) -> ServeConfig:
    run = RunConfig()
    run.embedder.kind = "precomputed"
    run.filters = [FilterConfig(op, name=f"f{i}") for i, op in enumerate(ops)]
    scfg = ServeConfig(run=run)
    s = scfg.service
    s.embed_actors, s.embed_num_cpus, s.embed_num_gpus, s.selector_num_cpus = 2, 1.0, 0.0, 1.0
    return scfg


def test_filters_resources_are_reserved_by_each_embedder_actor_and_counted() -> None:
    scfg = serve_config("tests.test_placement:NeedsGpu", "caption_words")
    stages = build_stages(scfg.run, stage_resources(scfg))
    assert reserved(stages.upstream) == pool_resources(scfg) == Resources(cpus=3.0, gpus=0.5)
    need, parts = graph_needs(scfg, stages)
    assert need == Resources(cpus=2 * 3.0 + 1.0, gpus=2 * 0.5)
    assert "f0 2 CPU 0.5 GPU" in parts and "f1" not in parts  # the built-in declares nothing
    without = serve_config("caption_words")
    assert graph_needs(without, build_stages(without.run, stage_resources(without)))[0] == Resources(3.0, 0.0)


def test_a_cluster_without_the_filters_gpu_is_refused_naming_the_filter() -> None:
    scfg = serve_config("tests.test_placement:NeedsGpu")
    stages = build_stages(scfg.run, stage_resources(scfg))
    with pytest.raises(ConfigError, match=r"needs 7 CPUs and 1 GPUs .*filter 2 CPU 0\.5 GPU \[f0 2 CPU 0\.5 GPU\]"
                                          r".*has 16 CPUs and 0 GPUs.*\[\[filters\]\]"):
        check_resources(scfg, stages, have={"CPU": 16.0})
    with pytest.raises(ConfigError, match="needs 7 CPUs"):  # the filter's CPUs count too
        check_resources(scfg, stages, have={"CPU": 6.0, "GPU": 1.0})
    check_resources(scfg, stages, have={"CPU": 7.0, "GPU": 1.0})
