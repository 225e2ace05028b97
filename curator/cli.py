"""The `curator` command: ingest, query, demo, config (and the service / training entry points).

Every run setting is a config field; its flag is generated from the dataclass
(`--selector.k-gain 4`), so `--help` and the TOML reference never disagree.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from curator.config import (
    ConfigError,
    RunConfig,
    add_config_flags,
    load_config,
    overrides_from_args,
    reference_markdown,
    to_toml,
)
from curator.report import cli as report_cli

log = logging.getLogger("curator")

#: Exceptions whose message is written for the user: printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, PermissionError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from connectors.files import FileSourceError
    from curator.embed import ModelLoadError
    from curator.query import QueryError
    from curator.store import StoreError

    return (*USER_ERRORS, StoreError, QueryError, ModelLoadError, FileSourceError)


def _config(args: argparse.Namespace) -> RunConfig:
    return load_config(getattr(args, "config", None), overrides_from_args(args))


def summary(run_dir: str | Path) -> str:
    """Decisions of a run as a table (through the same read-only query layer users get)."""
    from curator.query import format_table, query

    tbl = query(run_dir, "SELECT decision, count(*) AS items, "
                         "round(100.0 * count(*) / sum(count(*)) OVER (), 1) AS percent "
                         "FROM decisions GROUP BY decision ORDER BY items DESC, decision")
    return format_table(tbl)


def run_ingest(cfg: RunConfig, progress: bool = True) -> dict:
    """A bounded run over files with a progress bar; returns the final manifest."""
    from tqdm import tqdm

    from connectors.files import FileSource
    from curator.ingest import Curation, run_source

    if not cfg.source.paths:
        raise ConfigError("no input: give files or folders (`curator ingest PATH ...`) or [source] paths")
    cur = Curation(cfg)
    cur.setup()
    if cfg.source.bootstrap:
        cur.run_bootstrap(FileSource(cfg.source.bootstrap, cfg.source.format).batches(cfg.source.batch_size))
    elif not cur.bootstrapped:
        log.warning("no trusted bootstrap ([source] bootstrap): the first %d accepted items are taken unjudged",
                    cfg.selector.min_trusted)
    src = FileSource(cfg.source.paths, cfg.source.format)
    total = src.total()
    done = sum(sum(parts.values()) for parts in cur.positions.values())
    bar = tqdm(total=total, initial=0, unit="item", desc="curating", disable=not progress, dynamic_ncols=True)
    kept = 0
    limit = cfg.source.limit

    def batches():
        n = 0
        for b in src.batches(cfg.source.batch_size, cur.positions):
            if limit and n >= limit:
                return
            n += len(b)
            yield b

    def on_batch(res) -> None:
        nonlocal kept
        kept += sum(v for k, v in res.counts.items() if k in ("kept", "relabelled", "recaptioned"))
        bar.update(res.items)
        bar.set_postfix(kept=kept, refresh=False)

    if cur.resumed_from and done:
        bar.write(f"resuming {cfg.store.out} after commit {cur.resumed_from}: {done} items already decided")
    try:
        manifest = run_source(cur, batches(), on_batch)
    finally:
        bar.close()
    return manifest


def cmd_ingest(args: argparse.Namespace) -> int:
    overrides = overrides_from_args(args)
    if args.paths:
        overrides.setdefault("source", {})["paths"] = list(args.paths)
    cfg = load_config(args.config, overrides)
    m = run_ingest(cfg, progress=not args.quiet)
    print(summary(cfg.store.out))
    print(f"curated set: {Path(cfg.store.out).resolve()} (commit {m['commit']}); "
          f"query it with: curator query {cfg.store.out} \"SELECT count(*) FROM kept\"")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from curator.query import format_table, query

    tbl = query(args.run_dir, args.sql)
    sys.stdout.write(format_table(tbl, args.format, args.max_rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from curator.demo import run_demo

    overrides = overrides_from_args(args)
    return run_demo(args.out, args.seed, overrides, progress=not args.quiet)


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
    else:
        print(to_toml(_config(args)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="curator",
        description="Streaming data curation: embed (CLIP), select online (InfoGrowth), write a curated "
                    "Parquet set that DuckDB queries.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ing = sub.add_parser("ingest", help="curate files (Parquet, JSONL, image folders, WebDataset tars) into a "
                                        "run directory", description="One bounded curation run over files. "
                                        "Re-running on the same --store.out resumes after the last commit.")
    ing.add_argument("paths", nargs="*", help="input files or folders (or [source] paths in the config)")
    ing.add_argument("--config", help="TOML run configuration; flags below override it")
    ing.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_config_flags(ing)
    ing.set_defaults(func=cmd_ingest)

    q = sub.add_parser("query", help="read-only SQL over a run's views: kept, decisions, quarantine",
                       description="DuckDB over the committed parts of a run directory. Views: kept (the "
                                   "curated set), decisions (one row per input item), quarantine (bad input).")
    q.add_argument("run_dir", help="a run directory (holds manifest.json)")
    q.add_argument("sql", help="one SELECT statement, e.g. \"SELECT decision, count(*) FROM decisions GROUP BY 1\"")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    q.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    q.set_defaults(func=cmd_query)

    d = sub.add_parser("demo", help="the main job: dirty scikit-learn digits through the whole selection",
                       description="Streams scikit-learn's digits (real images) with 20%% flipped labels and 30%% "
                                   "near-duplicate copies after a trusted bootstrap of 100, writes the curated "
                                   "set and prints its decisions and a DuckDB query. Offline.")
    d.add_argument("--out", default="runs/demo", help="run directory (recreated)")
    d.add_argument("--seed", type=int, default=0, help="seed of the split, the noise and the selector")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_config_flags(d, sections=("embedder", "index", "selector"))
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("config", help="print the effective configuration as TOML, or the reference")
    c.add_argument("--config", help="TOML run configuration")
    c.add_argument("--reference", action="store_true", help="every setting with its default and meaning")
    add_config_flags(c)
    c.set_defaults(func=cmd_config)

    report_cli.add_command(sub)
    for register in _extra_commands():
        register(sub)
    return p


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands that live outside the core (service, producer, training); absent ones are skipped."""
    out = []
    for mod, fn in (("pipelines.cli", "register"),):
        try:
            module = __import__(mod, fromlist=[fn])
        except ImportError:
            continue
        out.append(getattr(module, fn))
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except _user_errors() as exc:
        print(f"curator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the run directory holds the last commit and resumes from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
