"""What every driver does besides reading its source: heartbeats, queue metrics, the memory bound, the
final drain and commit."""

from __future__ import annotations

import logging
import threading

from curator.batch import Positions
from pipelines.config import ServeConfig
from pipelines.executors.ray import RayExecutor
from pipelines.memory import MemoryBound
from pipelines.metrics import Metrics

log = logging.getLogger("curator.service")


class Driver:
    """Runs a source through the executor until it ends or `stop` is set; then drains and commits."""

    def __init__(self, scfg: ServeConfig, executor: RayExecutor, metrics: Metrics | None,
                 stop: threading.Event) -> None:
        self.scfg = scfg
        self.cfg = scfg.run
        self.ex = executor
        self.metrics = metrics
        self.stop = stop
        self.ended = False
        self.memory = MemoryBound(scfg.service.memory_limit_mb, executor.actor_pids, metrics)

    def run(self, start: Positions) -> None:
        """Read the source from `start` until it ends or `stop` is set, then `finish()`."""
        raise NotImplementedError

    def beat(self) -> None:
        self.ex.beat()
        m = self.metrics
        if m is not None:
            emb, sel = self.ex.queued_items()
            m.queue_items.labels("embed").set(emb)
            m.queue_items.labels("select").set(sel)

    def hold(self) -> bool:
        """Stop reading: resident memory is over the bound and there is work in flight to wait for."""
        return self.memory.over() and not self.ex.idle()

    def finish(self) -> None:
        ok = self.ex.drain(self.scfg.service.drain_timeout_s if self.stop.is_set() else None)
        if not ok:
            log.error("in-flight batches did not finish within %.0fs; exiting without them (they are replayed "
                      "from the last commit on restart)", self.scfg.service.drain_timeout_s)
            return
        self.ex.commit_now()
