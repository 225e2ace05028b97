"""One curation run in-process: validate -> embed -> select -> write -> commit.

`Curation` holds the stages and the run's durable state; `run_source` is the loop over
a bounded source (what `curator ingest` and `curator demo` run). The Ray pipelines wrap
the same stages in actors; they do not reimplement them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from connectors.base import Positions, RawBatch, advance, positions_from_json
from curator.config import RunConfig, to_toml
from curator.embed import Embedder, Embeddings, build_embedder
from curator.records import (
    Limits,
    Position,
    Rejection,
    rejection_decisions,
    rejections_table,
    validate_records,
)
from curator.selector import InfoGrowthSelector, Selection, kept_table
from curator.store import StoreWriter

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What one batch did: counts per decision, for progress and metrics."""

    counts: Counter[str] = field(default_factory=Counter)
    items: int = 0


def embedding_rejections(samples: pa.Table, errors: dict[int, str]) -> list[Rejection]:
    """Rejections, at their positions, for the rows an embedder could not embed (in row order)."""
    out = []
    for j in sorted(errors):
        row = samples.slice(j, 1).select(["id", "source", "partition", "offset"]).to_pylist()[0]
        out.append(Rejection(Position(row["source"], row["partition"], row["offset"]), errors[j], row["id"]))
    return out


class Curation:
    """The stages of one run and its durable state (store, selector, positions)."""

    def __init__(self, cfg: RunConfig, embedder: Embedder | None = None, shard: int = 0) -> None:
        self.cfg = cfg
        self.limits = Limits()
        self.embedder = embedder or build_embedder(cfg.embedder, self.limits)
        self.shard = shard
        self.positions: Positions = {}
        self.selector: InfoGrowthSelector | None = None
        self.writer: StoreWriter | None = None
        self.bootstrapped = False
        self.resumed_from = 0  # commit number a restarted run continues from
        self.fingerprint = cfg.fingerprint()

    # --- lifecycle ----------------------------------------------------------------------
    def setup(self) -> None:
        """Load the model, open the run directory, restore the last checkpoint if any."""
        self.embedder.setup()
        out = Path(self.cfg.store.out)
        meta = {"model": self.embedder.model_id, "config_fingerprint": self.fingerprint}
        self.writer = StoreWriter.open(out, meta, self.shard)
        (out / "config.toml").write_text(to_toml(self.cfg))
        self.selector = InfoGrowthSelector(
            self.cfg.selector, self.cfg.index, self.embedder.model_id, self.fingerprint,
            text_embed=self.embedder.embed_texts if self.embedder.text_dim else None,
        )
        m = self.writer.manifest
        if m["commit"] > 0:
            self.positions = positions_from_json(m["positions"])
            st = m.get("selector_state")
            if st:
                self.selector.load_state_dict(st)
                if m.get("checkpoint"):
                    self.selector.load_indexes(out / m["checkpoint"], st["modalities"])
            self.bootstrapped = bool(m.get("bootstrapped"))
            self.resumed_from = int(m["commit"])
            log.info("resuming %s from commit %d (%d items decided)", out, m["commit"], self.selector.seq)

    # --- stages -------------------------------------------------------------------------
    def _embed_valid(self, samples: pa.Table, rejects: list[Rejection]) -> tuple[pa.Table, Embeddings]:
        emb = self.embedder.embed(samples) if samples.num_rows else None
        if emb is not None and emb.errors:
            rejects.extend(embedding_rejections(samples, emb.errors))
            good = np.setdiff1d(np.arange(samples.num_rows), np.asarray(sorted(emb.errors)))
            samples = samples.take(pa.array(good, pa.int64()))
            emb = emb.take(good)
        return samples, emb  # type: ignore[return-value]

    def process(self, batch: RawBatch, trusted: bool = False) -> BatchResult:
        """Validate, embed and select one batch; stage its rows for the next commit."""
        assert self.selector is not None and self.writer is not None, "call setup() first"
        samples, rejects = validate_records(batch.records, batch.positions, self.limits)
        rejects = list(batch.errors) + rejects
        samples, emb = self._embed_valid(samples, rejects)
        res = BatchResult(items=len(batch))
        if samples.num_rows:
            sel: Selection = (self.selector.bootstrap if trusted else self.selector.select)(samples, emb)
            self.writer.stage("decisions", sel.decisions)
            self.writer.stage("kept", kept_table(samples, emb, sel, self.cfg.store.store_images))
            res.counts.update(sel.decisions.column("decision").to_pylist())
        if rejects:
            self.writer.stage("quarantine", rejections_table(rejects))
            self.writer.stage("decisions", rejection_decisions(rejects, self.selector.model_id, self.fingerprint))
            res.counts["rejected-bad-input"] += len(rejects)
            if self.selector is not None:
                self.selector.counts["rejected-bad-input"] += len(rejects)
        if not trusted:
            advance(self.positions, batch.positions + [r.position for r in batch.errors])
        return res

    def commit(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make everything processed so far durable; returns the manifest (positions to commit)."""
        assert self.selector is not None and self.writer is not None
        sel = self.selector
        return self.writer.commit(
            self.positions,
            sel.state_dict(),
            sel.save_indexes,
            {"bootstrapped": self.bootstrapped, "counts": dict(sel.counts), **(extra or {})},
        )

    def should_commit(self) -> bool:
        assert self.writer is not None
        return self.writer.pending_rows("decisions") >= self.cfg.store.commit_every

    def run_bootstrap(self, batches: Iterable[RawBatch]) -> int:
        """Insert the trusted bootstrap once per run directory (a resumed run skips it)."""
        if self.bootstrapped:
            return 0
        n = 0
        for b in batches:
            n += self.process(b, trusted=True).items
        self.bootstrapped = True
        self.commit()
        log.info("bootstrap: %d trusted items, index holds %d", n, len(self.selector or []))
        return n


def run_source(
    cur: Curation,
    batches: Iterable[RawBatch],
    on_batch: Callable[[BatchResult], None] | None = None,
    after_commit: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """The bounded loop: process, commit every `store.commit_every` items, commit at the end.

    `after_commit` receives each durable manifest: the place to commit source offsets, so they
    never run ahead of what is on disk.
    """
    t0 = time.monotonic()
    for batch in batches:
        res = cur.process(batch)
        if on_batch:
            on_batch(res)
        if cur.should_commit():
            m = cur.commit()
            if after_commit:
                after_commit(m)
    m = cur.commit({"elapsed_s": time.monotonic() - t0})
    if after_commit:
        after_commit(m)
    return m
