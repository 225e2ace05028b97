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
from curator.select.outcome import status_word
from curator.select.rules import duplicate
from curator.select.trust import LooVotes
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


def _grid_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors of -1/0/1 (every dot product is an exact small integer: no rounding, many ties)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1, 2, (n, dim)).astype(np.float32), rng.integers(-1, 4, n)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 700), st.integers(2, 8), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_loo_neighbours_are_a_stable_sort_of_each_row(n: int, dim: int, k: int, seed: int) -> None:
    """The leave-one-out votes' neighbours: the same rows, in the same order, as a full stable sort of
    the similarities to every other held item (across the blocks LooVotes compares at once)."""
    x, y = _grid_vectors(n, dim, seed)
    votes = LooVotes(k, 0.05)
    votes.add(x, y)
    x, n = x[y >= 0], int((y >= 0).sum())  # unlabelled items are not evidence
    cols, sims = votes.neighbours()
    if n < 2:
        return
    g = x @ x.T
    np.fill_diagonal(g, -np.inf)
    want = np.argsort(-g, axis=1, kind="stable")[:, : min(k, n - 1)]
    assert (cols == want).all()
    assert (sims == np.take_along_axis(g, want, axis=1)).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 300), min_size=1, max_size=20), st.booleans())
def test_loo_votes_do_not_depend_on_batching_or_reads(seed: int, sizes: list[int], copies: bool) -> None:
    """Added in any batches and read at any points (each read brings the blocks up to date), the
    evidence equals one read after adding everything at once, for clustered unit vectors (with exact
    copies: ties) -- so a replay after a crash, or a run batched otherwise, calibrates the same."""
    rng = np.random.default_rng(seed)
    n = min(sum(sizes), 2100)
    c = rng.normal(size=(20, 64)).astype(np.float32)
    lab = rng.integers(0, 20, n)
    x = c[lab] + rng.normal(0, 0.15, (n, 64)).astype(np.float32)
    if copies:
        for i in range(1, n, 7):
            x[i] = x[rng.integers(0, i)]
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    y = np.where(rng.random(n) < 0.1, -1, lab)
    inc, pos = LooVotes(10, 0.05), 0
    for m in sizes:
        inc.add(x[pos:pos + m], y[pos:pos + m])
        pos += m
        if rng.random() < 0.5:
            inc.evidence()
    once = LooVotes(10, 0.05)
    once.add(x, y)
    a, b = inc.evidence(), once.evidence()
    for name in cal.Evidence.ARRAYS:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (inc.neighbours()[0] == once.neighbours()[0]).all()
    restored = LooVotes.from_state(inc.state_dict(), 10, 0.05)
    assert np.array_equal(restored.evidence().clean, a.clean) and np.array_equal(restored.evidence().prec, a.prec)
