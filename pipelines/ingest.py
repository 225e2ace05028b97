"""`curator ingest`: one bounded run over files, in this process, with a progress bar.

Files (connectors.files) through the in-process executor (curator.run); re-running on the same
run directory resumes after its last commit.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

from connectors.files import FileSource
from curator.batch import BatchOutcome, RawBatch
from curator.commit import Manifest
from curator.config import ConfigError, RunConfig
from curator.records import KEPT_DECISIONS
from curator.run import LocalExecutor
from curator.stages import build_stages
from curator.store.query import rejection_summary

log = logging.getLogger("curator")


def run_ingest(cfg: RunConfig, progress: bool = True) -> Manifest:
    """A bounded run over `cfg.source.paths` (after the bootstrap, once); returns the final manifest."""
    from tqdm import tqdm

    if not cfg.source.paths:
        raise ConfigError("no input: give files or folders (`curator ingest PATH ...`) or [source] paths")
    src = FileSource(cfg.source.paths, cfg.source.format)  # bad paths fail before the model loads
    with LocalExecutor(build_stages(cfg)) as ex:
        resume = ex.setup()
        if cfg.source.bootstrap:
            ex.bootstrap(FileSource(cfg.source.bootstrap, cfg.source.format).batches(cfg.source.batch_size))
        elif not resume.bootstrapped:
            log.warning("no trusted bootstrap ([source] bootstrap): the first %d accepted items are taken "
                        "unjudged", cfg.selector.min_trusted)
        src.seek(resume.positions)
        bar = tqdm(total=src.total(), unit="item", desc="curating", disable=not progress, dynamic_ncols=True)
        kept = 0

        def batches() -> Iterator[RawBatch]:
            n, limit = 0, cfg.source.limit
            for b in src.batches(cfg.source.batch_size):
                if limit and n >= limit:
                    return
                n += len(b)
                yield b

        def on_batch(res: BatchOutcome) -> None:
            nonlocal kept
            kept += sum(v for k, v in res.counts.items() if k in {d.value for d in KEPT_DECISIONS})
            bar.update(res.items)
            bar.set_postfix(kept=kept, refresh=False)

        done = sum(sum(parts.values()) for parts in resume.positions.values())
        if resume.commit and done:
            bar.write(f"resuming {cfg.store.out} after commit {resume.commit}: {done} items already decided")
        try:
            return ex.run(batches(), on_batch)
        finally:
            bar.close()


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
