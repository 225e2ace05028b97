"""HTML rendering: one Jinja2 environment with autoescaping, shared by the report and the status page.

Every value from a run (ids, captions, labels, reasons, metadata, source names) is untrusted:
templates only ever print it through autoescaping, never into a script, a URL or an event
attribute. The pages carry no script at all, and say so in their Content-Security-Policy, so a
value that slipped through would still not run.
"""

from __future__ import annotations

import math
import shlex
from datetime import datetime, timezone
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

#: No scripts, no external loads: images only as data URIs, styles only inline (the pages' <meta> policy).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
#: The same, sent as an HTTP header by the service (where frame-ancestors, ignored in <meta>, applies too).
CSP_HEADER = CSP + "; frame-ancestors 'none'"

_env: Environment | None = None


def cell(value: Any) -> str:
    """A table cell for people: rounded floats, byte counts instead of bytes, blanks for NULL."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(value))} bytes>"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10000:
        return f"{value:,}"
    s = str(value)
    return s if len(s) <= 300 else s[:299] + "\u2026"


def when(ts: Any) -> str:
    """A UNIX time as UTC text."""
    try:
        return datetime.fromtimestamp(float(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


def environment() -> Environment:
    global _env
    if _env is None:
        env = Environment(loader=PackageLoader("curator.report", "templates"),
                          autoescape=select_autoescape(default=True, default_for_string=True),
                          undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        env.filters["cell"] = cell
        env.filters["when"] = when
        env.filters["shquote"] = shlex.quote
        env.globals["CSP"] = CSP
        _env = env
    return _env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
