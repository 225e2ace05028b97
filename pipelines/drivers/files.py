"""`[source] paths` through the Ray executor, resuming from the manifest's (file, row) positions."""

from __future__ import annotations

from connectors.files import FileSource
from curator.batch import Positions
from pipelines.drivers.common import Driver


class FileDriver(Driver):
    def run(self, start: Positions) -> None:
        src = FileSource(self.cfg.source.paths, self.cfg.source.format)
        src.seek(start)
        limit, n = self.cfg.source.limit, 0
        for b in src.batches(self.cfg.source.batch_size):
            if self.stop.is_set() or (limit and n >= limit):
                break
            n += len(b)
            if self.metrics is not None:
                self.metrics.items_in.labels("files").inc(len(b))
            while not self.ex.room() or self.hold():
                self.ex.pump(0.05)
                self.beat()
            self.ex.submit(b)
            self.ex.pump()
            self.ex.maybe_commit_by_time()
            self.beat()
        self.ended = src.caught_up() or bool(limit and n >= limit)
        self.finish()
