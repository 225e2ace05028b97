"""The service's Prometheus metrics and its small HTTP server (/healthz, /readyz, /metrics, and pages).

Metrics live in their own registry (not prometheus_client's global one), so several services in one
process (tests) never collide. The server binds to the configured host -- loopback by default.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from curator.batch import BatchOutcome
from curator.commit import Committed
from curator.records import Rejection
from curator.report.page import CSP_HEADER
from pipelines.executors.observers import Observer

log = logging.getLogger("curator.service")

#: An HTML page: query parameters -> (status code, UTF-8 body).
Page = Callable[[dict[str, list[str]]], tuple[int, bytes]]
#: Pages run no script and load nothing from elsewhere (they show untrusted data).
PAGE_HEADERS = {
    "Content-Security-Policy": CSP_HEADER,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics(Observer):
    """Everything /metrics reports. Stage labels: embed, select, commit, end_to_end. The executor's
    notes (`Observer`) feed what happens to batches and commits; the drivers set the source's gauges."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.items_in = Counter("curator_items_in", "Items that entered the graph from the source "
                                "(records and unreadable messages)", ["source"], registry=r)
        self.items_out = Counter("curator_items_out", "Items decided, per decision", ["decision"], registry=r)
        self.dead_letters = Counter("curator_dead_letters", "Rejected input sent to the dead-letter sink / "
                                    "quarantine table", registry=r)
        self.lag = Gauge("curator_kafka_lag", "End offset minus committed position, per partition",
                         ["partition"], registry=r)
        self.queue_items = Gauge("curator_queue_items", "Items waiting per stage: source (read, not yet "
                                 "sent), embed (in the pool), select (embedded, waiting for the selector)",
                                 ["stage"], registry=r)
        self.backpressure = Gauge("curator_backpressure", "1 while the source is not read because the graph, "
                                  "the merge buffer or the memory bound is full", registry=r)
        self.refetched = Counter("curator_source_seek_backs", "Times a partition's buffered tail was dropped "
                                 "and re-fetched later (backpressure while waiting on another partition)",
                                 registry=r)
        self.polls = Counter("curator_source_polls", "Polls of the source, by whether they brought messages: "
                             "items in over polls with data is what each poll's fixed cost is spread over",
                             ["result"], registry=r)
        self.batch_seconds = Histogram("curator_batch_seconds", "Latency of one batch per stage", ["stage"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.offset_gaps = Counter("curator_source_offset_gaps", "Offsets the source skipped: messages deleted by "
                                   "retention before they were read, compacted away, or transaction markers",
                                   registry=r)
        self.index_size = Gauge("curator_index_size", "Items in the selector's FAISS index", registry=r)
        self.shard_items = Gauge("curator_shard_items", "Items indexed per selector shard (selector.shards)",
                                 ["shard"], registry=r)
        self.shard_search_seconds = Histogram("curator_shard_search_seconds", "Latency of one batch's search per "
                                              "selector shard", ["shard"], buckets=_LATENCY_BUCKETS, registry=r)
        self.commits = Counter("curator_commits", "Checkpoints (manifests) made durable", registry=r)
        self.last_commit = Gauge("curator_last_commit_timestamp_seconds", "Time of the last durable commit",
                                 registry=r)
        self.rss = Gauge("curator_resident_memory_bytes", "Resident memory (RSS) per process of the service "
                         "(driver, selector, embedder-N, total: shared pages counted once per process)", ["process"],
                         registry=r)
        self.pss = Gauge("curator_memory_pss_bytes", "Proportional set size per process (driver, selector, "
                         "embedder-N, total: shared pages counted once); service.memory_limit_mb bounds the total",
                         ["process"], registry=r)
        self.ready = Gauge("curator_ready", "1 when the service accepts input (resumed, bootstrapped, not "
                           "draining)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- fed by the executor -------------------------------------------------------------------
    def note_rejections(self, rejects: list[Rejection]) -> None:
        if rejects:
            self.dead_letters.inc(len(rejects))

    def note_upstream(self, seconds: dict[str, float]) -> None:
        for stage, secs in seconds.items():
            self.batch_seconds.labels(stage).observe(secs)

    def note_outcome(self, out: BatchOutcome, trusted: bool, end_to_end_s: float) -> None:
        for d, n in out.counts.items():
            self.items_out.labels(d).inc(n)
        for stage in ("select", "write"):
            self.batch_seconds.labels(stage).observe(out.seconds.get(stage, 0.0))
        self.batch_seconds.labels("end_to_end").observe(end_to_end_s)
        for k, (items, secs) in out.shards.items():
            self.shard_items.labels(str(k)).set(items)
            if secs:
                self.shard_search_seconds.labels(str(k)).observe(secs)
        self.index_size.set(out.index_size)

    def note_commit(self, done: Committed) -> None:
        self.commits.inc()
        self.batch_seconds.labels("commit").observe(done.seconds)
        self.last_commit.set(time.time())


class HealthServer:
    """/healthz (the driver loop is alive), /readyz (resumed and consuming), /metrics, on a thread;
    plus `pages` (path -> HTML page: the status page at /, the report at /report)."""

    def __init__(self, host: str, port: int, metrics: Metrics, healthy: Callable[[], bool],
                 ready: Callable[[], bool], pages: dict[str, Page] | None = None) -> None:
        self.metrics = metrics
        self.pages = dict(pages or {})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path, _, query = self.path.partition("?")
                if path in outer.pages:
                    try:
                        code, body = outer.pages[path](parse_qs(query))
                    except Exception:  # noqa: BLE001 - a page must never take the endpoints down
                        log.exception("page %s failed", path)
                        self._send(500, b"page failed; see the service log\n")
                        return
                    self._send(code, body, "text/html; charset=utf-8", PAGE_HEADERS)
                elif path == "/metrics":
                    self._send(200, outer.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"driver loop stalled\n")
                elif path == "/readyz":
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"try /, /healthz, /readyz or /metrics\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                      headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("http: " + fmt, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.host, self.port = self.server.server_address[:2]
        self._thread = threading.Thread(target=self.server.serve_forever, name="curator-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
