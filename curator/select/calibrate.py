"""Calibrated ("auto") thresholds: derived from trusted data, refined in stream order.

A fixed epsilon or threshold is right for one embedding space and wrong for the next, so each
'auto' setting is derived from evidence the engine has about *this* space:

- ``eps_dup``: the nearest-neighbour cosine distances of accepted items (the trusted bootstrap's
  first, then the stream's, over a window of the most recent ones, since distances shrink as the
  index grows). Its lower tail follows a power law ``F(t) ~ t^s`` (s is half the local intrinsic
  dimension); ``s`` is fitted between the 5% and 25% quantiles and extrapolated down to
  ``dup_false_rate``: the distance below which that share of *distinct* items would fall. Only
  the body of the distribution is used, far above the cut, so the items the rule removes (which
  never reach the sketch) cannot pull the cut up after them. Distances of distinct items spread
  continuously in log scale; mass below an empty decade under the median is copies that got in
  before the cut caught them (with no bootstrap, before it was calibrated): it is left out of the
  fit, so it cannot pull the cut down, and the cut is placed at least in that gap.
- ``tau_noise``: the trusted items' votes (each against the trusted items before it) give the
  agreement a right label gets; the same votes for the *other* labels give what a flipped label
  gets. The threshold minimises the expected error at the noise rate, which is estimated from the
  stream's mean agreement (a mixture of the two) -- recorded for every judged item before its
  decision, so it is not censored by the rule.
- ``tau_relabel``: the lowest majority share at which the trusted items' own votes are right with
  precision ``relabel_precision`` (Wilson lower bound): a correction is a claim about the true
  label, and the trusted votes are the only ones whose truth is known.
- ``relabel_radius``: the median nearest-neighbour distance of accepted items: corrections only
  where the neighbours are at least as close as usual (far neighbours do not speak for an item).
- ``align_threshold``: the trusted pairs' alignments against the same images with *other* trusted
  captions (what a mismatched caption scores), two Gaussians, and the Bayes cut at the mismatch
  rate estimated from the stream's mean alignment.

The evidence arrays are updated by the compiled loop item by item; `calibrate` runs at fixed
decided-item counts (`selector.calibrate_every`) and when the stream starts after a bootstrap, so
values are a pure function of stream order, and the whole state checkpoints with the selector.
Without a bootstrap, the items accepted unjudged at the start are the trusted evidence (and the
reasons and a warning say so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
from numba import njit

from curator.config import AUTO, SelectorConfig
from curator.select.codes import (
    AGR_BINS,
    CLEAN_AGR,
    CLEAN_ALIGN,
    CLEAN_ALIGN2,
    CLEAN_PAIRS,
    CLEAN_VOTES,
    STREAM_ALIGN,
    STREAM_LOW,
    STREAM_PAIRS,
    STREAM_VOTES,
)
from curator.select.rules import label_shares, pairwise_sum
from curator.select.sketch import sketch_bin

NN_BINS, NN_LO, NN_HI = 1024, -7.0, 0.5  # log10 of the cosine distance 1 - max_sim
NN_WINDOW = 2048  # the sketch covers the last 2048..4096 accepted items
NN_GAP_BINS = int(round(NN_BINS / (NN_HI - NN_LO)))  # one decade of empty bins separates copies from the body
NN_MIN_SEPARATED = 3  # items below the gap for it to be copies (the body's lowest one or two may stray that far)

SHARE_BINS = 20  # share histograms over [0, 1]
MAX_LABELS = 4096  # distinct labels tracked (for the flipped-label model)
MIN_NN = 20  # accepted items before eps_dup / relabel_radius are calibrated (the 5% quantile is the first item)
MIN_VOTES = 30  # trusted votes before tau_noise / tau_relabel are
VOTES_PER_CLASS = 10  # and at least this many per class: a leave-one-out vote needs same-class neighbours
MIN_PAIRS = 20  # trusted pairs before align_threshold is
MIN_STREAM = 50  # stream votes / pairs before the noise / mismatch rate is estimated from them
PRIOR_RATE = 0.1  # noise / mismatch rate assumed until then
#: eps_dup never goes below what the cosines can resolve: float32 dot products of unit vectors carry a rounding
#: error of about sqrt(d) * 2^-24 (1e-6 at d = 512), so byte-identical copies score 1 - 1e-7 or 1 - 1e-6; the
#: floor leaves a tenfold margin. Before calibration it is the whole rule: exact copies only.
EPS_FLOOR = 1e-5
#: An index that re-ranks with 8-bit codes (ivf-pq-sq8) is off by about one code step per dimension: cosines
#: err by ~3e-4, so its floor is three of those.
SQ8_FLOOR = 1e-3
#: The bar a calibrated rule must pass to be applied, from the trusted evidence: the caption cut may drop at
#: most MAX_CLEAN_DROP of right captions (Gaussian fit); both the caption and the label cut must catch
#: MIN_CATCH of the wrong ones, a label flag at precision MIN_FLAG_PRECISION or more (at the estimated noise
#: rate). A rule below the bar is not applied: its items are "not judged" by it.
MAX_CLEAN_DROP = 0.05
MIN_CATCH = 0.5
MIN_FLAG_PRECISION = 0.5
#: A flagged label that cannot be corrected is dropped only where at most this share of the trusted
#: (right) labels score that low; above it the item is kept, flagged.
CLEAN_DROP_TARGET = 0.01
NEVER = 2.0  # tau_relabel when no share level is precise enough: no corrections
EARLY = (32, 64, 128)  # decided-item counts (below calibrate_every) where a young stream is recalibrated
Z = 1.0  # the Wilson bound one standard error below (the trusted set is small; its votes see a sparser index)


@dataclass
class Evidence:
    """What calibration is computed from; the compiled loop updates the arrays in place."""

    nn: np.ndarray = field(default_factory=lambda: np.zeros((2, NN_BINS), np.int64))
    nn_meta: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))  # (bucket, fill)
    clean: np.ndarray = field(default_factory=lambda: np.zeros(AGR_BINS, np.int64))
    noisy: np.ndarray = field(default_factory=lambda: np.zeros(AGR_BINS, np.int64))  # present other labels
    prec: np.ndarray = field(default_factory=lambda: np.zeros((2, SHARE_BINS), np.int64))  # (wrong, right)
    labels: np.ndarray = field(default_factory=lambda: np.zeros(MAX_LABELS + 1, np.int64))  # [count, ...]
    sums: np.ndarray = field(default_factory=lambda: np.zeros(9, np.float64))
    cross: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float64))  # other-caption sum, sum2, n
    last_text: list[float] | None = None  # the stream's last caption vector (its next image's other caption)

    ARRAYS = ("nn", "nn_meta", "clean", "noisy", "prec", "labels", "sums", "cross")

    def state_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k).tolist() for k in self.ARRAYS}, "last_text": self.last_text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.ARRAYS:
            cur = getattr(self, k)
            cur[...] = np.asarray(state[k], cur.dtype).reshape(cur.shape)
        self.last_text = state.get("last_text")


LOO_CAP = 2048  # trusted items whose leave-one-out votes are the label evidence


@njit(cache=True)
def vote_rows(sims: np.ndarray, nb_labels: np.ndarray, y: np.ndarray, temperature: float, clean: np.ndarray,
               noisy: np.ndarray, prec: np.ndarray, sums: np.ndarray) -> None:
    """Each trusted item's vote among its neighbours (leave one out: `curator.select.trust.LooVotes`) (row i: their similarities and labels), into the
    evidence's histograms: its own label's agreement, the other labels' shares, the best label's share."""
    kk = sims.shape[1]
    lab, shr, own = np.empty(kk, np.int64), np.empty(kk, np.float64), np.empty(kk, np.float64)
    for i in range(sims.shape[0]):
        m = label_shares(sims[i], nb_labels[i], kk, temperature, lab, shr)
        if m == 0:
            continue
        c, b = 0, 0
        for j in range(m):
            if lab[j] == y[i]:
                own[c] = shr[j]
                c += 1
            if shr[j] > shr[b]:
                b = j
        agr = pairwise_sum(own, 0, c)  # (numpy's summation order: the same float as a numpy sum)
        clean[sketch_bin(agr, 0.0, 1.0, AGR_BINS)] += 1
        sums[CLEAN_AGR] += agr
        sums[CLEAN_VOTES] += 1
        prec[1 if lab[b] == y[i] else 0, sketch_bin(shr[b], 0.0, 1.0, SHARE_BINS)] += 1
        for j in range(m):
            if lab[j] != y[i]:
                noisy[sketch_bin(shr[j], 0.0, 1.0, AGR_BINS)] += 1


def _quantile_log(counts: np.ndarray, q: float) -> float:
    """log10 distance at quantile q of the nn histogram (linear within the bin)."""
    n = int(counts.sum())
    c = np.cumsum(counts)
    b = int(np.searchsorted(c, q * n))
    prev = int(c[b - 1]) if b else 0
    frac = (q * n - prev) / max(int(counts[b]), 1)
    return _bin_log(b + min(max(frac, 0.0), 1.0))


def _bin_log(b: float) -> float:
    """log10 distance at (fractional) bin b of the nn histogram."""
    return NN_LO + b * ((NN_HI - NN_LO) / NN_BINS)


def separated_copies(counts: np.ndarray) -> tuple[int, int, int]:
    """(first empty bin of the gap, first bin of the body, items below the gap) for the first run of
    at least `NN_GAP_BINS` empty bins under the median with `NN_MIN_SEPARATED` items or more below
    it; (0, 0, 0) when none."""
    cum = np.cumsum(counts)
    median_bin = int(np.searchsorted(cum, cum[-1] / 2))
    filled = np.flatnonzero(counts[:median_bin])  # each with the run of empty bins above it
    empty = np.append(filled[1:], median_bin) - filled - 1
    ok = np.flatnonzero((empty >= NN_GAP_BINS) & (cum[filled] >= NN_MIN_SEPARATED))
    if not len(ok):
        return 0, 0, 0
    b, e = int(filled[ok[-1]]), int(empty[ok[-1]])  # the highest such run under the median
    return b + 1, b + 1 + e, int(cum[b])


def wilson_lower(right: float, n: float, z: float = Z) -> float:
    if n <= 0:
        return 0.0
    p = right / n
    den = 1 + z * z / n
    centre = p + z * z / (2 * n)
    return (centre - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / den


@njit(cache=True)
def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@njit(cache=True)
def _least_risk(grid: np.ndarray, rate: float, mu_c: float, sd_c: float, mu_x: float, sd_x: float) -> int:
    """The first grid point of least risk: right captions below the cut plus wrong ones above it (compiled:
    a Python loop over the grid cost ~1.5 ms per calibration, every calibrate_every items)."""
    best, at = np.inf, 0
    for i in range(len(grid)):
        t = grid[i]
        risk = (1 - rate) * _phi((t - mu_c) / sd_c) + rate * (1 - _phi((t - mu_x) / sd_x))
        if risk < best:
            best, at = risk, i
    return at


def _rate(mu_clean: float, mu_noisy: float, stream_sum: float, stream_n: float) -> tuple[float, str]:
    """The weight of the noisy component in the stream: its mean statistic m = (1 - r) mu_clean +
    r mu_noisy, solved for r (method of moments; the statistic is recorded before each decision)."""
    if stream_n < MIN_STREAM or abs(mu_clean - mu_noisy) < 1e-6:
        return PRIOR_RATE, f"prior {PRIOR_RATE} (fewer than {MIN_STREAM} stream items)"
    m = stream_sum / stream_n
    r = (mu_clean - m) / (mu_clean - mu_noisy)
    return float(min(max(r, 0.005), 0.5)), f"from the stream's mean {m:.3f} over {int(stream_n)} items"


@dataclass
class Calibration:
    """The values in force and the evidence behind each (what the manifest and reasons show)."""

    values: dict[str, float]
    origin: dict[str, str]  # the status: "config", "calibrated from N ...", "floor: ...", "not applied: ...", "never: ..."
    evidence: dict[str, dict[str, Any]]
    seq: int = -1  # decided items when computed

    def applied(self, name: str) -> bool:
        """Whether the rule of this setting judges items now ("not applied" and "never" do not)."""
        return not self.origin[name].startswith(("not applied", "never"))

    def report(self) -> dict[str, Any]:
        """Per setting {"value", "origin", evidence...} (what the manifest's "calibration" holds). The
        origin is the setting's one status, shown as is everywhere: "config", "calibrated from N ...",
        "floor: ...", "not applied: why", "never: why"."""
        out: dict[str, Any] = {name: {"value": None if not math.isfinite(v) else float(v), "origin": self.origin[name],
                                      **self.evidence.get(name, {})} for name, v in self.values.items()}
        out["at_seq"] = self.seq
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"values": {k: (None if not math.isfinite(v) else v) for k, v in self.values.items()},
                "origin": self.origin, "evidence": self.evidence, "seq": self.seq}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibration:
        return cls({k: (math.nan if v is None else float(v)) for k, v in state["values"].items()},
                   dict(state["origin"]), dict(state["evidence"]), int(state["seq"]))


def _merged_labels(a: np.ndarray, b: np.ndarray) -> int:
    return len(set(a[1:1 + a[0]].tolist()) | set(b[1:1 + b[0]].tolist()))


@dataclass
class _Resolved:
    """One setting's value in force, its status (`Calibration.origin`) and its evidence (None: no entry)."""

    value: float
    origin: str
    evidence: dict[str, Any] | None = None


@dataclass
class _Neighbours:
    """The accepted items' nearest-neighbour distances, summarised: eps_dup's and relabel_radius's evidence."""

    n: int  # items in the body (separated copies left out)
    info: dict[str, Any]
    l_eps: float = math.nan  # log10 of the extrapolated duplicate cut (from MIN_NN items on)
    l50: float = math.nan  # log10 of the median


@dataclass
class _Votes:
    """How much label evidence there is: trusted votes, classes, and the votes calibration needs."""

    n: float
    classes: int
    need: int


@dataclass
class _LabelCut:
    """The label rule's least-risk cut: agreement bin `b` (tau_noise = (b + 1) / AGR_BINS) and its expectations."""

    b: int
    catch: float  # share of wrong labels below the cut
    precision: float  # share of flags that are wrong labels, at the estimated noise rate
    f_clean: np.ndarray  # right labels' agreement CDF over the bins
    info: dict[str, Any]


@dataclass
class _Gaussians:
    """The caption alignments of right pairs (c) and of mismatched ones (x), and the mismatch rate."""

    mu_c: float
    sd_c: float
    mu_x: float
    sd_x: float
    rate: float
    rate_from: str


def calibrate(cfg: SelectorConfig, ev: Evidence, trusted_source: str, seq: int,
              boot: Evidence | None = None, eps_floor: float = EPS_FLOOR) -> Calibration:
    """The values in force from the configured numbers and, for 'auto', the evidence so far (`ev`,
    filled in stream order; `boot`, the trusted items' leave-one-out votes). `eps_floor`: the least
    cosine distance the index resolves (`EPS_FLOOR`, or `SQ8_FLOOR` on 8-bit re-ranking). The order
    matters: tau_drop follows tau_noise."""
    ev, n_labels = _label_evidence(ev, boot)
    nn = _neighbours(ev, cfg.dup_false_rate)
    votes = _Votes(ev.sums[CLEAN_VOTES], n_labels, max(MIN_VOTES, VOTES_PER_CLASS * n_labels))
    cal = Calibration({}, {}, {}, seq)
    _put(cal, "eps_dup", _configured(cfg, "eps_dup") or _eps_dup(nn, cfg.dup_false_rate, eps_floor, trusted_source))
    _put(cal, "relabel_radius", _configured(cfg, "relabel_radius") or _relabel_radius(nn))
    _put(cal, "tau_noise", _configured(cfg, "tau_noise") or _tau_noise(ev, votes, trusted_source))
    _put(cal, "tau_drop", _abstain_override(cfg) or _configured(cfg, "tau_drop")
         or _tau_drop(cal, votes, trusted_source))
    _put(cal, "tau_relabel", _configured(cfg, "tau_relabel")
         or _tau_relabel(ev, votes, cfg.relabel_precision, trusted_source))
    _put(cal, "align_threshold", _configured(cfg, "align_threshold") or _align_threshold(ev, trusted_source))
    return cal


def _put(cal: Calibration, name: str, r: _Resolved) -> None:
    cal.values[name], cal.origin[name] = r.value, r.origin
    if r.evidence is not None:
        cal.evidence[name] = r.evidence


def _configured(cfg: SelectorConfig, name: str) -> _Resolved | None:
    """The configured number (no evidence entry), or None for 'auto'."""
    v = getattr(cfg, name)
    return None if v == AUTO else _Resolved(float(v), "config")


def _label_evidence(ev: Evidence, boot: Evidence | None) -> tuple[Evidence, int]:
    """The label evidence (the trusted votes plus those of items taken unjudged) and its classes."""
    if boot is None:
        return ev, int(ev.labels[0])
    merged = Evidence(ev.nn, ev.nn_meta, ev.clean + boot.clean, ev.noisy + boot.noisy, ev.prec + boot.prec,
                      ev.labels, ev.sums.copy(), ev.cross)
    merged.sums[CLEAN_AGR] += boot.sums[CLEAN_AGR]
    merged.sums[CLEAN_VOTES] += boot.sums[CLEAN_VOTES]
    return merged, _merged_labels(ev.labels, boot.labels)


# --- eps_dup, relabel_radius: nearest-neighbour distances ----------------------------------------


def _neighbours(ev: Evidence, dup_false_rate: float) -> _Neighbours:
    """The body's quantiles and the power-law tail extrapolated down to `dup_false_rate` (module doc)."""
    counts = ev.nn[0] + ev.nn[1]
    gap_from, body_from, n_copies = separated_copies(counts)
    body = counts.copy()
    body[:body_from] = 0
    n_nn = int(body.sum())
    info: dict[str, Any] = {"accepted_items": n_nn}
    if n_copies:
        info["separated_copies"] = n_copies
    if n_nn < MIN_NN:
        return _Neighbours(n_nn, info)
    l05, l25, l50 = (_quantile_log(body, q) for q in (0.05, 0.25, 0.5))
    slope = math.log(5.0) / (math.log(10.0) * max(l25 - l05, 1e-9))
    l_eps = l05 + math.log10(dup_false_rate / 0.05) / slope
    if n_copies:  # at least the middle of the empty decade(s) between the copies and the body
        l_eps = max(l_eps, _bin_log((gap_from + body_from) / 2))
    info |= {"q05": round(10 ** l05, 6), "q25": round(10 ** l25, 6), "q50": round(10 ** l50, 6),
             "tail_exponent": round(slope, 3)}
    return _Neighbours(n_nn, info, l_eps, l50)


def _eps_dup(nn: _Neighbours, dup_false_rate: float, eps_floor: float, trusted_source: str) -> _Resolved:
    evidence = {"from": f"nearest-neighbour distances of accepted items ({trusted_source} first)",
                "dup_false_rate": dup_false_rate, "floor": eps_floor, **nn.info}
    if nn.n < MIN_NN:
        return _Resolved(eps_floor, f"floor: not calibrated yet ({nn.n} of {MIN_NN} accepted items); exact and "
                                    "float-rounding copies only", evidence)
    if 10 ** nn.l_eps >= eps_floor:
        return _Resolved(10 ** nn.l_eps, f"calibrated from {nn.n} items", evidence)
    return _Resolved(eps_floor, f"floor: calibration gave {10 ** nn.l_eps:.2g} from {nn.n} items, below what the "
                                f"cosines resolve ({eps_floor:g}); exact and float-rounding copies only", evidence)


def _relabel_radius(nn: _Neighbours) -> _Resolved:
    evidence = {"from": "median nearest-neighbour distance of accepted items", **nn.info}
    if nn.n < MIN_NN:
        return _Resolved(math.nan, f"not applied: not calibrated yet ({nn.n} of {MIN_NN} accepted items; no "
                                   "corrections)", evidence)
    return _Resolved(10 ** nn.l50, f"calibrated from {nn.n} items", evidence)


# --- tau_noise, tau_drop, tau_relabel: the trusted votes ------------------------------------------


def _tau_noise(ev: Evidence, votes: _Votes, trusted_source: str) -> _Resolved:
    """The label rule's cut, applied where the trusted votes show it catches wrong labels precisely enough."""
    head = {"from": f"{trusted_source} votes vs the same votes for other labels",
            "trusted_votes": int(votes.n), "classes": votes.classes}
    if votes.n < votes.need or votes.classes < 2:
        return _Resolved(math.nan, f"not applied: not calibrated yet ({int(votes.n)} of {votes.need} trusted votes"
                         + (")" if votes.classes >= 2 or not votes.n else f", {votes.classes} class)"), head)
    cut = _label_cut(ev, votes)
    if cut.catch >= MIN_CATCH and cut.precision >= MIN_FLAG_PRECISION:
        return _Resolved((cut.b + 1) / AGR_BINS, f"calibrated from {int(votes.n)} votes of the {trusted_source}",
                         {**head, **cut.info, **_drop_cut(cut.f_clean, cut.b)})
    return _Resolved(math.nan, (
        f"not applied: {int(votes.n)} votes of the {trusted_source} do not separate right labels from "
        f"wrong ones (the best cut catches {float(cut.catch):.0%} of wrong ones at precision "
        f"{cut.precision:.0%}; needs {MIN_CATCH:.0%} at {MIN_FLAG_PRECISION:.0%})"), {**head, **cut.info})


def _label_cut(ev: Evidence, votes: _Votes) -> _LabelCut:
    """The cut minimising the expected error at the noise rate, estimated from the stream's share of
    unsupported labels (agreement in the lowest bin), which is (1 - rate) F_c + rate F_n there: the
    lowest bin is where the two differ most."""
    f_clean = np.cumsum(ev.clean) / votes.n  # F_c(t_b), t_b = (b + 1) / AGR_BINS
    noisy = ev.noisy.astype(np.float64).copy()
    noisy[0] += votes.n * (votes.classes - 1) - noisy.sum()  # labels absent from the neighbours: share 0
    f_noisy = np.cumsum(noisy) / noisy.sum()
    rate, how = _rate(f_clean[0], f_noisy[0], ev.sums[STREAM_LOW], ev.sums[STREAM_VOTES])
    risk = (1 - rate) * f_clean + rate * (1 - f_noisy)
    best = np.flatnonzero(risk <= risk.min() + 1e-12)
    b = int(best[len(best) // 2])
    clean_upper = 1.0 - wilson_lower(votes.n - np.cumsum(ev.clean)[b], votes.n)
    prec = rate * f_noisy[b] / max(rate * f_noisy[b] + (1 - rate) * f_clean[b], 1e-12)
    info = {"noise_rate": round(rate, 4), "noise_rate_from": how,
            "unsupported_share_of_stream": round(ev.sums[STREAM_LOW] / max(ev.sums[STREAM_VOTES], 1), 4),
            "expected_flag_recall": round(float(f_noisy[b]), 4),
            "expected_clean_flagged": round(float(f_clean[b]), 4),
            "clean_flagged_upper": round(float(clean_upper), 4),
            "expected_flag_precision": round(float(prec), 4)}
    return _LabelCut(b, f_noisy[b], prec, f_clean, info)


def _drop_cut(f_clean: np.ndarray, b: int) -> dict[str, Any]:
    """Where a flag is dropped: only below the agreement that at most CLEAN_DROP_TARGET of the trusted
    (right) labels fall under, within the label cut (bin `b`)."""
    sure = np.flatnonzero(f_clean[: b + 1] <= CLEAN_DROP_TARGET)
    return {"drop_below": (int(sure[-1]) + 1) / AGR_BINS if len(sure) else 0.0,
            "expected_clean_dropped": round(float(f_clean[int(sure[-1])]), 4) if len(sure) else 0.0}


def _abstain_override(cfg: SelectorConfig) -> _Resolved | None:
    """relabel_abstain 'drop' drops every uncorrected flag, 'keep' none, whatever tau_drop says."""
    if cfg.relabel_abstain == AUTO:
        return None
    return _Resolved(NEVER if cfg.relabel_abstain == "drop" else -1.0,
                     f"config (relabel_abstain = '{cfg.relabel_abstain}')")


def _tau_drop(cal: Calibration, votes: _Votes, trusted_source: str) -> _Resolved:
    """Follows the label rule already in `cal`: a configured cut drops its flags; a calibrated one
    drops them where few right labels score that low (`_drop_cut`)."""
    noise = cal.evidence.get("tau_noise", {})
    evidence = {"from": "the trusted votes' agreement: where right labels fall below the cut "
                        f"at most {CLEAN_DROP_TARGET:.0%} of the time",
                "expected_clean_dropped": noise.get("expected_clean_dropped")}
    if cal.origin["tau_noise"] == "config":  # a configured label cut: its flags are dropped, as it says
        return _Resolved(cal.values["tau_noise"], "config (tau_noise)", evidence)
    if math.isnan(cal.values["tau_noise"]):
        return _Resolved(0.0, "not applied: no calibrated label rule (a flagged label is kept, flagged)", evidence)
    return _Resolved(float(noise.get("drop_below", 0.0)), f"calibrated from {int(votes.n)} votes of the "
                     f"{trusted_source}", evidence)


def _tau_relabel(ev: Evidence, votes: _Votes, relabel_precision: float, trusted_source: str) -> _Resolved:
    """The lowest majority share whose trusted votes are right at `relabel_precision` (Wilson bound)."""
    evidence = {"from": f"{trusted_source} items' own votes, right or wrong by majority share",
                "relabel_precision": relabel_precision, "trusted_votes": int(votes.n)}
    if votes.n < votes.need:
        return _Resolved(NEVER, f"not applied: not calibrated yet ({int(votes.n)} of {votes.need} trusted votes; no "
                                "corrections)", evidence)
    right, total = ev.prec[1][::-1].cumsum()[::-1], ev.prec.sum(0)[::-1].cumsum()[::-1]
    ok = [b for b in range(SHARE_BINS) if wilson_lower(right[b], total[b]) >= relabel_precision]
    if not ok:
        return _Resolved(NEVER, f"never: no majority share reaches precision {relabel_precision} in "
                                f"{int(votes.n)} trusted votes (no corrections)", evidence)
    b = ok[0]
    return _Resolved(b / SHARE_BINS, f"calibrated from {int(votes.n)} votes of the {trusted_source}",
                     {**evidence, "votes_at_or_above": int(total[b]), "right": int(right[b]),
                      "precision_lower_bound": round(wilson_lower(right[b], total[b]), 4)})


# --- align_threshold: the trusted pairs ------------------------------------------------------------


def _align_threshold(ev: Evidence, trusted_source: str) -> _Resolved:
    """The Bayes cut between right and mismatched captions, within the bar on right captions dropped."""
    n_p, n_x = ev.sums[CLEAN_PAIRS], ev.cross[2]
    head = {"from": f"{trusted_source} pairs vs their images with other captions",
            "trusted_pairs": int(n_p), "other_caption_pairs": int(n_x)}
    if n_p < MIN_PAIRS or n_x < MIN_PAIRS:
        return _Resolved(math.nan, f"not applied: not calibrated yet ({int(min(n_p, n_x))} of {MIN_PAIRS} "
                                   "trusted pairs)", head)
    g = _alignments(ev)
    t = _caption_cut(g)
    dropped, caught = _phi((t - g.mu_c) / g.sd_c), _phi((t - g.mu_x) / g.sd_x)  # below t: dropped
    evidence = {**head, "trusted_mean": round(g.mu_c, 4), "trusted_std": round(g.sd_c, 4),
                "mismatch_mean": round(g.mu_x, 4), "mismatch_std": round(g.sd_x, 4),
                "mismatch_rate": round(g.rate, 4), "mismatch_rate_from": g.rate_from,
                "expected_clean_dropped": round(dropped, 5), "expected_mismatch_kept": round(1 - caught, 5)}
    if g.mu_c > g.mu_x and caught >= MIN_CATCH:
        return _Resolved(t, f"calibrated from {int(n_p)} pairs of the {trusted_source}", evidence)
    if g.mu_c <= g.mu_x:
        return _Resolved(math.nan, f"not applied: trusted pairs (mean cos {g.mu_c:.3f}) align no better than "
                                   f"mismatched ones (mean {g.mu_x:.3f})", evidence)
    return _Resolved(math.nan, (
        f"not applied: trusted pairs (mean cos {g.mu_c:.3f}) do not separate from mismatched ones (mean "
        f"{g.mu_x:.3f}): a cut dropping at most {MAX_CLEAN_DROP:.0%} of right captions catches {caught:.0%} "
        f"of wrong ones; needs {MIN_CATCH:.0%}"), evidence)


def _alignments(ev: Evidence) -> _Gaussians:
    """Gaussians of the trusted pairs' and the other-caption pairs' alignments, and the stream's mismatch rate."""
    n_p, n_x = ev.sums[CLEAN_PAIRS], ev.cross[2]
    mu_c = ev.sums[CLEAN_ALIGN] / n_p
    sd_c = math.sqrt(max(ev.sums[CLEAN_ALIGN2] / n_p - mu_c * mu_c, 1e-12))
    mu_x = ev.cross[0] / n_x
    sd_x = math.sqrt(max(ev.cross[1] / n_x - mu_x * mu_x, 1e-12))
    rate, how = _rate(mu_c, mu_x, ev.sums[STREAM_ALIGN], ev.sums[STREAM_PAIRS])
    return _Gaussians(mu_c, sd_c, mu_x, sd_x, rate, how)


def _caption_cut(g: _Gaussians) -> float:
    """The least-risk cut between the two means, and never one that drops more right captions than the bar."""
    grid = np.linspace(min(g.mu_x, g.mu_c), max(g.mu_x, g.mu_c), 2001)
    at = _least_risk(grid, g.rate, g.mu_c, g.sd_c, g.mu_x, g.sd_x)
    return min(float(grid[at]), g.mu_c + NormalDist().inv_cdf(MAX_CLEAN_DROP) * g.sd_c)
