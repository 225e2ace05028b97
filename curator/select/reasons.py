"""The reason each decision gives, as a person reads it in the decisions table.

One function per verdict, and `compose` for how notes (recaptioned, relabelled, unjudged) and a drop
reason combine; the fast loop and the reference loop both call these.
"""

from __future__ import annotations


def _auto(how: str) -> str:
    """The threshold's status word ("calibrated", "floor"; "" for a configured number)."""
    return f" {how}" if how else ""


def misaligned(align: float, threshold: float, why: str, auto: str = "") -> str:
    return f"caption misaligned: cos(image, text) {align:.3f} < {threshold:.3f}{_auto(auto)}; {why}"


def recaptioned(align: float, threshold: float, align_out: float) -> str:
    return f"caption misaligned (cos {align:.3f} < {threshold:.3f}); recaption scores {align_out:.3f}"


def not_recaptioned(has_hook: bool, proposed: bool, align_out: float | None) -> str:
    if not has_hook:
        return "no recaption hook"
    return f"recaption scores {align_out:.3f}" if proposed else "no recaption proposed"


def label_base(label: int, agreement: float, tau_noise: float, auto: str = "") -> str:
    return f"label {label} disagrees with neighbours (agreement {agreement:.2f} < {tau_noise:g}{_auto(auto)})"


def weak_evidence(share: float, tau_relabel: float, nn_dist: float, radius: float) -> str:
    """Why a noisy label was not corrected: which part of the evidence was too weak."""
    parts = []
    if not share >= tau_relabel:
        parts.append("no correction is precise enough" if tau_relabel > 1 else
                     f"majority share {share:.2f} < {tau_relabel:g}")
    if not nn_dist <= radius:
        parts.append("correction radius not calibrated yet" if radius != radius else
                     f"nearest neighbour at distance {nn_dist:.4f} > radius {radius:.4f}")
    return "weak evidence for a correction: " + ("; ".join(parts) or "majority is the same label")


def kept_flagged(base: str, weak: str, agreement: float, tau_drop: float) -> str:
    why = "relabel_abstain=keep" if tau_drop < 0 else f"agreement {agreement:.2f} >= tau_drop {tau_drop:g}"
    return f"{base}; {weak}; kept with its label, flagged ({why})"


def relabelled(base: str, best: int, share: float) -> str:
    return f"{base}; corrected to {best} (share {share:.2f})"


def label_dropped(base: str, share: float, tau_relabel: float, relabel: bool, weak: str = "") -> str:
    if relabel:
        return f"{base}; {weak or f'no confident majority (share {share:.2f} < {tau_relabel:g})'}; dropped"
    return f"{base}; label_action=discard"


def unjudged(n_trusted: int, min_trusted: int, calibration: str = "") -> str:
    """Why the label rule did not judge this item: a rule that did not judge says so, never "clean"."""
    if n_trusted < 0:
        return f"not judged: labels (tau_noise {calibration})"
    return (f"not judged: labels, captions (only {n_trusted} accepted items < selector.min_trusted {min_trusted}; "
            "a trusted bootstrap judges from the first item)")


def captions_unjudged(status: str) -> str:
    return f"not judged: captions ({status})"


def duplicate(dup_of: str, max_sim: float, eps_dup: float, auto: str = "") -> str:
    how = f", eps_dup {eps_dup:.2g} {auto}" if auto else ""
    return f"near-duplicate of {dup_of} (cos {max_sim:.4f} >= {1 - eps_dup:.4f}{how})"


def exact_copy(dup_of: str, what: str) -> str:
    """Dropped by the exact hash rule: same bytes, pixels, vector or caption as an accepted item."""
    return f"duplicate of {dup_of} (exact hash: same {what})"


def near_copy(dup_of: str, bits: int, max_dist: int) -> str:
    """Dropped by the perceptual hash rule."""
    return f"near-copy of {dup_of} (perceptual hash: {bits} of 64 bits differ <= {max_dist})"


def budget(keep_prob: float, keep_rate: float, gain_norm: float) -> str:
    return f"storage budget: keep probability {keep_prob:.3f} (keep_rate {keep_rate}, normalised gain {gain_norm:.3f})"


def accepted_head(trusted: bool, notes: list[str]) -> str:
    """A kept item's reason before its gain: "clean" only when every rule that applies to it judged it;
    else its notes say which not."""
    unjudged_note = any(n.startswith("not judged") for n in notes)
    return "; ".join(["trusted bootstrap" if trusted else ("kept" if unjudged_note else "clean"), *notes])


def with_gain(head: str, gain: float) -> str:
    """A kept item's reason: its head, then its gain (NaN: none)."""
    return f"{head}; gain {gain:.4f}" if gain == gain else f"{head}; no gain"


def accepted(trusted: bool, notes: list[str], gain: float | None) -> str:
    """A kept item's whole reason (`reason_texts` builds the same from `accepted_head` once per head)."""
    return with_gain(accepted_head(trusted, notes), float("nan") if gain is None else gain)


def compose(notes: list[str], drop_reason: str, trusted: bool, gain: float | None) -> str:
    """A dropped item's reason after its notes; a kept item's: clean/trusted, its notes, its gain."""
    if drop_reason:
        return "; ".join([*notes, drop_reason]) if notes else drop_reason
    return accepted(trusted, notes, gain)
