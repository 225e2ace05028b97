"""The numbers the compiled loop and the Python around it share: decision and reason codes, modes,
recaption outcomes and the calibration evidence's slots -- defined once, here.

The compiled loop works on integer codes; `DECISIONS` turns a decision code into its
`curator.records.Decision` (the code is the index), so the two cannot drift apart.
"""

from __future__ import annotations

from curator.records import Decision

#: decision codes, and the Decision each stands for (code = index)
KEPT, RELABELLED, RECAPTIONED, DROPPED_NOISY, DROPPED_DUPLICATE, DROPPED_BY_BUDGET = range(6)
DECISIONS = (Decision.KEPT, Decision.RELABELLED, Decision.RECAPTIONED, Decision.DROPPED_NOISY,
             Decision.DROPPED_DUPLICATE, Decision.DROPPED_BY_BUDGET)
#: why an item was dropped (which reason text it gets)
WHY_NONE, WHY_MISALIGNED, WHY_LABEL, WHY_DUPLICATE, WHY_BUDGET, WHY_HASH = range(6)
#: dup_src of a duplicate by the hash rules: dup_row is its original's number in the hash table
DUP_HASHED = 2
#: align modes (selector.align_mode)
ALIGN_OFF, ALIGN_FIXED, ALIGN_BOOTSTRAP, ALIGN_ADAPTIVE = range(4)
ALIGN_MODES = {"off": ALIGN_OFF, "fixed": ALIGN_FIXED, "bootstrap": ALIGN_BOOTSTRAP, "adaptive": ALIGN_ADAPTIVE}
#: recaption outcomes (recap[i])
RECAP_UNKNOWN, RECAP_REJECTED, RECAP_ACCEPTED, RECAP_NONE = -1, 0, 1, 2
#: the calibration evidence's sums (`curator.select.calibrate.Evidence.sums`): right labels' agreement and
#: count; stream labels with no support (agreement in the lowest bin) and all stream votes; the stream's
#: alignment and pairs; trusted pairs' alignment, its square and count
CLEAN_AGR, CLEAN_VOTES, STREAM_LOW, STREAM_VOTES, STREAM_ALIGN, STREAM_PAIRS, CLEAN_ALIGN, CLEAN_ALIGN2, \
    CLEAN_PAIRS = range(9)
AGR_BINS = 100  # agreement histograms over [0, 1]
#: n_trusted_out of an item left unjudged because the label thresholds are not calibrated yet
UNJUDGED_CALIBRATING = -1
#: the hash rules' codes (`curator.select.hashdup`): none, exact content, exact pixels, perceptual
RULE_NONE, RULE_CONTENT, RULE_PIXELS, RULE_NEAR = range(4)
