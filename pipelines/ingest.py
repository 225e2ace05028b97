"""`curator ingest`: one bounded run over files, in this process, with a progress bar.

Files (connectors.files) through the in-process executor (curator.run), inside the run skeleton
every engine shares (pipelines.run_skeleton); re-running on the same run directory resumes after
its last commit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from connectors.files import FileSource
from curator.batch import RawBatch
from curator.commit import Manifest
from curator.config import ConfigError, RunConfig
from curator.run import LocalExecutor
from curator.stages import build_stages
from curator.store.query import rejection_summary
from pipelines.run_skeleton import Progress, bootstrap_or_warn, limited


def run_ingest(cfg: RunConfig, progress: bool = True) -> Manifest:
    """A bounded run over `cfg.source.paths` (after the bootstrap, once); returns the final manifest."""
    if not cfg.source.paths:
        raise ConfigError("no input: give files or folders (`curator ingest PATH ...`) or [source] paths")
    src = FileSource(cfg.source.paths, cfg.source.format)  # bad paths fail before the model loads
    with LocalExecutor(build_stages(cfg)) as ex:
        resume = ex.setup()
        bootstrap_or_warn(cfg, resume, lambda: ex.bootstrap(_bootstrap_batches(cfg)),
                          lambda: ex.stages.select.index_size)
        src.seek(resume.positions)
        with Progress(src.total(), "curating", progress, resume) as bar:
            return ex.run(limited(src.batches(cfg.source.batch_size), cfg.source.limit), bar.note_outcome)


def _bootstrap_batches(cfg: RunConfig) -> Iterator[RawBatch]:
    return FileSource(cfg.source.bootstrap, cfg.source.format).batches(cfg.source.batch_size)


def rejection_gate(out: str, max_share: float) -> int:
    """The end of a run: the rejections by code when there were any, and exit status 1 when they are more
    than `max_share` of the run's input (0 or 1: never) -- a run that rejects most of its input has
    almost always been handed data in a shape it does not read, and a script must not take it for done."""
    rejected, total, text = rejection_summary(out)
    if text:
        print(text)
    if 0.0 < max_share < 1.0 and total and rejected > max_share * total:
        print(f"curator ingest: error: {rejected} of {total} input items ({100.0 * rejected / total:.1f}%) were "
              f"rejected, over source.max_reject_share = {max_share:g}: see the codes and reasons above; "
              "--source.max-reject-share 0 accepts such a run",
              file=sys.stderr)
        return 1
    return 0
