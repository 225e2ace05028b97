"""Read-only DuckDB over a run directory: views `kept`, `decisions`, `quarantine`.

The views name only the parts the manifest commits, so a query never sees a half-written
run. The connection is sandboxed: file access is limited to the run directory, the
configuration is locked, and only SELECT-like statements are accepted.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from curator.records import DECISION_SCHEMA, QUARANTINE_SCHEMA
from curator.store.writer import TABLES, committed_parts

READ_ONLY_TYPES = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
EMPTY_SCHEMAS = {"decisions": DECISION_SCHEMA, "quarantine": QUARANTINE_SCHEMA}


class QueryError(ValueError):
    """The SQL is not allowed or failed; the message says why."""


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A sandboxed in-memory connection with the run's views defined."""
    run = Path(run_dir).resolve()
    parts = committed_parts(run)
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"SET allowed_directories=[{_sql_str(str(run) + '/')}]")
    con.execute("SET enable_external_access=false")
    for t in TABLES:
        files = [str(p) for p in parts[t]]
        if files:
            lst = "[" + ", ".join(_sql_str(f) for f in files) + "]"
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet({lst}, hive_partitioning=true, "
                        "union_by_name=true)")
        else:
            schema = EMPTY_SCHEMAS.get(t, pa.schema([pa.field("id", pa.string())]))
            con.register(f"_empty_{t}", schema.empty_table())
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM _empty_{t}")
    con.execute("SET lock_configuration=true")
    return con


def check_read_only(sql: str) -> None:
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"SQL does not parse: {exc}") from None
    if len(stmts) != 1:
        raise QueryError(f"give exactly one statement, got {len(stmts)}")
    if stmts[0].type not in READ_ONLY_TYPES:
        raise QueryError(f"only SELECT / EXPLAIN queries are allowed (read-only), got {stmts[0].type.name}")


def query(run_dir: str | Path, sql: str) -> pa.Table:
    """Run one read-only statement over the run's views and return Arrow."""
    check_read_only(sql)
    con = connect(run_dir)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"query failed: {exc}\nviews: kept, decisions, quarantine "
                         "(their columns: `DESCRIBE kept`, or docs/duckdb-recipes.md, 'The views')") from None
    finally:
        con.close()


def format_table(tbl: pa.Table, fmt: str = "table", max_rows: int = 50) -> str:
    """Render a result: a box table for people, CSV or JSON for programs."""
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(tbl, buf)
        return buf.getvalue().decode()
    if fmt == "json":
        return json.dumps(tbl.to_pylist(), default=_json_default, indent=1)
    if fmt != "table":
        raise QueryError(f"--format must be table, csv or json, got {fmt!r}")
    con = duckdb.connect()
    con.register("result", tbl)
    out = io.StringIO()
    old, sys.stdout = sys.stdout, out
    try:
        con.sql("SELECT * FROM result").show(max_rows=max_rows, max_width=160)
    finally:
        sys.stdout = old
        con.close()
    return out.getvalue()


def _json_default(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    return str(v)


def decision_summary(run_dir: str | Path) -> str:
    """Decisions of a run as a table (through the same read-only query layer users get)."""
    return format_table(query(run_dir, "SELECT decision, count(*) AS items, "
                                       "round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS percent "
                                       "FROM decisions GROUP BY decision ORDER BY items DESC, decision"))


def rejection_summary(run_dir: str | Path, top: int = 5) -> tuple[int, int, str]:
    """(rejected, input items, text) of a run: how much of its input was rejected as bad input, by code
    (the commonest `top`, each with one reason as an example); the text is empty when nothing was."""
    counts = query(run_dir, "SELECT count(*) FILTER (WHERE decision = 'rejected-bad-input') AS rejected, "
                            "count(*) AS total FROM decisions").to_pylist()[0]
    rejected, total = counts["rejected"], counts["total"]
    if not rejected:
        return 0, total, ""
    has_code = "code" in query(run_dir, "SELECT * FROM decisions LIMIT 0").column_names  # not in older runs
    code = "coalesce(code, 'unclassified')" if has_code else "'unclassified'"
    rows = query(run_dir, f"SELECT {code} AS code, count(*) AS n, min(reason) AS example FROM decisions "
                          "WHERE decision = 'rejected-bad-input' GROUP BY 1 ORDER BY n DESC, code").to_pylist()
    lines = [f"rejected {rejected} of {total} input items ({100.0 * rejected / total:.1f}%) as bad input, by code:"]
    lines += [f"  {r['n']:>8}  {r['code']}  e.g. {r['example'][:200]}" for r in rows[:top]]
    if len(rows) > top:
        lines.append(f"  {sum(r['n'] for r in rows[top:]):>8}  ({len(rows) - top} more codes)")
    lines.append(f"  each with its position: curator query {run_dir} \"SELECT * FROM quarantine WHERE code = "
                 f"'{rows[0]['code']}'\"")
    return rejected, total, "\n".join(lines)
