"""The run configuration as text: one command-line flag per setting, the generated reference
(docs/configuration.md) and TOML (`curator config --dump`, a run directory's config.toml) -- all from
the dataclasses of `curator.config`, so a flag, a reference row and a config field are one thing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from curator.config import FILTER_KEYS, SECTIONS, FilterConfig, RunConfig, _field_type, is_auto_field


def add_section_flags(parser: argparse.ArgumentParser, section: str, obj: Any) -> None:
    """One flag per field of a config dataclass: --SECTION.FIELD-NAME VALUE (default: None = unset)."""
    group = parser.add_argument_group(f"[{section}] settings (TOML section [{section}])")
    for f in dataclasses.fields(obj):
        flag = f"--{section}.{f.name.replace('_', '-')}"
        kw: dict[str, Any] = {"dest": f"cfg__{section}__{f.name}", "default": None}
        t = _field_type(type(obj), f.name)
        if is_auto_field(type(obj), f.name):
            kw["metavar"] = "NUMBER|auto"
        elif t is list:
            kw["metavar"] = "A,B,..."
        elif t is dict:
            kw["metavar"] = "JSON"
        elif "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        else:
            kw["metavar"] = t.__name__.upper()
        group.add_argument(flag, help=f"{f.metadata.get('help', '')} (default: {getattr(obj, f.name)!r})", **kw)


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """One flag per run-config field: --SECTION.FIELD-NAME VALUE (default: from the config file or built-in)."""
    defaults = RunConfig()
    for name in SECTIONS:
        if not sections or name in sections:
            add_section_flags(parser, name, getattr(defaults, name))
    if not sections or "filters" in sections:
        parser.add_argument("--filters", dest="cfg__filters", metavar="JSON", default=None,
                            help='the [[filters]] tables as a JSON list, e.g. \'[{"op": "caption_words", "min": 3}]\' '
                                 "(replaces the file's; docs/extending.md)")


def reference_rows(section: str, obj: Any) -> list[str]:
    """Markdown table rows (setting, default, meaning) of one config dataclass."""
    return [f"| `{section}.{f.name}` | `{getattr(obj, f.name)!r}` | {f.metadata.get('help', '')} |"
            for f in dataclasses.fields(obj)]


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key == "cfg__filters" and value is not None:
            out["filters"] = value  # JSON text: parse_filters reads it
        elif key.startswith("cfg__") and value is not None:
            _, sec, name = key.split("__", 2)
            out.setdefault(sec, {})[name] = value
    return out


def reference_markdown() -> str:
    """The configuration reference, generated from the dataclasses."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    cfg = RunConfig()
    for name in SECTIONS:
        lines += reference_rows(name, getattr(cfg, name))
    lines += reference_rows("filters[]", FilterConfig())
    return "\n".join(lines)


def to_toml(cfg: RunConfig) -> str:
    """Render a config as TOML (for `curator config --dump` and run directories)."""
    out = []
    d = cfg.to_dict()
    for sec in SECTIONS:
        out.append(f"[{sec}]")
        for k, v in d[sec].items():
            out.append(f"{k} = {json.dumps(v)}")
        out.append("")
    for spec in cfg.filters:
        out.append("[[filters]]")
        keys = {k: getattr(spec, k) for k in FILTER_KEYS} | spec.params
        out += [f"{k} = {toml_value(v)}" for k, v in keys.items() if v is not None and v != ""]
        out.append("")
    return "\n".join(out)


def toml_value(v: Any) -> str:
    """A value as TOML writes it: JSON's text for strings, numbers, booleans and lists; tables inline."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)
