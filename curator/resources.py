"""What one copy of a stage (or of a filter inside it) needs from the executor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """CPUs and GPUs one copy of a stage needs (Ray actors reserve it; the in-process loop ignores it)."""

    cpus: float = 0.0
    gpus: float = 0.0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpus + other.cpus, self.gpus + other.gpus)
