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
from curator.report.thresholds import Threshold, thresholds_in_force
from curator.report.thumbs import snippet, thumbnail_uri
from curator.report.training import TrainingRun, training_runs
from curator.store import StoreError, read_manifest
from curator.store.payloads import Payload, read_payloads

REPORT_FILE = "index.html"
GALLERY_SIZE = 24
#: Duplicate clusters shown, and copies shown per cluster.
CLUSTERS, CLUSTER_COPIES = 12, 8
NOT_READ = "not stored, and its input file cannot be read back (gone, changed, or a stream)"


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
class Cluster:
    """Items dropped as duplicates of one kept item: the item, then its copies side by side."""

    original: Card
    copies: list[Card]
    total: int


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


Payloads = dict[tuple[str, int], Payload]


def _payload(image: Any, text: Any, source: Any, offset: Any, payloads: Payloads) -> tuple[Any, Any, bool]:
    """(image, caption, read): the stored image, else the item's input file read at its position."""
    if image is not None:
        return image, text, True
    got = payloads.get((source, offset)) if isinstance(source, str) and isinstance(offset, int) else None
    if got is None:
        return None, text, False
    return got.get("image"), text if text is not None else got.get("text"), True


def _unstored(rows: list[dict[str, Any]], image: str = "image", source: str = "source",
              offset: str = "offset") -> list[tuple[Any, Any]]:
    """Positions of the rows whose image is not stored."""
    return [(r.get(source), r.get(offset)) for r in rows if r.get(image) is None]


def _kept_cards(res: Result, payloads: Payloads) -> list[Card]:
    cards = []
    for r in res.rows:
        image, text, _ = _payload(r.get("image"), r.get("text"), r.get("source"), r.get("offset"), payloads)
        thumb, caption, ph = _image_card(r, image, text)
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


def _dropped_cards(res: Result, decision: str, payloads: Payloads) -> list[Card]:
    cards = []
    for r in res.rows:
        image, text, read = _payload(None, None, r.get("source"), r.get("offset"), payloads)
        thumb, caption, ph = _image_card(r, image, text)
        if not read:
            ph = NOT_READ
        facts = [("label in", _fmt(r.get("label_in")))]
        if r.get("label_out") is not None and r.get("label_out") != r.get("label_in"):
            facts.append(("label out", _fmt(r.get("label_out"))))
        for key, name, d in (("label_agreement", "agreement", 2), ("align", "align", 3), ("max_sim", "max sim", 4),
                             ("gain", "gain", 4), ("keep_prob", "keep prob", 3), ("dup_rule", "rule", 0),
                             ("hash_dist", "hash bits", 0)):
            if r.get(key) is not None:
                facts.append((name, _fmt(r.get(key), d)))
        facts += [(str(k), "-" if v is None else f"{v:.4g}") for k, v in (r.get("filters") or {}).items()]
        facts.append(("seq", _fmt(r.get("seq"))))
        card = Card(snippet(r.get("id"), 80) or "", decision, thumb, caption, ph, facts, snippet(r.get("reason"), 300))
        if r.get("dup_of") is not None:
            card.pair = _original_card(r, payloads)
            card.pair_label = "duplicates"
        cards.append(card)
    return cards


def _original_card(r: dict[str, Any], payloads: Payloads, *facts: tuple[str, str]) -> Card:
    """The kept item a duplicate duplicates (`DUP_COLUMNS` of the row), as a card."""
    image, text, read = _payload(r.get("dup_image"), r.get("dup_text"), r.get("dup_source"), r.get("dup_offset"),
                                 payloads)
    thumb, caption, ph = _image_card({}, image, text)
    if r.get("dup_seq") is None:
        ph = "not in the curated set"
    elif not read:
        ph = NOT_READ
    return Card(snippet(r.get("dup_of"), 80) or "", "kept", thumb, caption, ph,
                [("label", _fmt(r.get("dup_label"))), ("seq", _fmt(r.get("dup_seq"))), *facts])


def _cluster(r: dict[str, Any], payloads: Payloads) -> Cluster:
    copies = []
    for m in r.get("members") or []:
        image, text, read = _payload(None, None, m.get("source"), m.get("offset"), payloads)
        thumb, caption, ph = _image_card({}, image, text)
        copies.append(Card(snippet(m.get("id"), 80) or "", Decision.DROPPED_DUPLICATE.value, thumb, caption,
                           ph if read else NOT_READ, [("rule", _fmt(m.get("dup_rule"))), ("max sim", _fmt(m.get("max_sim"))),
                                                      ("seq", _fmt(m.get("seq")))]))
    return Cluster(_original_card(r, payloads, ("copies", _fmt(r.get("copies")))), copies, int(r.get("copies") or 0))


def _clusters(run: Path, q: RunQueries) -> tuple[list[Cluster], Result | None]:
    res = q.duplicate_clusters(CLUSTERS, CLUSTER_COPIES)
    if res is None or not res.rows:
        return [], res
    wanted = _unstored(res.rows, "dup_image", "dup_source", "dup_offset")
    wanted += [(m.get("source"), m.get("offset")) for r in res.rows for m in r.get("members") or []]
    pay = read_payloads(run, wanted)
    return [_cluster(r, pay) for r in res.rows], res


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
    filtered = by_decision.get(Decision.DROPPED_FILTERED.value, 0)
    unplaced = " and ".join([f"{rejected} rejected input item(s)"] * bool(rejected)
                            + [f"{filtered} item(s) dropped by a filter"] * bool(filtered))
    if stream.rows:
        xs, series = _series(stream, "seq_start")
        figs["stream"] = Plot("stream", "Decisions over the stream", plots.stacked_bars(
            xs, width, series, "selector order (seq)", f"items per {width}", "Decisions over the stream"), stream,
            f"{unplaced} have no place in selector order (seq -1): see their galleries." if unplaced else "")
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
        label = "" if t is None else (f"{t.setting} = {t.value:.4f} ({t.origin})" if t.value is not None
                                      else f"{t.setting}: {t.origin}")  # a rule not applied says why
        dist.append(Plot(f"dist-{col}", SCORES[col], plots.stacked_bars(
            xs, res.meta["width"], series, col, "items",
            SCORES[col], t.value if t else None, label), res, t.rule if t else ""))
    sources = q.per_source()
    if sources.rows:
        if "folder" in sources.columns:
            labels = [f"{r['folder']} ({r['sources']} files)" for r in sources.rows]
            shown = len(sources.rows)
            note = (f"{sources.meta['folders']} folders hold the sources; the {shown} with the most items are shown."
                    if sources.meta["folders"] > shown else "One bar per folder the sources are in.")
        else:
            labels = [r["source"] + (f" [{r['partition']}]" if r["partition"] is not None else "")
                      for r in sources.rows]
            note = ""
        figs["sources"] = Plot("sources", sources.title, plots.hbars(
            labels, sources.column("keep_rate"), sources.title, "keep rate", None, "{:.3f}"), sources, note)
    galleries = _galleries(run, q, by_decision, gallery_size)
    clusters, cluster_query = _clusters(run, q)
    runs = training_runs(run)
    return {
        "run": {"dir": str(run.resolve()), "commit": manifest.get("commit"), "model": manifest.get("model"),
                "fingerprint": manifest.get("config_fingerprint"), "created": manifest.get("created"),
                "updated": manifest.get("updated"), "decided": total,
                "kept": sum(by_decision.get(d, 0) for d in ("kept", "relabelled", "recaptioned"))},
        "query_cmd": f"curator query {shlex.quote(str(run))}",
        "thresholds": list(thresholds.values()),
        "counts": counts, "reasons": q.reason_counts(), "figs": figs, "dist": dist, "sources": sources,
        "galleries": galleries, "clusters": clusters, "cluster_query": cluster_query, "cluster_copies": CLUSTER_COPIES,
        "duplicates": by_decision.get(Decision.DROPPED_DUPLICATE.value, 0), "training": runs, "training_plots": _training_plots(runs),
    }


def _galleries(run: Path, q: RunQueries, by_decision: dict[str, int], n: int) -> list[Gallery]:
    out = []
    read_back = " Images not stored in the run are read back from its input files."
    for d, note in ((Decision.KEPT.value, "A sample of the curated set (ordered by a hash of the id)."),
                    (Decision.RELABELLED.value, "Kept with a corrected label: both labels shown."),
                    (Decision.RECAPTIONED.value, "Kept with a new caption from the recaption hook.")):
        if by_decision.get(d):
            res = q.kept_gallery(d, n)
            pay = read_payloads(run, _unstored(res.rows)) if res else {}
            out.append(Gallery(d, d, note + (read_back if pay else ""), _kept_cards(res, pay) if res else [], res,
                               by_decision[d]))
    notes = {
        Decision.DROPPED_NOISY.value: "Label or caption judged wrong and not corrected.",
        Decision.DROPPED_DUPLICATE.value: "Each near-duplicate beside the accepted item it duplicates (dup_of).",
        Decision.DROPPED_BY_BUDGET.value: "Clean, but not sampled under the storage budget.",
        Decision.DROPPED_FILTERED.value: "Outside a configured filter's keep range, dropped before embedding; "
                                         "the reason names the filter, and every filter's score is shown.",
    }
    for d in DROPPED:
        if by_decision.get(d):
            res = q.dropped_gallery(d, n)
            wanted = [(r["source"], r["offset"]) for r in res.rows]
            pay = read_payloads(run, wanted + _unstored(res.rows, "dup_image", "dup_source", "dup_offset"))
            out.append(Gallery(d, d, notes[d] + (read_back if pay else ""), _dropped_cards(res, d, pay), res,
                               by_decision[d]))
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
