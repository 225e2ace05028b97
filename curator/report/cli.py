"""The `curator report` subcommand: registered by `add_command(subparsers)`."""

from __future__ import annotations

import argparse


def cmd_report(args: argparse.Namespace) -> int:
    from curator.report.build import write_report

    path = write_report(args.run_dir, args.out, args.gallery_size)
    print("report written (one self-contained page; open it in a browser):")
    print(path)  # the last line alone, so `xdg-open "$(make run | tail -1)"` works
    return 0


def add_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="a static HTML report of what a run kept, dropped and why",
                       description="Writes one self-contained HTML page (no server, no network, no script): "
                                   "decisions over the stream, counts per decision and reason, score "
                                   "distributions with the thresholds in force, index growth, keep rate per "
                                   "source, galleries of kept and dropped items, and the training runs on the "
                                   "set; each table names the DuckDB query that reproduces it.")
    p.add_argument("run_dir", help="a run directory (holds manifest.json)")
    p.add_argument("--out", default=None, help="folder for index.html (default RUN_DIR/report)")
    p.add_argument("--gallery-size", type=int, default=24, help="items shown per gallery (default 24)")
    p.set_defaults(func=cmd_report)
