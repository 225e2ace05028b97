"""The `curator` command: every subcommand (the console script points here).

Every run setting is a config field; its flag is generated from the dataclass
(`--selector.k-gain 4`), so `--help` and the TOML reference never disagree. Modules that
register commands (`add_command`) import neither Ray nor Kafka until their command runs, so
`curator --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from curator.config import ConfigError
from curator.config_text import add_config_flags, overrides_from_args, reference_markdown

log = logging.getLogger("curator")

#: Modules that add their own subcommand with `add_command(subparsers)`: the producer, training, the report.
COMMAND_MODULES = ("connectors.kafka.produce", "pipelines.train", "curator.report.cli")

#: Exceptions whose message is written for the user: printed without a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError, PermissionError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from connectors.files import FileSourceError
    from curator.embed import ModelLoadError
    from curator.store import StoreError
    from curator.store.export import ExportError
    from curator.store.query import QueryError

    return (*USER_ERRORS, StoreError, QueryError, ModelLoadError, FileSourceError, ExportError)


def cmd_ingest(args: argparse.Namespace) -> int:
    from curator.store.query import decision_summary
    from pipelines.config import load_serve_config
    from pipelines.ingest import rejection_gate, run_ingest

    overrides = overrides_from_args(args)
    if args.paths:
        overrides.setdefault("source", {})["paths"] = list(args.paths)
    scfg = load_serve_config(args.config, overrides, serving=False)  # the same file as `curator serve`'s
    cfg = scfg.run
    if args.engine == "ray":
        from pipelines.drivers.ray_data import run_ingest_ray

        m = run_ingest_ray(scfg, progress=not args.quiet)
    else:
        m = run_ingest(cfg, progress=not args.quiet)
    print(decision_summary(cfg.store.out))
    print(f"curated set: {Path(cfg.store.out).resolve()} (commit {m['commit']}); "
          f"query it with: curator query {cfg.store.out} \"SELECT count(*) FROM kept\"")
    return rejection_gate(cfg.store.out, cfg.source.max_reject_share)


def cmd_query(args: argparse.Namespace) -> int:
    from curator.store.query import format_table, query

    tbl = query(args.run_dir, args.sql)
    sys.stdout.write(format_table(tbl, args.format, args.max_rows))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from curator.store.export import export

    print(export(args.run_dir, args.format, args.out, args.shard_size).line())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    overrides = overrides_from_args(args)
    return run_demo(args.out, args.seed, overrides, progress=not args.quiet)


def cmd_config(args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown())
    elif args.show:
        print(show_calibration(args.show))
    else:
        from pipelines.config import load_serve_config

        print(load_serve_config(args.config, overrides_from_args(args), serving=False).to_toml())
    return 0


def show_calibration(run_dir: str) -> str:
    """The thresholds a run used: each setting's value in force, where it came from, and its evidence."""
    import json

    from curator.store import read_manifest

    m = read_manifest(Path(run_dir))
    if not m:
        raise FileNotFoundError(f"{run_dir} holds no committed run (no manifest.json); give a run directory")
    cal = m.get("calibration") or {}
    if not cal:
        return f"{run_dir}: the manifest records no calibration (a run from before calibrated thresholds)"
    lines = [f"thresholds in force at commit {m.get('commit')} (decided items: {cal.get('at_seq')}):"]
    for name, info in cal.items():
        if not isinstance(info, dict):
            continue
        v, status = info.get("value"), str(info.get("origin"))
        shown = "-" if v is None or status.startswith(("never", "not applied")) else v if isinstance(v, str) \
            else f"{v:.6g}"
        lines.append(f"  selector.{name} = {shown}  ({info.get('origin')})")
        for k, e in info.items():
            if k not in ("value", "origin"):
                lines.append(f"      {k}: {json.dumps(e) if not isinstance(e, str) else e}")
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.config import load_serve_config

    cur = logging.getLogger("curator")
    if cur.getEffectiveLevel() > logging.INFO:
        cur.setLevel(logging.INFO)  # a service says what it does: where the curated set is, commits, drains
    if args.reference:
        from pipelines.config import reference_markdown

        print(reference_markdown())
        return 0
    overrides = overrides_from_args(args)
    if args.demo:
        from pipelines.demo import run_demo

        run_overrides = {k: v for k, v in overrides.items() if k not in ("kafka", "service")}
        svc = {k: v for k, v in overrides.items() if k in ("kafka", "service")}
        return run_demo(args.demo, args.seed, run_overrides, progress=False, engine="ray", serve_overrides=svc)
    if args.paths:
        overrides.setdefault("source", {})["paths"] = list(args.paths)
    scfg = load_serve_config(args.config, overrides)
    if args.print_config:
        print(scfg.to_toml())
        return 0
    from connectors.kafka.source import KafkaSourceError
    from pipelines.service import serve

    try:
        return serve(scfg)
    except KafkaSourceError as exc:
        raise ConfigError(f"Kafka: {exc}") from None


def add_serve_command(sub: argparse._SubParsersAction) -> None:
    from pipelines.config import add_serve_flags

    p = sub.add_parser(
        "serve", help="the long-running ingestion service on Ray: Kafka (or files) -> curated set, with "
                      "/healthz /readyz /metrics",
        description="Consumes a Kafka topic (or [source] paths) through the Ray actor graph -- embedder pool, "
                    "selector, writer -- committing offsets only after the manifest that covers them is durable. "
                    "SIGTERM drains, commits and exits 0; a restart resumes from the last manifest. Works the same "
                    "under `ray job submit --working-dir . -- curator serve --config FILE`.")
    p.add_argument("paths", nargs="*", help="input files or folders instead of Kafka (or [source] paths)")
    p.add_argument("--config", help="TOML with the run's sections plus [kafka] and [service] "
                                    "(see deploy/curator.example.toml); flags below override it")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    p.add_argument("--reference", action="store_true", help="the [kafka] and [service] settings with their "
                                                           "defaults and meaning (the run's: `curator config --reference`)")
    p.add_argument("--demo", metavar="OUT", help="serve the digits demo (written under OUT) through the graph, "
                                                 "then print its decisions (what `make run` does)")
    p.add_argument("--seed", type=int, default=0, help="--demo: seed of the split, the noise and the selector")
    add_serve_flags(p)
    p.set_defaults(func=cmd_serve)


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
    ing.add_argument("--config", help="TOML configuration (the same file as `curator serve --config`: [kafka] "
                                      "and [service] are checked, and [service] sizes --engine ray); flags below "
                                      "override it")
    ing.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ing.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process, one batch at a time. ray: read, decode and embed on Ray Data "
                          "(an actor pool of --service.embed-actors, with --service.embed-num-gpus each), select "
                          "in the selector actor and its shards; joins $RAY_ADDRESS / --service.ray-address "
                          "or starts a local Ray. Same decisions either way")
    add_config_flags(ing)
    from pipelines.config import ServiceConfig, add_section_flags

    add_section_flags(ing, "service", ServiceConfig())
    ing.set_defaults(func=cmd_ingest)

    q = sub.add_parser("query", help="read-only SQL over a run's views: kept, decisions, quarantine",
                       description="DuckDB over the committed parts of a run directory. Views: kept (the "
                                   "curated set), decisions (one row per input item), quarantine (bad input).")
    q.add_argument("run_dir", help="a run directory (holds manifest.json)")
    q.add_argument("sql", help="one SELECT statement, e.g. \"SELECT decision, count(*) FROM decisions GROUP BY 1\"")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    q.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    q.set_defaults(func=cmd_query)

    e = sub.add_parser("export", help="write the curated set as WebDataset shards, an image folder or Parquet",
                       description="The kept items in the layout training code reads -- webdataset: tar shards as "
                                   "img2dataset writes them (OpenCLIP); imagefolder: OUT/CLASS/ID.EXT (torchvision, "
                                   "timm); parquet: the kept rows -- each with its gain and decision. Images the run "
                                   "did not store are read back from its input files.")
    e.add_argument("run_dir", help="a run directory (holds manifest.json)")
    e.add_argument("out", help="a new (or empty) folder to write into")
    e.add_argument("--format", required=True, choices=("webdataset", "imagefolder", "parquet"), help="the layout")
    e.add_argument("--shard-size", type=int, default=10_000, help="items per tar shard / Parquet part (default 10000)")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("demo", help="the main job: dirty scikit-learn digits through the whole selection",
                       description="Streams scikit-learn's digits (real images) with 20% flipped labels and 30% "
                                   "near-duplicate copies after a trusted bootstrap of 100, writes the curated "
                                   "set and prints its decisions and a DuckDB query. Offline.")
    d.add_argument("--out", default="runs/demo", help="run directory (recreated)")
    d.add_argument("--seed", type=int, default=0, help="seed of the split, the noise and the selector")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_config_flags(d, sections=("embedder", "index", "selector"))
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("config", help="print the effective configuration as TOML (every section), or the reference")
    c.add_argument("--config", help="TOML configuration (any command's: the run's sections, [kafka], [service])")
    c.add_argument("--reference", action="store_true", help="every setting with its default and meaning")
    c.add_argument("--show", metavar="RUN_DIR", help="the thresholds a run used: calibrated values ('auto' settings) "
                                                     "and the evidence behind them, from its manifest")
    from pipelines.config import add_serve_flags

    add_serve_flags(c)
    c.set_defaults(func=cmd_config)

    add_serve_command(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return p


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
