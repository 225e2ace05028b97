"""The in-process executor: the stages of `build_stages`, run in order in this process.

What `curator ingest`, `curator demo` and the tests run. The Ray executor
(`pipelines.executors.ray`) runs the same stage objects in actors; this one only calls them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from curator.batch import BatchOutcome, RawBatch
from curator.commit import Committed, DeadLetters, Manifest, Offsets, commit
from curator.stages import Resume, Stages, run_chain


class LocalExecutor:
    """Every stage in data-flow order, one batch at a time; commits every `store.commit_every` items."""

    def __init__(self, stages: Stages, dead_letters: DeadLetters | None = None, offsets: Offsets | None = None) -> None:
        self.stages = stages
        self.dead_letters = dead_letters
        self.offsets = offsets
        self.resume: Resume | None = None

    def setup(self) -> Resume:
        """Load the model, open the run directory, restore the last checkpoint if any."""
        for stage in self.stages.upstream:
            stage.setup()
        self.resume = self.stages.select.setup()  # where the run continues from
        return self.resume

    def teardown(self) -> None:
        for stage in self.stages:
            stage.teardown()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def process(self, batch: RawBatch) -> BatchOutcome:
        """One batch through every stage; its rows are staged for the next commit."""
        if batch.embedding_dim is None:
            batch.embedding_dim = self.stages.select.index_dim  # a resumed run keeps its dimension
        return run_chain(self.stages, batch)

    def should_commit(self) -> bool:
        return self.stages.select.due()

    def commit(self, bootstrapped: bool = False, extra: dict[str, Any] | None = None) -> Committed:
        return commit(lambda: self.stages.select.commit(bootstrapped, extra), self.dead_letters, self.offsets)

    @property
    def manifest(self) -> Manifest:
        """The run directory's last committed manifest."""
        return self.stages.select.manifest

    def bootstrap(self, batches: Iterable[RawBatch]) -> int:
        """Insert the trusted bootstrap once per run directory (a resumed run skips it)."""
        if self.stages.select.bootstrapped:
            return 0
        n = 0
        for b in batches:
            b.trusted = True
            n += self.process(b).items
        self.commit(bootstrapped=True)
        return n

    def run(self, batches: Iterable[RawBatch], on_batch: Callable[[BatchOutcome], None] | None = None,
            after_commit: Callable[[Committed], None] | None = None) -> Manifest:
        """The bounded loop: process, commit every `store.commit_every` items, commit at the end;
        returns the final manifest."""
        t0 = time.monotonic()
        for batch in batches:
            res = self.process(batch)
            if on_batch:
                on_batch(res)
            if self.should_commit():
                c = self.commit()
                if after_commit:
                    after_commit(c)
        c = self.commit(extra={"elapsed_s": time.monotonic() - t0})
        if after_commit:
            after_commit(c)
        return self.manifest
