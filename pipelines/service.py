"""`curator serve`: the long-running ingestion service on Ray (Kafka, or files through the same graph).

::

    curator serve --config curator.toml                 # starts a local Ray unless $RAY_ADDRESS is set
    ray job submit --working-dir . -- curator serve --config curator.toml   # on a cluster

It runs until stopped (or, for files and with ``kafka.end_after_idle_s``, until the input is
exhausted), serving ``/healthz``, ``/readyz`` and ``/metrics`` on ``service.host:service.port``
(127.0.0.1:9108 by default). SIGTERM (or Ctrl-C) stops polling, finishes the batches in flight,
commits (manifest, then Kafka offsets) and exits 0. A restart -- after a clean stop or a crash --
resumes from the last manifest. Ray is imported only when the command runs.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING

from curator.config import ConfigError
from pipelines.config import ServeConfig
from pipelines.run_skeleton import bootstrap_or_warn, log_throughput, resume_line

if TYPE_CHECKING:
    from types import FrameType

    from curator.commit import Manifest
    from curator.stages import Resume
    from pipelines.drivers.common import Driver
    from pipelines.executors.ray import RayExecutor
    from pipelines.metrics import HealthServer

log = logging.getLogger("curator.service")


class Service:
    """One service run: HTTP endpoints, the Ray graph, the driver loop, signal-driven drain."""

    def __init__(self, scfg: ServeConfig) -> None:
        from pipelines.metrics import Metrics
        from pipelines.status import StatusBoard

        self.scfg = scfg
        self.metrics = Metrics()
        self.status = StatusBoard(self.metrics, scfg.run.store.out)
        self.stop = threading.Event()
        self.executor: RayExecutor | None = None
        self.driver: Driver | None = None
        self.is_ready = False
        self.failed = False
        self.http: HealthServer | None = None
        self.manifest: Manifest | None = None

    def healthy(self) -> bool:
        if self.failed:
            return False
        ex = self.executor
        return ex is None or time.monotonic() - ex.heartbeat < 120

    def ready(self) -> bool:
        return self.is_ready and not self.stop.is_set() and not self.failed

    def _signals(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            if self.stop.is_set():
                log.warning("second %s: exiting now; the last commit is what a restart resumes from",
                            signal.Signals(signum).name)
                os._exit(130 if signum == signal.SIGINT else 143)
            log.info("%s: draining in-flight batches, committing, then exiting", signal.Signals(signum).name)
            self.stop.set()
            self.metrics.ready.set(0)

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
            signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        from pipelines.executors.placement import init_ray
        from pipelines.metrics import HealthServer

        s = self.scfg.service
        try:
            http = self.http = HealthServer(s.host, s.port, self.metrics, self.healthy, self.ready,
                                            self.status.pages()).start()
        except OSError as exc:
            raise ConfigError(f"cannot serve HTTP on {s.host}:{s.port} ({exc.strerror or exc}); set service.port "
                              "(0 = any free port) or service.host") from None
        log.info("serving /healthz /readyz /metrics on http://%s:%d", http.host, http.port)
        log.info("status page: http://%s:%d/ (report of the last commit: /report)", http.host, http.port)
        ray, owned = init_ray(self.scfg)
        self._signals()  # after ray.init, which installs its own SIGTERM handler in the driver
        try:
            return self._run()
        except BaseException:
            self.failed = True
            raise
        finally:
            self.is_ready = False
            if self.executor is not None:
                self.executor.shutdown()
            if owned:
                ray.shutdown()
            http.close()

    def _run(self) -> int:
        from pipelines.executors.ray import RayExecutor

        k = self.scfg.kafka
        dead = None
        if self.scfg.uses_kafka and k.dead_letter_topic:
            from connectors.kafka.dead_letters import KafkaDeadLetterSink

            dead = KafkaDeadLetterSink(k.bootstrap_servers, k.dead_letter_topic, k.api_version,
                                       {**k.client, **k.producer})
        self.executor = ex = RayExecutor(self.scfg, dead, observers=[self.metrics])
        try:
            return self._serve(ex)
        finally:
            if dead is not None:
                dead.close()

    def _serve(self, ex: RayExecutor) -> int:
        from connectors.files import FileSource
        from pipelines.executors.feed import bootstrap

        cfg = self.scfg.run
        resume = ex.start()
        where = f"{resume.out} on node {ex.selector_info.node_ip}"
        log.info("selector/writer actor pid %d, embedder actor pids %s", ex.selector_info.pid,
                 [e.pid for e in ex.embed_info])
        log.info(resume_line(resume, where))
        if self.stop.is_set():
            return 0

        def insert() -> int:
            boot = FileSource(cfg.source.bootstrap, cfg.source.format)
            return bootstrap(ex, boot.batches(cfg.source.batch_size), self.stop)

        if not bootstrap_or_warn(cfg, resume, insert, lambda: ex.index_size, log):
            return 0
        self.driver = self._driver(ex)
        ex.add_observer(self.status)  # the status page's recent rejections and last commit
        self.is_ready = True
        self.metrics.ready.set(1)
        self.driver.run(resume.positions)
        self._finished(ex, resume, where)
        return 0

    def _driver(self, ex: RayExecutor) -> Driver:
        k, cfg = self.scfg.kafka, self.scfg.run
        if self.scfg.uses_kafka:
            from pipelines.drivers.kafka import KafkaDriver

            kafka = KafkaDriver(self.scfg, ex, self.metrics, self.stop)
            log.info("consuming %s from %s as group %r (order: %s)", k.topic, k.bootstrap_servers,
                     k.group_id, k.order)
            return kafka
        from pipelines.drivers.files import FileDriver

        files = FileDriver(self.scfg, ex, self.metrics, self.stop)
        log.info("reading %d input path(s) from [source] paths", len(cfg.source.paths))
        return files

    def _finished(self, ex: RayExecutor, resume: Resume, where: str) -> None:
        from curator.store import read_manifest

        self.manifest = read_manifest(resume.out)
        commit = self.manifest["commit"] if self.manifest else 0
        why = "stopped" if self.stop.is_set() else "input exhausted"
        counts = ", ".join(f"{d} {n}" for d, n in sorted(ex.counts.items())) or "nothing new"
        log.info("%s: this run decided %s; curated set %s at commit %d", why, counts, where, commit)
        log_throughput(*ex.throughput(), log)
        print(f"curated set: {where} (commit {commit}); query it with: "
              f"curator query {resume.out} \"SELECT decision, count(*) FROM decisions GROUP BY 1\"", flush=True)


def serve(scfg: ServeConfig) -> int:
    """Run the service to completion (a stop signal, or the end of bounded input); returns the exit code."""
    return Service(scfg).run()
