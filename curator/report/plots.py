"""The report's plots, drawn by matplotlib as SVG and embedded as images.

Why matplotlib and SVG images: the report must open from disk on a machine with no network
and run no script at all (its data is untrusted, and the page's Content-Security-Policy forbids
scripts). A static SVG inside ``<img src="data:image/svg+xml;base64,...">`` is sharp at any
zoom, needs no JavaScript, and cannot run anything even if a label were hostile: browsers do
not execute scripts in SVG loaded as an image. Text is drawn as paths (``svg.fonttype = path``)
and mathtext is off (``text.parse_math``), so labels from the data are only ever shapes.
Figures are built with the object API (no pyplot): no global state, safe in a server thread.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: One colour per decision, the same in every plot.
COLOURS = {
    "kept": "#2e7d32",
    "relabelled": "#1565c0",
    "recaptioned": "#6a1b9a",
    "dropped-noisy": "#ef6c00",
    "dropped-duplicate": "#9e9e9e",
    "dropped-by-budget": "#c0a000",
    "dropped-filtered": "#6d4c41",
    "rejected-bad-input": "#c62828",
}
_RC: Any = {"svg.fonttype": "path", "svg.hashsalt": "curator-report", "text.parse_math": False,
       "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


def colour(decision: str) -> str:
    return COLOURS.get(decision, "#607d8b")


def _label(text: Any, limit: int = 48) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "\u2026"


def svg_uri(fig: Figure) -> str:
    """The figure as a base64 SVG data URI (deterministic: no date, fixed ids)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 7.0, h: float = 3.0) -> Figure:
    with matplotlib.rc_context(_RC):
        return Figure(figsize=(w, h), layout="constrained")


def stacked_bars(x: Sequence[float], width: float, series: Mapping[str, Sequence[float]], xlabel: str,
                 ylabel: str, title: str, vline: float | None = None, vlabel: str = "") -> str:
    """Bars stacked by decision over x (stream bins or score bins), with an optional threshold line."""
    with matplotlib.rc_context(_RC):
        fig = _figure()
        ax = fig.add_subplot()
        bottom = [0.0] * len(x)
        for name, ys in series.items():
            ax.bar(list(x), list(ys), width=width, bottom=bottom, align="edge", color=colour(name),
                   label=_label(name), linewidth=0)
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        if vline is not None:
            ax.axvline(vline, color="#000000", linestyle="--", linewidth=1.2, label=_label(vlabel, 90))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(_label(title, 90))
        ax.legend(fontsize=7, frameon=False, loc="best")
        return svg_uri(fig)


def hbars(labels: Sequence[Any], values: Sequence[float], title: str, xlabel: str,
          colours: Sequence[str] | None = None, fmt: str = "{:,.0f}") -> str:
    """Horizontal bars with their values written at the end (counts per decision, keep rate per source)."""
    with matplotlib.rc_context(_RC):
        n = len(labels)
        fig = _figure(7.0, max(1.6, 0.3 * n + 0.8))
        ax = fig.add_subplot()
        ys = list(range(n))[::-1]
        ax.barh(ys, list(values), color=list(colours) if colours else "#455a64")
        ax.set_yticks(ys, [_label(v) for v in labels])
        for y, v in zip(ys, values, strict=True):
            ax.annotate(fmt.format(v), (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_title(_label(title, 90))
        ax.margins(x=0.12)
        return svg_uri(fig)


def growth(seq: Sequence[float], index_size: Sequence[float], keep_rate: Sequence[float]) -> str:
    """Index size (left axis) and keep rate per stream bin (right axis) over the stream."""
    with matplotlib.rc_context(_RC):
        fig = _figure()
        ax = fig.add_subplot()
        ax.plot(list(seq), list(index_size), color="#1565c0", linewidth=1.8, label="index size (items)")
        ax.set_xlabel("selector order (seq)")
        ax.set_ylabel("items in the index", color="#1565c0")
        ax2 = ax.twinx()
        ax2.plot(list(seq), list(keep_rate), color="#2e7d32", linewidth=1.2, marker=".", label="keep rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("keep rate per bin", color="#2e7d32")
        ax2.spines["right"].set_visible(True)
        ax.set_title("Index growth and keep rate over the stream")
        return svg_uri(fig)


def training_curves(name: str, epochs: Sequence[int], curves: Mapping[str, Sequence[float | None]],
                    saving: Sequence[float | None]) -> str:
    """Per-epoch curves of one training run (left) and the achieved InfoBatch saving so far (right)."""
    with matplotlib.rc_context(_RC):
        fig = _figure(7.5, 2.8)
        ax, ax2 = fig.subplots(1, 2)
        for key, ys in curves.items():
            pts = [(e, y) for e, y in zip(epochs, ys, strict=True) if y is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=_label(key))
        ax.set_xlabel("epoch")
        ax.set_title(_label(f"{name}: per epoch", 60))
        ax.legend(fontsize=7, frameon=False)
        pts = [(e, y) for e, y in zip(epochs, saving, strict=True) if y is not None]
        ax2.plot([p[0] for p in pts], [100.0 * p[1] for p in pts], color="#6a1b9a", marker=".")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("% of sample-steps saved")
        ax2.set_title("InfoBatch saving so far")
        for a in (ax, ax2):
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        return svg_uri(fig)
