"""Calibration that cannot silently fail: each rule is right or visibly not applied.

Each test here reproduces a failure seen on data the defaults were not developed on: a duplicate cut
below what float32 cosines resolve, a caption rule applied although its own evidence said it drops
right captions, a label rule with no separation, short streams left unjudged while the reasons said
"clean", and statuses that disagreed between the manifest, `config --show` and the reasons.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from curator.config import SelectorConfig
from curator.select import InfoGrowthSelector
from curator.select import calibrate as cal
from curator.select.calibrate import top_k_stable
from curator.select.outcome import status_word
from curator.select.rules import duplicate
from tests.test_selector import _batch, _digits, _emb


def _nn_evidence(log10_dists: np.ndarray) -> cal.Evidence:
    ev = cal.Evidence()
    bins = np.clip(((log10_dists - cal.NN_LO) / (cal.NN_HI - cal.NN_LO) * cal.NN_BINS).astype(int), 0, cal.NN_BINS - 1)
    np.add.at(ev.nn[0], bins, 1)
    return ev


def test_eps_dup_never_falls_below_what_cosines_resolve() -> None:
    """Distinct items packed so tightly that the tail fit extrapolates to ~1e-8: the cut stays at the
    floor, where a byte-identical copy (float32 cosine 0.99999988) is still a duplicate."""
    rng = np.random.default_rng(0)
    ev = _nn_evidence(rng.uniform(-6.5, -5.0, 400))
    c = cal.calibrate(SelectorConfig(), ev, "trusted bootstrap", 0)
    assert c.values["eps_dup"] == cal.EPS_FLOOR
    assert c.origin["eps_dup"].startswith("floor: calibration gave")
    assert duplicate(np.float32(0.99999988), c.values["eps_dup"])
    sq8 = cal.calibrate(SelectorConfig(), ev, "trusted bootstrap", 0, eps_floor=cal.SQ8_FLOOR)
    assert sq8.values["eps_dup"] == cal.SQ8_FLOOR
    # before any calibration the rule is the floor too, and says so
    young = cal.calibrate(SelectorConfig(), cal.Evidence(), "trusted bootstrap", 0)
    assert young.values["eps_dup"] == cal.EPS_FLOOR and young.origin["eps_dup"].startswith("floor: not calibrated")


def test_caption_rule_is_not_applied_when_trusted_pairs_do_not_separate() -> None:
    """Trusted pairs align worse than mismatched ones (the caption benchmark's failure): no cut."""
    ev = cal.Evidence()
    rng = np.random.default_rng(1)
    right, wrong = rng.normal(0.20, 0.03, 200), rng.normal(0.22, 0.03, 200)
    ev.sums[cal.CLEAN_ALIGN], ev.sums[cal.CLEAN_ALIGN2], ev.sums[cal.CLEAN_PAIRS] = right.sum(), (right ** 2).sum(), 200
    ev.cross[:] = wrong.sum(), (wrong ** 2).sum(), 200
    c = cal.calibrate(SelectorConfig(), ev, "trusted bootstrap", 0)
    assert math.isnan(c.values["align_threshold"]) and not c.applied("align_threshold")
    assert c.origin["align_threshold"].startswith("not applied: trusted pairs (mean cos 0.19")
    assert "align no better than mismatched ones" in c.origin["align_threshold"]
    # well separated pairs are calibrated, with at most the bar's share of right captions expected dropped
    good = cal.Evidence()
    right = rng.normal(0.30, 0.02, 200)
    good.sums[cal.CLEAN_ALIGN], good.sums[cal.CLEAN_ALIGN2], good.sums[cal.CLEAN_PAIRS] = \
        right.sum(), (right ** 2).sum(), 200
    wrong = rng.normal(0.15, 0.02, 200)
    good.cross[:] = wrong.sum(), (wrong ** 2).sum(), 200
    g = cal.calibrate(SelectorConfig(), good, "trusted bootstrap", 0)
    assert g.applied("align_threshold") and g.origin["align_threshold"] == "calibrated from 200 pairs of the trusted bootstrap"
    assert g.evidence["align_threshold"]["expected_clean_dropped"] <= cal.MAX_CLEAN_DROP + 1e-9


def test_label_rule_is_not_applied_when_votes_do_not_separate() -> None:
    """Right and flipped labels get the same agreement from their neighbours: flagging is a coin."""
    ev = cal.Evidence()
    agr = np.random.default_rng(2).uniform(0, 1, 300)
    for a in agr:
        ev.clean[min(int(a * cal.AGR_BINS), cal.AGR_BINS - 1)] += 1
        ev.noisy[min(int((1 - a) * cal.AGR_BINS), cal.AGR_BINS - 1)] += 1
    ev.sums[cal.CLEAN_VOTES] = 300
    ev.labels[0], ev.labels[1], ev.labels[2] = 2, 0, 1
    c = cal.calibrate(SelectorConfig(), ev, "trusted bootstrap", 0)
    assert math.isnan(c.values["tau_noise"]) and c.origin["tau_noise"].startswith("not applied: 300 votes of the trusted bootstrap")


def test_short_stream_without_a_bootstrap_is_judged_and_says_what_was_not(caplog) -> None:
    """200 items, no bootstrap: the first accepted items are the label evidence (leave-one-out votes
    among themselves), the rule is calibrated within the stream (not only after calibrate_every = 256),
    and the items before say "not judged", never "clean". On a stream whose first items are 20% wrong,
    that evidence cannot bound the rule's clean drops: it is visibly not applied, with a warning."""
    ds, x, _ = _digits(0)
    truth = dict(zip(ds.truth.column("id").to_pylist(), ds.truth.column("true_label").to_pylist(), strict=True))
    right = [{**r, "label": truth[r["id"]]} for r in ds.stream]
    for stream, applied in ((right, True), (ds.stream, False)):
        sel = InfoGrowthSelector(SelectorConfig())
        with caplog.at_level("WARNING"):
            dec = pa.concat_tables([sel.select(_batch(stream[s:s + 50], s), _emb(x[s:s + 50])).decisions
                                    for s in range(0, 200, 50)])
        judged = [v is not None for v in dec.column("label_noisy").to_pylist()]
        assert sel.cal.applied("tau_noise") is applied, sel.cal.origin["tau_noise"]
        assert (sum(judged) > 50) is applied
        for r, j in zip(dec.column("reason").to_pylist(), judged, strict=True):
            assert j or ("not judged: labels" in r and not r.startswith("clean")), r
    assert any("tau_noise = 'auto' is not applied" in m for m in caplog.messages)


def test_reasons_config_show_and_manifest_give_one_status() -> None:
    """The reason's word for a threshold is its status's, never "calibrated" for an uncalibrated one."""
    assert status_word("config") == ""
    assert status_word("calibrated from 120 items") == "calibrated"
    assert status_word("floor: not calibrated yet (3 of 20 accepted items); exact copies only") == "floor"
    ds, x, _ = _digits(0)
    sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
    dec = sel.select(_batch(ds.stream[:30], 0), _emb(x[:30])).decisions  # a young stream: eps_dup at its floor
    report = sel.calibration_report()
    assert report["eps_dup"]["origin"].startswith("floor")
    dups = [r for r in dec.column("reason").to_pylist() if r.startswith("near-duplicate")]
    assert all("calibrated" not in r for r in dups)
    assert report["tau_relabel"]["origin"].startswith("not applied: not calibrated yet")
    assert sel.cal.values["tau_relabel"] > 1  # no corrections while it is not applied


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 40), st.integers(1, 39), st.integers(0, 2**32 - 1), st.booleans())
def test_top_k_stable_is_a_stable_argsort_of_each_row(n: int, k: int, seed: int, ties: bool) -> None:
    """The leave-one-out votes' neighbours: the same columns, in the same order, as a full stable sort."""
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    g = (rng.integers(-2, 3, (n, n)) if ties else rng.normal(size=(n, n))).astype(np.float32)
    np.fill_diagonal(g, -np.inf)
    assert (top_k_stable(g, k) == np.argsort(-g, axis=1, kind="stable")[:, :k]).all()
