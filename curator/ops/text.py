"""Caption filters: length in characters and in words. An item without a caption scores NaN."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curator.ops.base import Filter


def captions(samples: pa.Table) -> pa.ChunkedArray:
    """The batch's captions, leading and trailing white space removed (null: no caption)."""
    return pc.utf8_trim_whitespace(samples.column("text"))


def as_scores(counts: pa.ChunkedArray) -> np.ndarray:
    return counts.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN


class CaptionLength(Filter):
    """The caption's length in characters (Unicode code points), white space at its ends excluded."""

    def score(self, samples: pa.Table) -> np.ndarray:
        return as_scores(pc.utf8_length(captions(samples)))


class CaptionWords(Filter):
    """The caption's number of words: runs of characters between white space."""

    def score(self, samples: pa.Table) -> np.ndarray:
        return as_scores(pc.count_substring_regex(captions(samples), r"\S+"))
