"""What the report shows, as DuckDB queries over the run's read-only views.

Every table and plot in the report is the result of one query below, run through the same
sandboxed connection as `curator query` (`curator.store.query.connect`): the report prints each
query beside what it drew, so a reader can reproduce any number with
``curator query RUN_DIR "SQL"``. Numbers that depend on the data (bin widths, ranges) are
computed first and written into the SQL as literals, so the printed query is the one that ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from curator.formats import IDENTITY_BIT
from curator.records import KEPT_DECISIONS, Decision
from curator.store import committed_parts
from curator.store.query import connect

KEPT = tuple(sorted(d.value for d in KEPT_DECISIONS))
#: Decisions whose item went into the index: every clean non-duplicate (budget drops included).
INSERTED = (*KEPT, Decision.DROPPED_BY_BUDGET.value)
DROPPED = (Decision.DROPPED_NOISY.value, Decision.DROPPED_DUPLICATE.value, Decision.DROPPED_BY_BUDGET.value,
           Decision.DROPPED_FILTERED.value)
#: What the report shows of the kept item a duplicate duplicates.
DUP_COLUMNS = ("dup_seq", "dup_image", "dup_text", "dup_label", "dup_source", "dup_offset")
#: Decisions in the order the report lists them.
ORDER = tuple(d.value for d in Decision)
#: Score columns with a distribution plot, and what they mean.
SCORES = {
    "align": "caption alignment cos(image, text)",
    "label_agreement": "label agreement (similarity-weighted share of neighbours agreeing)",
    "gain": "gain (mean 1 - cos to the k nearest accepted items)",
    "max_sim": "max similarity (cos to the nearest accepted item)",
}
STREAM_BINS = 60
HIST_BINS = 40
#: Bars in the keep-rate-per-source chart: more sources than this are shown per folder.
MAX_SOURCES = 30


def sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


@dataclass
class Result:
    """One query and what it returned (rows as dicts, in order)."""

    title: str
    sql: str
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # literals computed for the SQL (bin width, ...)

    def column(self, name: str) -> list[Any]:
        return [r[name] for r in self.rows]


class RunQueries:
    """The report's queries over one run directory (one sandboxed connection)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.has_kept = bool(committed_parts(self.run_dir)["kept"])
        self.con: duckdb.DuckDBPyConnection = connect(self.run_dir)

    def close(self) -> None:
        self.con.close()

    def run(self, title: str, sql: str) -> Result:
        cur = self.con.execute(sql)
        cols = [d[0] for d in cur.description or []]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        return Result(title, " ".join(sql.split()), cols, rows)

    def scalar(self, sql: str) -> Any:
        row = self.con.execute(sql).fetchone()
        return None if row is None else row[0]

    # --- overview --------------------------------------------------------------------------
    def decision_counts(self) -> Result:
        return self.run("Items per decision", """
            SELECT decision, count(*) AS items, round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS percent
            FROM decisions GROUP BY decision ORDER BY items DESC, decision""")

    def reason_counts(self, limit: int = 40) -> Result:
        # numbers and the duplicated item's id vary per item; the pattern is what repeats
        return self.run("Items per reason (numbers shown as #)", f"""
            SELECT decision, regexp_replace(regexp_replace(reason, '(duplicate|near-copy) of .*? \\(',
                   '\\1 of <id> ('), '-?[0-9]+(\\.[0-9]+)?', '#', 'g') AS reason, count(*) AS items
            FROM decisions GROUP BY ALL ORDER BY items DESC, decision, reason LIMIT {int(limit)}""")

    def stream_bin(self) -> int:
        top = self.scalar("SELECT max(seq) FROM decisions")
        return max(1, math.ceil((int(top or 0) + 1) / STREAM_BINS))

    def decisions_over_stream(self, width: int) -> Result:
        return self.run("Decisions over the stream (by selector order seq)", f"""
            SELECT (seq // {width}) * {width} AS seq_start, decision, count(*) AS items
            FROM decisions WHERE seq >= 0 GROUP BY ALL ORDER BY seq_start, decision""")

    def rejected_count(self) -> int:
        return int(self.scalar("SELECT count(*) FROM decisions WHERE decision = 'rejected-bad-input'") or 0)

    def index_growth(self, width: int) -> Result:
        return self.run("Index growth and keep rate over the stream", f"""
            SELECT seq_start, items, kept, round(kept / items, 4) AS keep_rate,
                   sum(inserted) OVER (ORDER BY seq_start) AS index_size
            FROM (SELECT (seq // {width}) * {width} AS seq_start, count(*) AS items,
                         count(*) FILTER (WHERE decision IN {sql_list(KEPT)}) AS kept,
                         count(*) FILTER (WHERE decision IN {sql_list(INSERTED)}) AS inserted
                  FROM decisions WHERE seq >= 0 GROUP BY 1) ORDER BY seq_start""")

    def per_source(self) -> Result:
        """Keep rate per source; with more than MAX_SOURCES sources (an image folder: one per image), per
        folder the sources are in, the largest MAX_SOURCES folders by items. A file's partition is an
        identity tag, not shown; a Kafka topic's partitions are."""
        kept = f"count(*) FILTER (WHERE decision IN {sql_list(KEPT)})"
        counts = (f"count(*) AS items, {kept} AS kept, count(*) FILTER (WHERE decision = 'rejected-bad-input') "
                  f"AS rejected, round({kept} / count(*), 4) AS keep_rate")
        if int(self.scalar("SELECT count(DISTINCT source) FROM decisions") or 0) <= MAX_SOURCES:
            part = f"CASE WHEN \"partition\" < {IDENTITY_BIT} THEN \"partition\" END"
            return self.run("Keep rate per source", f"""
                SELECT source, {part} AS "partition", {counts}
                FROM decisions GROUP BY ALL ORDER BY source, "partition" NULLS FIRST LIMIT 200""")
        folder = "CASE WHEN contains(source, '/') THEN regexp_replace(source, '/[^/]*$', '') ELSE '.' END"
        res = self.run("Keep rate per folder of the sources", f"""
            SELECT {folder} AS folder, count(DISTINCT source) AS sources, {counts}
            FROM decisions GROUP BY ALL ORDER BY items DESC, folder LIMIT {MAX_SOURCES}""")
        res.meta["folders"] = int(self.scalar(f"SELECT count(DISTINCT {folder}) FROM decisions") or 0)
        if res.meta["folders"] > MAX_SOURCES:
            res.title += f" (the {MAX_SOURCES} largest by items)"
        return res

    def score_histogram(self, col: str, threshold: float | None) -> Result | None:
        """Counts per bin and decision of one score; the bins span the data and the threshold."""
        if col not in SCORES:
            raise ValueError(f"unknown score column {col!r}")
        row = self.con.execute(f"SELECT min({col}), max({col}), count({col}) FROM decisions").fetchone()
        lo, hi, n = row if row is not None else (None, None, 0)
        if not n:
            return None
        lo, hi = float(lo), float(hi)
        if threshold is not None and math.isfinite(threshold):
            lo, hi = min(lo, threshold), max(hi, threshold)
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5e-3, hi + 0.5e-3
        w = (hi - lo) / HIST_BINS
        res = self.run(f"Distribution of {SCORES[col]}", f"""
            SELECT least(floor(({col} - {lo!r}) / {w!r}), {HIST_BINS - 1})::INTEGER AS bin,
                   {lo!r} + {w!r} * least(floor(({col} - {lo!r}) / {w!r}), {HIST_BINS - 1}) AS bin_start,
                   decision, count(*) AS items
            FROM decisions WHERE {col} IS NOT NULL GROUP BY ALL ORDER BY bin, decision""")
        res.meta = {"width": w, "lo": lo, "hi": hi}
        return res

    # --- galleries -------------------------------------------------------------------------
    def kept_gallery(self, decision: str, limit: int) -> Result | None:
        """Kept items of one decision (kept / relabelled / recaptioned), with their decision record."""
        if not self.has_kept:
            return None
        order = "hash(k.id), k.seq" if decision == Decision.KEPT.value else "k.seq"
        return self.run(f"Gallery: {decision}", f"""
            SELECT k.id, k.seq, k.decision, k.label, k.label_original, k.gain, k.text, k.image, k.image_uri,
                   k.metadata, k.source, k."partition", k."offset", d.reason, d.label_agreement, d.align, d.align_out,
                   d.max_sim
            FROM kept k LEFT JOIN decisions d ON d.seq = k.seq AND d.seq >= 0
            WHERE k.decision = '{decision}' ORDER BY {order} LIMIT {int(limit)}""")

    def _originals(self) -> str:
        """A join of the kept item a duplicate duplicates (its stored image and its position)."""
        return ("LEFT JOIN (SELECT id, min(seq) AS seq, arg_min(image, seq) AS image, arg_min(text, seq) AS text, "
                "arg_min(label, seq) AS label, arg_min(source, seq) AS source, arg_min(\"offset\", seq) AS \"offset\" "
                "FROM kept GROUP BY id) o ON o.id = {dup_of}")

    ORIGINAL = ("o.seq AS dup_seq, o.image AS dup_image, o.text AS dup_text, o.label AS dup_label, "
                "o.source AS dup_source, o.\"offset\" AS dup_offset")

    def dropped_gallery(self, decision: str, limit: int) -> Result:
        """Dropped items of one decision; a duplicate comes with the accepted item it duplicates."""
        if decision not in DROPPED:
            raise ValueError(f"not a dropping decision: {decision!r}")
        if self.has_kept:
            orig, cols = self._originals().format(dup_of="d.dup_of"), self.ORIGINAL
        else:
            orig, cols = "", ", ".join(f"NULL AS {c}" for c in DUP_COLUMNS)
        if decision == Decision.DROPPED_FILTERED.value:  # every filter's score (filtered items are not in seq order)
            cols += ", d.filters"
        return self.run(f"Gallery: {decision}", f"""
            SELECT d.id, d.seq, d.source, d."partition", d."offset", d.reason, d.label_in, d.label_out,
                   d.label_agreement, d.align, d.gain, d.max_sim, d.keep_prob, d.dup_of, d.dup_rule, d.hash_dist,
                   {cols}
            FROM decisions d {orig}
            WHERE d.decision = '{decision}' ORDER BY d.seq, d.source, d."offset" LIMIT {int(limit)}""")

    def duplicate_clusters(self, clusters: int, members: int) -> Result | None:
        """Items dropped as duplicates of the same kept item, grouped: the largest groups first, each
        with its first `members` copies (in stream order) and the kept item they duplicate."""
        if not self.has_kept:
            return None
        return self.run("Duplicate clusters", f"""
            SELECT c.dup_of, c.copies, c.members, {self.ORIGINAL}
            FROM (SELECT dup_of, count(*) AS copies, min(seq) AS first_seq,
                         list(struct_pack(id := id, seq := seq, source := source, "offset" := "offset",
                                          max_sim := max_sim, dup_rule := dup_rule, hash_dist := hash_dist)
                                          ORDER BY seq)[1:{int(members)}] AS members
                  FROM decisions WHERE decision = 'dropped-duplicate' AND dup_of IS NOT NULL GROUP BY dup_of) c
            {self._originals().format(dup_of="c.dup_of")}
            ORDER BY c.copies DESC, c.first_seq LIMIT {int(clusters)}""")

    def rejected_gallery(self, limit: int) -> Result:
        return self.run("Gallery: rejected-bad-input", f"""
            SELECT source, "partition", "offset", id, reason, raw FROM quarantine
            ORDER BY source, "partition", "offset" LIMIT {int(limit)}""")
