"""Resident memory of the service's processes, and the bound that pauses input above a limit."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

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


class MemoryBound:
    """Resident memory of the driver and the actors on its node against a limit (read 4x a second).

    `over()` tells the driver to stop reading input; the backlog then waits in the source.
    """

    def __init__(self, limit_mb: int, pids: Callable[[], dict[str, int]], metrics: Any = None) -> None:
        self.limit = limit_mb * 2**20
        self._pids_of = pids
        self._pids: dict[str, int] = {}
        self.metrics = metrics
        self._t = 0.0
        self._over = False
        self.total = 0

    def over(self) -> bool:
        now = time.monotonic()
        if now - self._t < 0.25:
            return self._over
        self._t = now
        if not self._pids:
            self._pids = self._pids_of()
        per = {"driver": rss_bytes(), **{name: rss_bytes(pid) for name, pid in self._pids.items()}}
        self.total = sum(per.values())
        if self.metrics is not None:
            for name, v in per.items():
                self.metrics.rss.labels(name).set(v)
            self.metrics.rss.labels("total").set(self.total)
        over = bool(self.limit) and self.total > self.limit
        if over and not self._over:
            log.warning("resident memory %.0f MB is over service.memory_limit_mb=%d: pausing input",
                        self.total / 2**20, self.limit // 2**20)
        self._over = over
        return over
