"""Subcommands that live outside the core: `serve`, `produce`, `train`.

Each module exposes `add_command(subparsers)`; it must not import Ray or Kafka at import
time (only inside the command), so `curator --help` stays fast and Ray-free.
"""

from __future__ import annotations

import argparse
import importlib

COMMAND_MODULES = ("pipelines.service", "connectors.produce", "pipelines.train")


def register(sub: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        add = getattr(mod, "add_command", None)
        if add is not None:
            add(sub)
