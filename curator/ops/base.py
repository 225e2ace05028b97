"""A filter: a per-item score computed from a batch, and a keep rule on it.

Data-Juicer's split, compute the stats, then keep or drop on them: a filter's `score(samples)`
returns one float per row of a batch of validated samples (`curator.records.SAMPLE_SCHEMA`: id,
image bytes or image_uri, text, label, metadata JSON), NaN where it does not apply (no caption, no
image). The keep rule is the configuration's, `min` and `max` on the score (inclusive), so every
filter's verdict reads the same in the decisions; a filter with neither is a score only: recorded
for every item, dropping none.

A filter takes its parameters as constructor keyword arguments (the keys of its `[[filters]]`
table), checks them there (a ValueError is reported with the config's other problems), declares
what one copy needs (`resources`), and loads models in `setup()`, once, in the process that runs
it: the filter stage runs in-process (`curator ingest`) and inside the Ray embedder actors
(`curator serve`), which receive the filter before `setup()`, so it must pickle until then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from curator.config import FilterConfig
from curator.registry import FILTERS
from curator.resources import Resources


class Filter:
    """Base class of filters and scores (see the module docstring; docs/extending.md has a worked example)."""

    #: What one copy needs from the executor, added to the embedder actors' reservation on Ray.
    resources: Resources = Resources()

    def setup(self) -> None:
        """Load models or tables once, in the process that runs the filter."""

    def score(self, samples: pa.Table) -> np.ndarray:
        """One float per row of `samples`, NaN where the filter does not apply."""
        raise NotImplementedError


def fmt(x: float) -> str:
    """A score or bound as reasons quote it: 4 significant digits, integers without a point."""
    return f"{x:.4g}"


@dataclass
class Rule:
    """One configured filter: its name in decisions and reasons, the operator, and the keep range."""

    name: str
    op: Filter
    min: float | None = None
    max: float | None = None

    def fails(self, scores: np.ndarray) -> np.ndarray:
        """Rows whose score is outside [min, max]; a NaN score (not applicable) never fails."""
        bad = np.zeros(len(scores), bool)
        with np.errstate(invalid="ignore"):
            if self.min is not None:
                bad |= scores < self.min
            if self.max is not None:
                bad |= scores > self.max
        return bad

    def why(self, score: float) -> str:
        """The reason a failing score gives."""
        if self.min is not None and score < self.min:
            return f"filter {self.name}: {fmt(score)} < min {fmt(self.min)}"
        return f"filter {self.name}: {fmt(score)} > max {fmt(float(self.max or 0.0))}"

    def scores(self, samples: pa.Table) -> np.ndarray:
        """The operator's scores for a batch, checked: one finite number or NaN per row."""
        try:
            s = np.asarray(self.op.score(samples), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"filter {self.name}: score() must return one number per row ({exc})") from None
        if s.shape != (samples.num_rows,):
            raise ValueError(f"filter {self.name}: score() returned shape {s.shape} for {samples.num_rows} rows; "
                             "return one number per row (NaN where it does not apply)")
        s[np.isinf(s)] = np.nan
        return s


def build_rules(specs: list[FilterConfig]) -> list[Rule]:
    """The configured filters, constructed (nothing is loaded until `setup()`); `load_config` has
    checked each operator and its parameters (`curator.config.filter_problem`)."""
    return [Rule(spec.name or spec.op, FILTERS.get(spec.op)(**spec.params), spec.min, spec.max) for spec in specs]
