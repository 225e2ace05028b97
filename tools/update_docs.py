"""Regenerate the generated parts of the docs (`make docs`); tests/test_docs.py fails when they are stale.

- docs/configuration.md: the settings tables, from the config dataclasses (`curator config --reference`
  for the run's sections, `curator serve --reference` for [kafka] and [service]);
- docs/benchmarks.md: the benchmark tables, copied from the README's benchmarks block (the README is
  where the benchmark scripts' tables are pasted; the docs page carries them with the commands).
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curator.config_text import reference_markdown  # noqa: E402
from pipelines.config import reference_markdown as serve_reference_markdown  # noqa: E402

RUN = ("<!-- config-reference:start -->", "<!-- config-reference:end -->")
SERVE = ("<!-- serve-reference:start -->", "<!-- serve-reference:end -->")
BENCH = ("<!-- benchmarks:start -->", "<!-- benchmarks:end -->")
CONFIGURATION = ROOT / "docs" / "configuration.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"


def _replace(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"markers {start} ... {end} are missing")
    block = f"{start}\n{body}\n{end}"
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def _between(text: str, markers: tuple[str, str]) -> str:
    start, end = markers
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def render_configuration(text: str) -> str:
    return _replace(_replace(text, RUN, reference_markdown()), SERVE, serve_reference_markdown())


def render_benchmarks(text: str, readme: str) -> str:
    return _replace(text, BENCH, _between(readme, BENCH))


if __name__ == "__main__":
    CONFIGURATION.write_text(render_configuration(CONFIGURATION.read_text()))
    BENCHMARKS.write_text(render_benchmarks(BENCHMARKS.read_text(), README.read_text()))
