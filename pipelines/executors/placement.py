"""Where a run's actors go: joining or starting Ray, refusing a graph the cluster cannot place, and
starting the actors (the upstream pool, the select-and-write actor, the selector shards).

The select-and-write actor is pinned to the driver's node, so the run directory is where the logs
say; the pool and the shards spread over the cluster's nodes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from types import ModuleType

import ray
from ray.actor import ActorHandle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from curator.config import ConfigError
from curator.ops.stage import FilterStage
from curator.resources import Resources
from curator.select.shard import ShardStats
from curator.stages import EmbedInfo, Resume, Stage, Stages, build_stages
from pipelines.config import ServeConfig
from pipelines.executors.actors import ActorInfo, SelectWriteActor, StageActor, reserved
from pipelines.executors.shards import start_shards

log = logging.getLogger("curator.service")


def stage_resources(scfg: ServeConfig) -> dict[str, Resources]:
    """What one copy of each role reserves, by the service's settings (`build_stages`'s `resources`); a
    filter declares its own (`curator.ops.Filter.resources`), which the filter stage sums."""
    s = scfg.service
    return {"embed": Resources(s.embed_num_cpus, s.embed_num_gpus), "select": Resources(s.selector_num_cpus)}


def pool_resources(scfg: ServeConfig) -> Resources:
    """What one pool actor reserves: every stage upstream of select-and-write (the embedder, the filters)."""
    return reserved(build_stages(scfg.run, stage_resources(scfg)).upstream)


def graph_needs(scfg: ServeConfig, stages: Stages, extra_cpus: float = 0.0) -> tuple[Resources, str]:
    """What the actor graph reserves in all, and what that is made of (for people): `service.embed_actors`
    pool actors each running the upstream stages as they declare (filters included), the select-and-write
    actor, the selector shards, and `extra_cpus` (readers)."""
    s, n = scfg.service, scfg.run.selector.shards
    pool = reserved(stages.upstream)
    sel = stages.select.resources
    shards = n * s.shard_num_cpus if n > 1 else 0.0
    need = Resources(s.embed_actors * pool.cpus + sel.cpus + shards + extra_cpus, s.embed_actors * pool.gpus + sel.gpus)
    each = ", ".join(_declared(st) for st in stages.upstream if st.resources != Resources())
    parts = [f"{s.embed_actors} embedder actors x ({each or 'nothing'})", f"the selector {_amount(sel)}"]
    parts += [f"{n} shards x {s.shard_num_cpus:g} CPU"] if n > 1 else []
    parts += [f"readers {extra_cpus:g} CPU"] if extra_cpus else []
    return need, ", ".join(parts)


def _amount(r: Resources) -> str:
    return f"{r.cpus:g} CPU" + (f" {r.gpus:g} GPU" if r.gpus else "")


def _declared(stage: Stage) -> str:
    """A stage's reservation; a filter stage's names each filter that declares one."""
    own = ""
    if isinstance(stage, FilterStage):
        own = "; ".join(f"{r.name} {_amount(r.op.resources)}" for r in stage.rules if r.op.resources != Resources())
    return f"{stage.name} {_amount(stage.resources)}" + (f" [{own}]" if own else "")


def init_ray(scfg: ServeConfig, extra_cpus: float = 0.0) -> tuple[ModuleType, bool]:
    """Join or start Ray; returns (ray, whether this call initialised it and so must shut it down).
    A local instance gets at least the CPUs the graph reserves (plus `extra_cpus`), so it can start."""
    if ray.is_initialized():  # embedded in a process that already runs Ray (tests, notebooks)
        return ray, False
    s = scfg.service
    address = s.ray_address.strip() or os.environ.get("RAY_ADDRESS", "").strip()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address and address != "local":
        ray.init(address=address, log_to_driver=True)
        log.info("joined the Ray cluster at %s", address)
    else:
        need, _ = graph_needs(scfg, build_stages(scfg.run, stage_resources(scfg)), extra_cpus)
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(need.cpus + 0.999)), include_dashboard=False,
                 object_store_memory=s.object_store_mb * 1024 * 1024, log_to_driver=True)
        log.info("started a local Ray instance (set service.ray_address or $RAY_ADDRESS to join a cluster)")
    return ray, True


def check_resources(scfg: ServeConfig, stages: Stages, extra_cpus: float = 0.0,
                    have: dict[str, float] | None = None) -> None:
    """Refuse a graph the cluster (`have`: Ray's cluster resources) cannot place, instead of waiting forever
    for its actors."""
    need, parts = graph_needs(scfg, stages, extra_cpus)
    have = ray.cluster_resources() if have is None else have
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    if need.cpus > cpus + 1e-9 or need.gpus > gpus + 1e-9:
        raise ConfigError(
            f"the graph needs {need.cpus:g} CPUs and {need.gpus:g} GPUs ({parts}), but the Ray cluster has "
            f"{cpus:g} CPUs and {gpus:g} GPUs: lower service.embed_actors / *_num_cpus / embed_num_gpus, drop "
            "or change a [[filters]] entry whose operator declares resources, or add nodes")


@dataclass
class Graph:
    """A run's actors and where they run."""

    selector: ActorHandle  # the SelectWriteActor
    selector_info: ActorInfo
    embedders: list[ActorHandle] = field(default_factory=list)  # StageActors over the upstream stages
    embed_info: list[ActorInfo] = field(default_factory=list)
    shards: list[ActorHandle] = field(default_factory=list)  # ShardActors (selector.shards > 1)
    shard_info: list[ShardStats] = field(default_factory=list)
    stopped: bool = False  # the actors are gone; what they reported stays readable

    @property
    def resume(self) -> Resume:
        """Where the run continues from (the select-and-write stage's setup)."""
        return self.selector_info.setup["select"]

    def actor_pids(self) -> dict[str, int]:
        """Actor processes on the driver's node, for the memory bound and metrics."""
        here = ray.get_runtime_context().get_node_id()
        out = {"selector": self.selector_info.pid} if self.selector_info.node_id == here else {}
        out.update({f"embedder-{i}": e.pid for i, e in enumerate(self.embed_info) if e.node_id == here})
        out.update({f"shard-{st.shard}": st.pid for st in self.shard_info if st.node_id == here and st.pid})
        return out

    def shutdown(self) -> None:
        if not self.stopped:
            for a in [*self.embedders, self.selector, *self.shards]:
                ray.kill(a, no_restart=True)
            self.stopped = True


def start_graph(scfg: ServeConfig, embed_actors: int, extra_cpus: float = 0.0) -> Graph:
    """Check the cluster can place the graph, then start its actors and set their stages up: the
    shards first (the select-and-write stage talks to them), then `embed_actors` pool actors (0: the
    batches come embedded from elsewhere, as on Ray Data), then the select-and-write actor."""
    s, cfg = scfg.service, scfg.run
    check_resources(scfg, build_stages(cfg, stage_resources(scfg)), extra_cpus)
    shard_actors, clients = start_shards(cfg, s.shard_num_cpus) if cfg.selector.shards > 1 else ([], None)
    stages = build_stages(cfg, stage_resources(scfg), lock_timeout_s=max(30.0, 2 * scfg.kafka.session_timeout_ms / 1000),
                          shards=clients)
    embedders, embed_info = _start_pool(stages, embed_actors)
    selector, selector_info = _start_selector(stages)
    g = Graph(selector, selector_info, embedders, embed_info, shard_actors)
    if shard_actors:
        g.shard_info = ray.get([a.describe.remote() for a in shard_actors])
        log.info("selector shards: %d, on nodes %s; selector shard actor pids %s", len(shard_actors),
                 sorted({i.node_id[:8] for i in g.shard_info}), [i.pid for i in g.shard_info])
    return g


def _start_pool(stages: Stages, n: int) -> tuple[list[ActorHandle], list[ActorInfo]]:
    """`n` actors, each running every stage upstream of select-and-write, spread over the nodes."""
    r = reserved(stages.upstream)
    cls = ray.remote(StageActor).options(num_cpus=r.cpus, num_gpus=r.gpus, max_restarts=3, max_task_retries=3,
                                         scheduling_strategy="SPREAD")
    actors = [cls.remote(stages.upstream) for _ in range(n)]
    infos = ray.get([a.setup.remote() for a in actors])
    if infos:
        e0: EmbedInfo = infos[0].setup["embed"]
        log.info("embedder pool: %d x %s (%s CPU, %s GPU each), on nodes %s", len(actors), e0.model_id,
                 r.cpus, r.gpus, sorted({i.node_id[:8] for i in infos}))
    return actors, infos


def _start_selector(stages: Stages) -> tuple[ActorHandle, ActorInfo]:
    """The select-and-write actor, on the driver's node; its setup resumes the run directory."""
    here = ray.get_runtime_context().get_node_id()
    pin = NodeAffinitySchedulingStrategy(here, soft=False)
    cls = ray.remote(SelectWriteActor).options(num_cpus=stages.select.resources.cpus, scheduling_strategy=pin,
                                               max_restarts=0)
    actor = cls.remote(stages.select)
    return actor, ray.get(actor.setup.remote())
