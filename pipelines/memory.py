"""Memory of the service's processes, and the bound that pauses input above a limit.

The bound counts each process's *proportional* set size (PSS): a page shared by several processes --
the object store's shared memory, which every process that reads or writes an object maps, and the
libraries (torch) the actors share -- counts once across them, as it does for the machine (and for
a container's memory limit). Summing resident sizes (RSS) counts it once per process: a sum that
grows with every object-store page a process has touched and has little to do with memory in use.
Both are exported; the bound uses PSS (RSS where the kernel has no smaps_rollup).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.metrics import Metrics

log = logging.getLogger("curator.service")


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default); 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # not Linux: psutil (Ray ships one)

        return int(psutil.Process(pid or os.getpid()).memory_info().rss)
    except Exception:  # noqa: BLE001 - gone, or no permission: no number
        return 0


def pss_bytes(pid: int | None = None) -> int:
    """Proportional set size of a process; its RSS where /proc has no smaps_rollup (not Linux >= 4.14)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss_bytes(pid)


#: a process's PSS is read again for the metrics once its RSS moved by this much (or this share of it)
RSS_MOVE_BYTES, RSS_MOVE_SHARE = 16 * 2**20, 0.02


class MemoryBound:
    """Memory (PSS) of the driver and the actors on its node against a limit, checked 4x a second.

    `over()` tells the driver to stop reading input; the backlog then waits in the source. Reading PSS
    costs the kernel a walk of every mapping (~15 ms of CPU for an actor with torch loaded), RSS almost
    nothing; and PSS <= RSS. So the cheap RSS decides while its sum is under the limit (PSS is then
    under it too), PSS is read only when RSS is over it -- and for the metrics. Over it (torch processes
    share most of their pages, so RSS counts them once per process), PSS is re-read when RSS grew by
    half the room the last reading left (new pages add at most their size to PSS), or after
    `pss_over_every_s` (5 s: what only a sharer outside these processes exiting can change): not 4x a
    second, which cost the driver a third of its CPU, nor every second, still a sixth of it.

    For the metrics, every `pss_every_s` a process's PSS is read again only where its RSS moved (by
    `RSS_MOVE_BYTES` or `RSS_MOVE_SHARE`) since its last reading, or that reading is `pss_max_age_s`
    old: reading all five every 5 s was half of an idle driver's CPU (~18 ms a second), for gauges of
    processes whose memory had not changed. A reading is never taken above the RSS of the moment.
    """

    def __init__(self, limit_mb: int, pids: Callable[[], dict[str, int]], metrics: Metrics | None = None,
                 pss_every_s: float = 5.0, pss_over_every_s: float = 5.0, pss_max_age_s: float = 60.0) -> None:
        self.limit = limit_mb * 2**20
        self._pids_of = pids
        self._pids: dict[str, int] = {}
        self.metrics = metrics
        self.pss_every_s = pss_every_s
        self.pss_over_every_s = pss_over_every_s
        self.pss_max_age_s = pss_max_age_s
        self._t = 0.0
        self._t_pss = -1e9  # the last reading of every process
        self._t_metrics = -1e9  # the last look for the metrics
        self._pss: dict[str, tuple[int, int, float]] = {}  # process -> (PSS, its RSS then, when)
        self._pss_read = (0, 0)  # (PSS total, RSS total) at the last PSS reading
        self._over = False
        self.total = 0

    def over(self) -> bool:
        now = time.monotonic()
        if now - self._t < 0.25:
            return self._over
        self._t = now
        if not self._pids:
            self._pids = self._pids_of()
        pids = {"driver": os.getpid(), **self._pids}
        rss = {name: rss_bytes(pid) for name, pid in pids.items()}
        rss_total = sum(rss.values())
        must = bool(self.limit) and rss_total > self.limit
        read: list[str] = []
        if must and self._pss_due(now, rss_total):
            self._t_pss = self._t_metrics = now
            read = list(pids)
        elif now - self._t_metrics >= self.pss_every_s:
            self._t_metrics = now
            read = [n for n in pids if self._stale(n, rss[n], now)]
        for name in read:
            self._pss[name] = (pss_bytes(pids[name]), rss[name], now)
        # PSS <= RSS: a reading above the RSS of the moment is an overestimate now
        self.total = sum(min(self._pss[n][0], rss[n]) if n in self._pss else rss[n] for n in pids)
        if read:
            self._pss_read = (self.total, rss_total)
        if self.metrics is not None:
            for name in read:
                self.metrics.pss.labels(name).set(self._pss[name][0])
            for name in pids:
                self.metrics.rss.labels(name).set(rss[name])
            self.metrics.rss.labels("total").set(rss_total)
            self.metrics.pss.labels("total").set(self.total)
        over = must and self.total > self.limit
        if over and not self._over:
            log.warning("memory in use (PSS) %.0f MB is over service.memory_limit_mb=%d: pausing input",
                        self.total / 2**20, self.limit // 2**20)
        self._over = over
        return over

    def _stale(self, name: str, rss: int, now: float) -> bool:
        if name not in self._pss:
            return True
        _, rss_then, t = self._pss[name]
        return now - t >= self.pss_max_age_s or abs(rss - rss_then) > max(RSS_MOVE_BYTES, RSS_MOVE_SHARE * rss_then)

    def _pss_due(self, now: float, rss_total: int) -> bool:
        """RSS is over the limit: read PSS again unless the last reading is recent and RSS has not grown
        by half the room it left under the limit."""
        pss, rss = self._pss_read
        return (now - self._t_pss >= self.pss_over_every_s or pss > self.limit
                or rss_total - rss > (self.limit - pss) / 2)
