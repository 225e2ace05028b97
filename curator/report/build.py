"""`curator report`: one self-contained HTML page that shows what a run kept, dropped and why.

The page opens from disk with no server and no network: plots are SVG images and thumbnails
PNG images, both inlined as data URIs; there is no script. Each table and plot comes with the
DuckDB query that reproduces it (`curator report` runs them through the same read-only views
as `curator query`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator.records import Decision
from curator.report import plots
from curator.report.data import DROPPED, ORDER, SCORES, Result, RunQueries
from curator.report.page import render
from curator.report.payloads import read_payloads
from curator.report.thresholds import Threshold, thresholds_in_force
from curator.report.thumbs import snippet, thumbnail_uri
from curator.report.training import TrainingRun, training_runs
from curator.store import StoreError, read_manifest

REPORT_FILE = "index.html"
GALLERY_SIZE = 24


@dataclass
class Plot:
    key: str
    title: str
    uri: str
    query: Result | None = None
    note: str = ""


@dataclass
class Card:
    """One item in a gallery: its thumbnail (or caption), labels, scores and reason."""

    title: str
    decision: str
    thumb: str | None = None
    caption: str | None = None
    placeholder: str | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    reason: str | None = None
    extra: list[tuple[str, str]] = field(default_factory=list)  # untrusted text shown as text: URI, metadata
    pair: Card | None = None  # the accepted item a duplicate duplicates
    pair_label: str = ""


@dataclass
class Gallery:
    key: str
    title: str
    note: str
    cards: list[Card]
    query: Result | None
    total: int = 0


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _image_card(row: dict[str, Any], image: Any, text: Any) -> tuple[str | None, str | None, str | None]:
    """(thumbnail, caption, placeholder): a placeholder says why there is no thumbnail, when it matters."""
    thumb = thumbnail_uri(image)
    caption = snippet(text, 160)
    placeholder: str | None = None
    if image is not None and thumb is None:
        placeholder = "not a decodable image"
    elif image is None and row.get("image_uri"):
        placeholder = "image by URI (not fetched)"
    elif thumb is None and caption is None:
        placeholder = "no image"
    return thumb, caption, placeholder


def _kept_cards(res: Result) -> list[Card]:
    cards = []
    for r in res.rows:
        thumb, caption, ph = _image_card(r, r.get("image"), r.get("text"))
        if r.get("label_original") != r.get("label"):
            facts = [("label", f"{_fmt(r.get('label_original'))} \u2192 {_fmt(r.get('label'))}")]
        else:
            facts = [("label", _fmt(r.get("label")))]
        facts += [("gain", _fmt(r.get("gain"))), ("seq", _fmt(r.get("seq")))]
        if r.get("align") is not None:
            facts.append(("align", _fmt(r.get("align"), 3)))
        if r.get("label_agreement") is not None:
            facts.append(("agreement", _fmt(r.get("label_agreement"), 2)))
        extra = [(k, snippet(r.get(c), 120) or "") for k, c in (("uri", "image_uri"), ("metadata", "metadata"))
                 if r.get(c)]
        cards.append(Card(snippet(r.get("id"), 80) or "", r.get("decision") or "", thumb, caption, ph, facts,
                          snippet(r.get("reason"), 300), extra=extra))
    return cards


def _dropped_cards(res: Result, decision: str, payloads: dict[tuple[str, int], dict[str, Any]]) -> list[Card]:
    cards = []
    for r in res.rows:
        off = r.get("offset")
        own = payloads.get((str(r.get("source")), int(off)), {}) if off is not None else {}
        thumb, caption, ph = _image_card(r, own.get("image"), own.get("text"))
        if not own:
            ph = "payload not stored (dropped items keep only their decision record)"
        facts = [("label in", _fmt(r.get("label_in")))]
        if r.get("label_out") is not None and r.get("label_out") != r.get("label_in"):
            facts.append(("label out", _fmt(r.get("label_out"))))
        for key, name, d in (("label_agreement", "agreement", 2), ("align", "align", 3), ("max_sim", "max sim", 4),
                             ("gain", "gain", 4), ("keep_prob", "keep prob", 3)):
            if r.get(key) is not None:
                facts.append((name, _fmt(r.get(key), d)))
        facts.append(("seq", _fmt(r.get("seq"))))
        card = Card(snippet(r.get("id"), 80) or "", decision, thumb, caption, ph, facts, snippet(r.get("reason"), 300))
        if r.get("dup_of") is not None:
            othumb, ocap, oph = _image_card({}, r.get("dup_image"), r.get("dup_text"))
            card.pair = Card(snippet(r.get("dup_of"), 80) or "", "kept", othumb, ocap, oph,
                             [("label", _fmt(r.get("dup_label"))), ("seq", _fmt(r.get("dup_seq")))])
            card.pair_label = "duplicates"
        cards.append(card)
    return cards


def _rejected_cards(res: Result) -> list[Card]:
    return [Card(snippet(r.get("id"), 80) or "(no id)", Decision.REJECTED_BAD_INPUT.value, None,
                 snippet(r.get("raw"), 240), "rejected before embedding",
                 [("source", snippet(r.get("source"), 60) or ""), ("partition", _fmt(r.get("partition"))),
                  ("offset", _fmt(r.get("offset")))], snippet(r.get("reason"), 300)) for r in res.rows]


def _series(res: Result, x_key: str) -> tuple[list[Any], dict[str, list[float]]]:
    xs = sorted({r[x_key] for r in res.rows})
    pos = {x: i for i, x in enumerate(xs)}
    names = [d for d in ORDER if any(r["decision"] == d for r in res.rows)]
    names += sorted({r["decision"] for r in res.rows} - set(names))
    series = {n: [0.0] * len(xs) for n in names}
    for r in res.rows:
        series[r["decision"]][pos[r[x_key]]] += r["items"]
    return xs, series


def _training_plots(runs: list[TrainingRun]) -> list[Plot]:
    out: list[Plot] = []
    for tr in runs:
        if not tr.history:
            continue
        curves = {k: tr.series(k) for k in ("eval_acc", "train_loss")}
        out.append(Plot(f"train-{len(out)}", tr.name, plots.training_curves(tr.name, tr.epochs, curves,
                                                                              tr.series("saving"))))
    return out


def build_report(run_dir: str | Path, gallery_size: int = GALLERY_SIZE) -> str:
    """The report of a run directory as one HTML document (text)."""
    return render("report.html.j2", **collect(run_dir, gallery_size))


def collect(run_dir: str | Path, gallery_size: int = GALLERY_SIZE) -> dict[str, Any]:
    """Everything the report shows (queries with their results, plots, galleries), before rendering."""
    run = Path(run_dir)
    manifest = read_manifest(run)
    if manifest is None:
        if not run.exists():
            raise StoreError(f"{run} does not exist; pass a run directory written by `curator ingest`, "
                             "`curator demo` or `curator serve`")
        raise StoreError(f"{run} has no manifest.json: nothing has been committed there yet, so there is "
                         "nothing to report")
    thresholds = thresholds_in_force(run)
    q = RunQueries(run)
    try:
        return _context(run, manifest, thresholds, q, gallery_size)
    finally:
        q.close()


def _context(run: Path, manifest: dict[str, Any], thresholds: dict[str, Threshold], q: RunQueries,
             gallery_size: int) -> dict[str, Any]:
    counts = q.decision_counts()
    total = sum(r["items"] for r in counts.rows)
    by_decision = {r["decision"]: r["items"] for r in counts.rows}
    figs: dict[str, Plot] = {}
    if counts.rows:
        figs["counts"] = Plot("counts", "Items per decision", plots.hbars(
            counts.column("decision"), counts.column("items"), "Items per decision", "items",
            [plots.colour(d) for d in counts.column("decision")]), counts)
    width = q.stream_bin()
    stream = q.decisions_over_stream(width)
    rejected = q.rejected_count()
    if stream.rows:
        xs, series = _series(stream, "seq_start")
        figs["stream"] = Plot("stream", "Decisions over the stream", plots.stacked_bars(
            xs, width, series, "selector order (seq)", f"items per {width}", "Decisions over the stream"), stream,
            f"{rejected} rejected input item(s) have no place in selector order (seq -1): see the rejected "
            "gallery." if rejected else "")
    growth = q.index_growth(width)
    if growth.rows:
        figs["growth"] = Plot("growth", "Index growth and keep rate", plots.growth(
            [r["seq_start"] + width for r in growth.rows], growth.column("index_size"), growth.column("keep_rate")),
            growth, "Index size counts every item inserted: kept, relabelled, recaptioned and budget-dropped "
                    "items (the trusted bootstrap included).")
    dist: list[Plot] = []
    for col in SCORES:
        t = thresholds.get(col)
        res = q.score_histogram(col, t.value if t else None)
        if res is None:
            continue
        xs, series = _series(res, "bin_start")
        label = f"{t.setting} = {t.value:.4f} ({t.origin})" if t and t.value is not None else ""
        dist.append(Plot(f"dist-{col}", SCORES[col], plots.stacked_bars(
            xs, res.meta["width"], series, col, "items",
            SCORES[col], t.value if t else None, label), res, t.rule if t else ""))
    sources = q.per_source()
    if sources.rows:
        labels = [f"{r['source']} [{r['partition']}]" for r in sources.rows]
        figs["sources"] = Plot("sources", "Keep rate per source and partition", plots.hbars(
            labels, sources.column("keep_rate"), "Keep rate per source / partition", "keep rate", None, "{:.3f}"),
            sources)
    galleries = _galleries(run, q, by_decision, gallery_size)
    runs = training_runs(run)
    return {
        "run": {"dir": str(run.resolve()), "commit": manifest.get("commit"), "model": manifest.get("model"),
                "fingerprint": manifest.get("config_fingerprint"), "created": manifest.get("created"),
                "updated": manifest.get("updated"), "decided": total,
                "kept": sum(by_decision.get(d, 0) for d in ("kept", "relabelled", "recaptioned"))},
        "query_cmd": f"curator query {shlex.quote(str(run))}",
        "thresholds": list(thresholds.values()),
        "counts": counts, "reasons": q.reason_counts(), "figs": figs, "dist": dist, "sources": sources,
        "galleries": galleries, "training": runs, "training_plots": _training_plots(runs),
    }


def _galleries(run: Path, q: RunQueries, by_decision: dict[str, int], n: int) -> list[Gallery]:
    out = []
    for d, note in ((Decision.KEPT.value, "A sample of the curated set (ordered by a hash of the id)."),
                    (Decision.RELABELLED.value, "Kept with a corrected label: both labels shown."),
                    (Decision.RECAPTIONED.value, "Kept with a new caption from the recaption hook.")):
        if by_decision.get(d):
            res = q.kept_gallery(d, n)
            out.append(Gallery(d, d, note, _kept_cards(res) if res else [], res, by_decision[d]))
    notes = {
        Decision.DROPPED_NOISY.value: "Label or caption judged wrong and not corrected.",
        Decision.DROPPED_DUPLICATE.value: "Each near-duplicate beside the accepted item it duplicates (dup_of).",
        Decision.DROPPED_BY_BUDGET.value: "Clean, but not sampled under the storage budget.",
    }
    for d in DROPPED:
        if by_decision.get(d):
            res = q.dropped_gallery(d, n)
            pay = read_payloads(run, [(r["source"], r["offset"]) for r in res.rows])
            out.append(Gallery(d, d, notes[d] + (" Thumbnails of the dropped items are read back from the run's "
                                                 "Parquet inputs." if pay else ""),
                               _dropped_cards(res, d, pay), res, by_decision[d]))
    if by_decision.get(Decision.REJECTED_BAD_INPUT.value):
        res = q.rejected_gallery(n)
        out.append(Gallery(Decision.REJECTED_BAD_INPUT.value, Decision.REJECTED_BAD_INPUT.value,
                           "Input that could not be processed, with the reason and the start of the raw record.",
                           _rejected_cards(res), res, by_decision[Decision.REJECTED_BAD_INPUT.value]))
    return out


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, gallery_size: int = GALLERY_SIZE) -> Path:
    """Write OUT_DIR/index.html (default RUN_DIR/report) and return its path."""
    html = build_report(run_dir, gallery_size)
    out = Path(out_dir) if out_dir else Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path.resolve()
