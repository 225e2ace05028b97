"""The service's live status page (``/``) and its current report (``/report``).

The page is rendered from the service's Prometheus registry, read back sample by sample, so it
shows exactly what ``/metrics`` exports; the only things it adds are the ones Prometheus has no
place for: a small bounded buffer of recent rejections (with their reasons) and the last commit.
Both come from the Ray executor, which tells its observers (`pipelines.executors.observers`) about
each batch's rejections and each durable commit; observing changes nothing in the commit protocol.

Rejections carry untrusted text (ids, reasons quoting message bytes): the page prints them only
through the report's autoescaping templates, and it is served with a script-free
Content-Security-Policy. It refreshes itself with a meta tag, not a script.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.batch import positions_to_json
from curator.commit import Committed
from curator.records import Rejection
from pipelines.executors.observers import Observer
from pipelines.metrics import Metrics

log = logging.getLogger("curator.service")

#: Recent rejections kept for the page (the quarantine table has all of them).
RECENT_REJECTIONS = 50
#: Window over which throughput is computed.
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class RecentRejection:
    at: float
    source: str
    partition: int
    offset: int
    id: str | None
    reason: str


def samples(registry: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of a prometheus_client registry: {sample name: [(labels, value)]} (as /metrics has them)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for metric in registry.collect():
        for s in metric.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def _by(smp: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str) -> dict[str, float]:
    return {lab.get(label, ""): v for lab, v in smp.get(name, [])}


def _one(smp: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    vals = smp.get(name)
    return vals[0][1] if vals else None


class StatusBoard(Observer):
    """What the status page needs beyond the registry; thread-safe (the HTTP server has threads)."""

    def __init__(self, metrics: Metrics, run_dir: str | Path, maxlen: int = RECENT_REJECTIONS) -> None:
        self.metrics = metrics
        self.run_dir = Path(run_dir).resolve()
        self.started = time.time()
        self.rejections: deque[RecentRejection] = deque(maxlen=maxlen)
        self.last_commit: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._history: deque[tuple[float, dict[str, float]]] = deque()
        self._report: tuple[Any, bytes] | None = None
        self._report_lock = threading.Lock()

    # --- fed by the executor (an Observer) ------------------------------------------------------------
    def note_rejections(self, rejects: list[Rejection]) -> None:
        now = time.time()
        with self._lock:
            for r in rejects:
                p = r.position
                self.rejections.appendleft(RecentRejection(now, str(p.source), int(p.partition), int(p.offset),
                                                           None if r.id is None else str(r.id), str(r.reason)))

    def note_commit(self, c: Committed) -> None:
        with self._lock:
            self.last_commit = {"commit": c.commit, "at": time.time(), "seconds": c.seconds,
                                "positions": positions_to_json(c.positions)}

    # --- pages --------------------------------------------------------------------------
    def pages(self) -> dict[str, Callable[[dict[str, list[str]]], tuple[int, bytes]]]:
        return {"/": self.status_page, "/report": self.report_page}

    def _rates(self, totals: dict[str, float], now: float) -> dict[str, float]:
        with self._lock:
            h = self._history
            if not h or now - h[-1][0] >= 1.0:
                h.append((now, dict(totals)))
            while len(h) > 1 and now - h[1][0] > RATE_WINDOW_S:
                h.popleft()
            t0, old = h[0]
        if now - t0 < 1.0:  # no earlier sample: the rate since the service started
            t0, old = self.started, {}
        dt = max(now - t0, 1e-9)
        return {d: max(0.0, (v - old.get(d, 0.0)) / dt) for d, v in totals.items()}

    def view(self) -> dict[str, Any]:
        """Everything the page shows, as plain data (the test compares it with /metrics)."""
        from curator.store import StoreError, read_manifest

        smp = samples(self.metrics.registry)
        now = time.time()
        out_totals = _by(smp, "curator_items_out_total", "decision")
        rates = self._rates(out_totals, now)
        lat_sum = _by(smp, "curator_batch_seconds_sum", "stage")
        lat_n = _by(smp, "curator_batch_seconds_count", "stage")
        try:
            manifest = read_manifest(self.run_dir)
        except StoreError:
            manifest = None
        with self._lock:
            rejections = list(self.rejections)
            last = dict(self.last_commit) if self.last_commit else None
        if last is None and manifest is not None:
            last = {"commit": manifest.get("commit"), "at": manifest.get("updated"), "seconds": None,
                    "positions": manifest.get("positions") or {}}
        return {
            "run_dir": str(self.run_dir), "uptime_s": now - self.started, "now": now,
            "ready": _one(smp, "curator_ready"), "backpressure": _one(smp, "curator_backpressure"),
            "throughput": [{"decision": d, "total": v, "per_s": rates.get(d, 0.0)}
                           for d, v in sorted(out_totals.items(), key=lambda kv: -kv[1])],
            "items_in": _by(smp, "curator_items_in_total", "source"),
            "lag": sorted(_by(smp, "curator_kafka_lag", "partition").items(),
                          key=lambda kv: (len(kv[0]), kv[0])),
            "queues": _by(smp, "curator_queue_items", "stage"),
            "latency": {st: lat_sum[st] / n for st, n in lat_n.items() if n},
            "index_size": _one(smp, "curator_index_size"),
            "dead_letters": _one(smp, "curator_dead_letters_total"),
            "commits": _one(smp, "curator_commits_total"),
            "last_commit_ts": _one(smp, "curator_last_commit_timestamp_seconds"),
            "memory": _by(smp, "curator_resident_memory_bytes", "process"),
            "last_commit": last, "rejections": rejections,
            "has_report": manifest is not None,
        }

    def status_page(self, query: dict[str, list[str]]) -> tuple[int, bytes]:
        from curator.report.page import render

        try:
            refresh = max(0, min(3600, int((query.get("refresh") or ["5"])[0])))
        except ValueError:
            refresh = 5
        return 200, render("status.html.j2", v=self.view(), refresh=refresh).encode("utf-8")

    def report_page(self, query: dict[str, list[str]]) -> tuple[int, bytes]:
        """The report of the run as of its last commit (rendered once per commit)."""
        from curator.report.build import build_report
        from curator.report.page import render
        from curator.store import read_manifest

        manifest = read_manifest(self.run_dir)
        if manifest is None:
            return 503, render("status_message.html.j2", title="No report yet",
                               message="Nothing has been committed yet; the report appears after the first "
                                       "commit.").encode("utf-8")
        key = (manifest.get("commit"), manifest.get("updated"))
        with self._report_lock:
            if self._report is None or self._report[0] != key:
                t0 = time.perf_counter()
                self._report = (key, build_report(self.run_dir).encode("utf-8"))
                log.info("report of commit %s rendered in %.1fs", key[0], time.perf_counter() - t0)
            return 200, self._report[1]
