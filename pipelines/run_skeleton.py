"""What every run does around its stream loop, in one place: the resume line, the bootstrap (or the
warning that there is none), the progress bar of a bounded run, the input limit, the throughput line.

Used by `curator ingest` (`pipelines.ingest`, in this process), `curator ingest --engine ray`
(`pipelines.drivers.ray_data`) and `curator serve` (`pipelines.service`), so the three say the same
things the same way; how each one moves batches is its executor's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from tqdm import tqdm

from curator.batch import BatchOutcome, EmbeddedBatch, RawBatch
from curator.config import RunConfig
from curator.records import KEPT_DECISIONS
from pipelines.executors.observers import Observer

if TYPE_CHECKING:
    from curator.stages import Resume

log = logging.getLogger("curator")

B = TypeVar("B", RawBatch, EmbeddedBatch)
KEPT = frozenset(d.value for d in KEPT_DECISIONS)


def resume_line(resume: Resume, where: str) -> str:
    """Where the curated set is, and whether the run is new or continues after a commit."""
    if resume.commit:
        return f"curated set: {where} -- resuming after commit {resume.commit} ({resume.decided} items decided)"
    return f"curated set: {where} -- new run"


def bootstrap_or_warn(cfg: RunConfig, resume: Resume, insert: Callable[[], int], index_size: Callable[[], int],
                      logger: logging.Logger = log) -> bool:
    """Insert the trusted bootstrap (`[source] bootstrap`) once per run directory with `insert` (items
    inserted, -1: stopped first), or say that the first accepted items will be taken unjudged.
    Returns False when the run was stopped during the bootstrap."""
    if resume.bootstrapped:
        return True
    if not cfg.source.bootstrap:
        logger.warning("no trusted bootstrap ([source] bootstrap): the first %d accepted items are taken "
                       "unjudged", cfg.selector.min_trusted)
        return True
    n = insert()
    if n < 0:
        return False
    logger.info("bootstrap: %d trusted items inserted, index holds %d", n, index_size())
    return True


def limited(batches: Iterable[B], limit: int) -> Iterator[B]:
    """`source.limit`: the batches up to and including the one that reaches `limit` items (0: all)."""
    n = 0
    for b in batches:
        if limit and n >= limit:
            return
        n += b.items if isinstance(b, EmbeddedBatch) else len(b)
        yield b


def log_throughput(items: int, seconds: float, logger: logging.Logger = log) -> None:
    if items and seconds > 0:
        logger.info("throughput: %d items in %.2fs = %.1f items/s (first item sent to last item decided)",
                    items, seconds, items / seconds)


class Progress(Observer):
    """A bounded run's progress bar: stream items decided (of `total`), and how many were kept. A
    resumed run says so above the bar (`resume_line`)."""

    def __init__(self, total: int | None, desc: str, enabled: bool, resume: Resume) -> None:
        self.bar = tqdm(total=total, unit="item", desc=desc, disable=not enabled, dynamic_ncols=True)
        self.kept = 0
        if resume.commit:
            self.bar.write(resume_line(resume, resume.out))
        self.bar.update(0)

    def note_outcome(self, out: BatchOutcome, trusted: bool = False, end_to_end_s: float = 0.0) -> None:
        if trusted:
            return
        self.kept += sum(n for d, n in out.counts.items() if d in KEPT)
        self.bar.update(out.items)
        self.bar.set_postfix(kept=self.kept, refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
