"""The selection rules and the reasons they give, as small pure functions over one item's scores.

The selector first computes an item's scores (alignment, the neighbour vote, gain, nearest
similarity); each rule below turns scores into a verdict, and each reason function turns a
verdict into the text a person reads in the decisions table. Nothing here holds state, so each
rule is testable alone and the selector's loop only orders them (ALGORITHMS.md section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# --- scores -------------------------------------------------------------------------------------
def vote_weights(sims: np.ndarray, temperature: float) -> np.ndarray:
    """Neighbour vote weights: softmax(sim / T), or the clipped similarity itself when T = 0.

    With raw CLIP or pixel cosines every neighbour sits at 0.7-0.95, so linear weights are
    nearly uniform; a temperature lets the closest neighbours decide.
    """
    s = sims.astype(np.float64)
    if temperature > 0:
        return np.exp((s - s.max()) / temperature)
    return np.maximum(s, 1e-6)


@dataclass(frozen=True)
class Vote:
    """The similarity-weighted vote of an item's labelled neighbours."""

    agreement: float  # share of the weight on the item's own label
    best: int  # the label with the most weight (the smallest such label on a tie)
    share: float  # that label's share


def label_vote(sims: np.ndarray, labels: np.ndarray, label: int, temperature: float) -> Vote | None:
    """The vote of the neighbours that carry a label (-1: no label, or a corrected one); None if none do."""
    voted = labels >= 0
    if not voted.any():
        return None
    w = vote_weights(sims[voted], temperature)
    lv = labels[voted]
    total = w.sum()
    uniq = np.unique(lv)
    votes = np.array([w[lv == u].sum() for u in uniq])
    return Vote(float(w[lv == label].sum() / total), int(uniq[int(np.argmax(votes))]), float(votes.max() / total))


def gain_of(sims: np.ndarray, k_gain: int) -> float:
    """Mean cosine distance to the k nearest accepted items (1 with no neighbour yet)."""
    top = sims[:k_gain]
    return float(np.mean(1.0 - top)) if len(top) else 1.0


def normalised_gain(gain: float, q: float | None) -> float:
    """min(1, gain / q) with q the streaming gain quantile (1 before there is one)."""
    return 1.0 if not q else min(1.0, gain / q)


# --- rules --------------------------------------------------------------------------------------
def misaligned(align: float, threshold: float) -> bool:
    """Caption cleaning: cos(image, text) below the threshold in force."""
    return align < threshold


#: label_rule verdicts
LABEL_OK, LABEL_RELABEL, LABEL_DROP = "ok", "relabel", "drop"


def label_rule(vote: Vote, label: int, tau_noise: float, tau_relabel: float, action: str) -> str:
    """Label cleaning: keep an agreeing label; correct a disagreeing one to a confident majority
    (when `action` is 'relabel'), else drop the item."""
    if vote.agreement >= tau_noise:
        return LABEL_OK
    if action == "relabel" and vote.share >= tau_relabel and vote.best != label:
        return LABEL_RELABEL
    return LABEL_DROP


def duplicate(max_sim: float, eps_dup: float) -> bool:
    """Near-duplicate of an accepted item (SemDeDup's rule, online)."""
    return max_sim >= 1.0 - eps_dup


def keep_probability(gain_norm: float, mean_g: float, keep_rate: float) -> float:
    """Storage budget: keep with probability g * keep_rate / mean(g), at most 1."""
    return min(1.0, gain_norm * keep_rate / max(mean_g, 1e-9))


# --- reasons ------------------------------------------------------------------------------------
def reason_misaligned(align: float, threshold: float, why: str) -> str:
    return f"caption misaligned: cos(image, text) {align:.3f} < {threshold:.3f}; {why}"


def note_recaptioned(align: float, threshold: float, align_out: float) -> str:
    return f"caption misaligned (cos {align:.3f} < {threshold:.3f}); recaption scores {align_out:.3f}"


def why_not_recaptioned(has_hook: bool, proposal: str | None, align_out: float | None) -> str:
    if not has_hook:
        return "no recaption hook"
    return "no recaption proposed" if proposal is None else f"recaption scores {align_out:.3f}"


def label_base(label: int, agreement: float, tau_noise: float) -> str:
    return f"label {label} disagrees with neighbours (agreement {agreement:.2f} < {tau_noise})"


def note_relabelled(base: str, best: int, share: float) -> str:
    return f"{base}; corrected to {best} (share {share:.2f})"


def reason_label_dropped(base: str, share: float, tau_relabel: float, action: str) -> str:
    if action == "relabel":
        return f"{base}; no confident majority (share {share:.2f} < {tau_relabel})"
    return f"{base}; label_action=discard"


def note_unjudged(n_trusted: int, min_trusted: int) -> str:
    return (f"unjudged: only {n_trusted} accepted items (< selector.min_trusted {min_trusted}); "
            "give a trusted bootstrap")


def reason_duplicate(dup_of: str, max_sim: float, eps_dup: float) -> str:
    return f"near-duplicate of {dup_of} (cos {max_sim:.4f} >= {1 - eps_dup:.4f})"


def reason_budget(keep_prob: float, keep_rate: float, gain_norm: float) -> str:
    return (f"storage budget: keep probability {keep_prob:.3f} "
            f"(keep_rate {keep_rate}, normalised gain {gain_norm:.3f})")


def reason_accepted(trusted: bool, notes: list[str], gain: float | None) -> str:
    head = "trusted bootstrap" if trusted else "clean"
    return "; ".join([head, *notes, f"gain {gain:.4f}" if gain is not None else "no gain"])


def with_notes(notes: list[str], reason: str) -> str:
    return "; ".join([*notes, reason]) if notes else reason
