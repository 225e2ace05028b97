"""The selection thresholds that were in force for a run, and where each value comes from.

One place reads them, so the report draws the same lines whatever decided the values: a
value the run recorded in its manifest (``manifest["calibration"]``, written when a threshold
is calibrated rather than configured) wins over the configured one in ``config.toml``; a
threshold the selector derives from its own sketches (``align_mode = "bootstrap"`` /
``"adaptive"``) is read back from the checkpointed selector state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from curator.select.sketch import StreamingQuantile
from curator.store import read_manifest


@dataclass(frozen=True)
class Threshold:
    """One line on a score distribution: items on the wrong side of `value` are dropped."""

    score: str  # decisions column the threshold applies to
    value: float | None  # None: not in force for this run (e.g. caption cleaning off)
    rule: str  # what happens on which side, for people
    origin: str  # "manifest calibration", "config.toml", "selector state", ...
    setting: str  # the config setting behind it


def _number(v: Any) -> float | None:
    """A finite float from a config/manifest value; None for 'auto', missing or junk."""
    if isinstance(v, dict):
        v = v.get("value", v.get("chosen"))
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _config(run_dir: Path) -> dict[str, Any]:
    """The run's config.toml as a raw dict: read tolerantly (values may be 'auto' in newer runs)."""
    p = run_dir / "config.toml"
    if not p.is_file():
        return {}
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return {}


def _sketch_quantile(state: dict[str, Any] | None, key: str, q: float, lower: bool = False) -> float | None:
    sk = (state or {}).get(key)
    if not isinstance(sk, dict) or not sk.get("counts"):
        return None
    s = StreamingQuantile(-1.0, 1.0)
    try:
        s.load_state_dict(sk)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return s.quantile(q, lower=lower)


def thresholds_in_force(run_dir: str | Path) -> dict[str, Threshold]:
    """Thresholds per score column (align, label_agreement, max_sim, gain) for a run directory."""
    run = Path(run_dir)
    manifest = read_manifest(run) or {}
    raw_cal = manifest.get("calibration")
    cal: dict[str, Any] = raw_cal if isinstance(raw_cal, dict) else {}
    sel = _config(run).get("selector", {})
    state = manifest.get("selector_state") if isinstance(manifest.get("selector_state"), dict) else None

    def pick(name: str, default: float) -> tuple[float | None, str]:
        status = cal[name].get("origin") if isinstance(cal.get(name), dict) else None
        if isinstance(status, str) and status.startswith(("not applied", "never")):
            return None, status  # the rule judged nothing: no line to draw, the status says why
        if _number(cal.get(name)) is not None:
            return _number(cal.get(name)), status if isinstance(status, str) else "manifest calibration"
        if _number(sel.get(name)) is not None:
            return _number(sel.get(name)), "config.toml"
        return (default, "built-in default") if name not in sel else (None, f"config.toml ({sel[name]!r})")

    out: dict[str, Threshold] = {}
    tau, origin = pick("tau_noise", 0.3)
    out["label_agreement"] = Threshold("label_agreement", tau, "label noisy below", origin, "selector.tau_noise")

    eps, origin = pick("eps_dup", 0.02)
    out["max_sim"] = Threshold("max_sim", None if eps is None else 1.0 - eps, "near-duplicate at or above",
                               origin, "selector.eps_dup (line at 1 - eps_dup)")

    mode = sel.get("align_mode", "fixed")
    align: float | None
    if mode == "fixed" and isinstance(cal.get("align_threshold"), dict):
        align, origin = pick("align_threshold", 0.25)
    elif mode == "off":
        align, origin = None, "config.toml (align_mode = 'off')"
    elif mode == "bootstrap":
        q: float = _number(sel.get("align_bootstrap_quantile")) or 0.0
        align = _sketch_quantile(state, "boot_align_sketch", q, lower=True)
        origin = f"selector state (quantile {q:g} of the trusted pairs)"
        if align is None:
            align, origin = pick("align_threshold", 0.25)
    elif mode == "adaptive":
        q = _number(sel.get("align_drop_quantile")) or 0.2
        align = _sketch_quantile(state, "align_sketch", q)
        origin = f"selector state (quantile {q:g} of alignments, at the last commit)"
        if align is None:
            align, origin = pick("align_threshold", 0.25)
    else:
        align, origin = pick("align_threshold", 0.25)
    out["align"] = Threshold("align", align, "caption dropped below", origin, "selector.align_threshold")

    keep_rate, _ = pick("keep_rate", 0.0)
    gq, _ = pick("gain_quantile", 0.99)
    gain_norm = _number(cal.get("gain_threshold"))
    if gain_norm is not None:
        out["gain"] = Threshold("gain", gain_norm, "dropped below", "manifest calibration", "selector.gain")
    else:
        sk = (state or {}).get("gain_sketch")
        norm: float | None = None
        if isinstance(sk, dict) and sk.get("counts"):
            s = StreamingQuantile(0.0, 2.0)
            try:
                s.load_state_dict(sk)
                norm = s.quantile(gq or 0.99)
            except (KeyError, TypeError, ValueError, IndexError):
                norm = None
        rule = ("normaliser q(gain): keep probability grows with gain / q" if keep_rate
                else "normaliser q(gain) only: no gain threshold without a budget (keep_rate = 0)")
        out["gain"] = Threshold("gain", norm, rule, "selector state",
                                f"selector.gain_quantile = {gq if gq is not None else sel.get('gain_quantile')}")
    return out
