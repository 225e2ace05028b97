"""The filter stage: after validation, before embedding, so a filtered item is never embedded.

Every configured filter scores every item of the batch; an item outside any filter's keep range gets
its one decision here, `dropped-filtered`, with a reason naming each filter it failed
("filter caption_words: 2 < min 3"), and leaves the batch. The items that pass go on with every
filter's score in a `filters` column, which the select stage copies into their decision records, so
the scores of kept and dropped items alike are in the `decisions` table. Filtered items are not bad
input: they go to no quarantine and no dead-letter sink.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa

from curator.batch import ValidBatch
from curator.ops.base import Rule
from curator.records import DECISION_SCHEMA, Decision
from curator.resources import Resources


def scores_column(names: list[str], scores: np.ndarray) -> pa.MapArray:
    """A rows x filters score matrix as the `filters` map column (NaN: null, the filter does not apply)."""
    n, k = scores.shape
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32) if k else np.zeros(n + 1, np.int32))
    keys = pa.array(np.tile(np.asarray(names, dtype=object), n), pa.string())
    flat = scores.ravel()
    items = pa.array(flat, pa.float64(), mask=np.isnan(flat))
    return pa.MapArray.from_arrays(offsets, keys, items, type=DECISION_SCHEMA.field("filters").type)


def filtered_decisions(samples: pa.Table, reasons: list[str], model: str, fingerprint: str) -> pa.Table:
    """Decision rows of items a filter dropped (`samples` with its `filters` column): seq -1, as they never
    reach the selector; the given label as label_in; every other score null."""
    n = samples.num_rows
    cols = {f.name: pa.nulls(n, f.type) for f in DECISION_SCHEMA}
    cols.update({c: samples.column(c) for c in ("id", "source", "partition", "offset", "filters")})
    cols.update({
        "seq": pa.array(np.full(n, -1, np.int64)),
        "decision": pa.array([Decision.DROPPED_FILTERED.value] * n, pa.string()),
        "reason": pa.array(reasons, pa.string()),
        "label_in": samples.column("label"),
        "model": pa.array([model] * n, pa.string()),
        "config_fingerprint": pa.array([fingerprint] * n, pa.string()),
    })
    return pa.table(cols, schema=DECISION_SCHEMA)


class FilterStage:
    """Validated samples -> the samples every filter keeps (with a `filters` column of every filter's score)
    and a `dropped-filtered` decision for each of the others (`ValidBatch.filtered`)."""

    name = "filter"

    def __init__(self, rules: list[Rule], model_id: str, fingerprint: str,
                 resources: Resources | None = None) -> None:
        self.rules = rules
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.resources = resources if resources is not None else sum((r.op.resources for r in rules), Resources())

    def setup(self) -> None:
        for r in self.rules:
            r.op.setup()

    def process(self, batch: ValidBatch) -> ValidBatch:
        samples = batch.samples
        n = samples.num_rows
        scores = np.column_stack([r.scores(samples) for r in self.rules]) if n else np.zeros((0, len(self.rules)))
        fails = np.column_stack([r.fails(scores[:, j]) for j, r in enumerate(self.rules)]) if n else \
            np.zeros((0, len(self.rules)), bool)
        samples = samples.append_column(DECISION_SCHEMA.field("filters"), scores_column([r.name for r in self.rules], scores))
        dropped = np.flatnonzero(fails.any(axis=1))
        if not len(dropped):
            return replace(batch, samples=samples)
        reasons = ["; ".join(r.why(float(scores[i, j])) for j, r in enumerate(self.rules) if fails[i, j])
                   for i in dropped]
        rows = filtered_decisions(samples.take(pa.array(dropped, pa.int64())), reasons, self.model_id,
                                  self.fingerprint)
        kept = np.flatnonzero(~fails.any(axis=1))
        earlier = [batch.filtered] if batch.filtered is not None else []
        return replace(batch, samples=samples.take(pa.array(kept, pa.int64())),
                       filtered=pa.concat_tables([*earlier, rows]))

    def teardown(self) -> None:
        return None
