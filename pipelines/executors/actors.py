"""The two actor classes: the stages upstream of selection as one chain, and the checkpointed
select-and-write stage on its own.

`StageActor` runs whatever stages come before select-and-write (validate, embed, and any added to
`build_stages`), in order, without knowing what they are; `SelectWriteActor` holds the one stage
that keeps state across batches, so it is placed once and its commits queue behind the batches
they cover. Both report where they run and what each stage's `setup()` returned, by role.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import ray

from curator.batch import BatchOutcome, EmbeddedBatch, RawBatch, ValidBatch
from curator.commit import Committed
from curator.records import Rejection
from curator.resources import Resources
from curator.stages import SelectWriteStage, Stage, run_chain
from pipelines.memory import rss_bytes


@dataclass(frozen=True)
class ActorInfo:
    pid: int
    node_id: str
    node_ip: str
    setup: dict[str, Any]  # what each stage's setup() returned, by role


@dataclass(frozen=True)
class StageReport:
    """What the driver learns of a batch as soon as the upstream stages are done with it."""

    items: int
    rejects: list[Rejection]
    seconds: dict[str, float]


def actor_info(stages: list[Stage]) -> ActorInfo:
    """Set the stages up in this actor; where it runs and what each setup returned, by role."""
    infos = {s.name: s.setup() for s in stages}
    return ActorInfo(os.getpid(), ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), infos)


def actor_logging() -> None:
    """Let this actor's `curator` loggers speak at INFO, as the driver's do: Ray hands a worker's
    stderr to the driver's log, but a worker's logging says only warnings until it is told more. What
    the stages do to the run directory (resuming, removing what a crash left) belongs in the service's
    log."""
    cur = logging.getLogger("curator")
    if not cur.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        cur.addHandler(handler)
        cur.propagate = False
    if cur.getEffectiveLevel() > logging.INFO:
        cur.setLevel(logging.INFO)


def reserved(stages: list[Stage]) -> Resources:
    """What an actor running these stages reserves: the sum of their declarations."""
    return sum((s.resources for s in stages), Resources())


class StageActor:
    """A chain of stages in one process (any stages upstream of the checkpointed one, in order): set
    up once, then one batch at a time."""

    def __init__(self, stages: list[Stage]) -> None:
        actor_logging()
        self.stages = stages

    def setup(self) -> ActorInfo:
        return actor_info(self.stages)

    def process(self, batch: RawBatch | ValidBatch) -> EmbeddedBatch:
        return run_chain(self.stages, batch)

    def process_reported(self, batch: RawBatch | ValidBatch) -> tuple[EmbeddedBatch, StageReport]:
        """`process`, plus a small report for the driver (two results: the batch goes on to the next
        actor without passing through the driver)."""
        out = run_chain(self.stages, batch)
        return out, StageReport(out.items, out.rejects, dict(out.seconds))

    def rss(self) -> int:
        return rss_bytes()


class SelectWriteActor:
    """The checkpointed select-and-write stage in its own process: batches in stream order, commits
    queued behind them."""

    def __init__(self, stage: SelectWriteStage) -> None:
        actor_logging()
        self.stage = stage

    def setup(self) -> ActorInfo:
        return actor_info([self.stage])

    def process(self, batch: EmbeddedBatch) -> BatchOutcome:
        return run_chain([self.stage], batch)

    def commit(self, bootstrapped: bool = False) -> Committed:
        """Everything processed so far made durable (steps 1-3 of `curator.commit`)."""
        return self.stage.commit(bootstrapped)

    def rss(self) -> int:
        return rss_bytes()
