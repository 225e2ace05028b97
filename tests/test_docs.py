"""The README and docs/ must describe the code as it is: generated parts current, every `curator ...`
command they show accepted by the CLI's parser, every SQL recipe run against a real demo run, every
link to a file present, and the README's quickstart covering what a new user needs."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]


def test_generated_docs_are_current() -> None:
    from update_docs import BENCHMARKS, CONFIGURATION, README, render_benchmarks, render_configuration

    conf = CONFIGURATION.read_text()
    assert render_configuration(conf) == conf, "docs/configuration.md is stale: run `make docs`"
    assert "| `selector.eps_dup` |" in conf and "| `service.port` |" in conf
    bench = BENCHMARKS.read_text()
    assert render_benchmarks(bench, README.read_text()) == bench, "docs/benchmarks.md is stale: run `make docs`"
    assert "selector_speed.py" in bench and "| auto | ivf-pq |" in bench


def test_readme_starts_with_the_two_entry_points() -> None:
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("make ")]
    assert lines[0].startswith("make run") and lines[1].startswith("make test")


def test_readme_quickstart_covers_a_new_users_path() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quickstart", 1)[1].split("## Documentation", 1)[0]
    for needle in ("make run", "make test", "runs/demo/report/index.html", "curator produce", "curator serve",
                   "ray job submit", "curator train", "curator report", "curator query", "127.0.0.1:9108/"):
        assert needle in quick, needle
    for doc in DOCS:
        assert f"(docs/{doc.name})" in readme, f"README does not link {doc.name}"


def _commands(text: str) -> list[list[str]]:
    """`curator ...` command lines in the fenced shell blocks of a page (after `ray job submit ... --` too)."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if " -- curator " in line:
                line = "curator " + line.split(" -- curator ", 1)[1]
            if line.startswith("curator "):
                out.append(shlex.split(line.replace("$PWD", "/abs"))[1:])
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_shown_command_parses(page: Path) -> None:
    from pipelines.cli import build_parser

    parser = build_parser()
    for argv in _commands(page.read_text()):
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page.name}: `curator {' '.join(argv)}` is not accepted by the CLI")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_point_at_files(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.demo import run_demo

    out = tmp_path_factory.mktemp("docs") / "demo"
    assert run_demo(out, 0, progress=False) == 0
    return out


def test_duckdb_recipes_run_on_the_demo(demo_run: Path) -> None:
    from curator.store.query import query

    text = (ROOT / "docs" / "duckdb-recipes.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    for sql in blocks:
        tbl = query(demo_run, sql)
        assert tbl.num_rows > 0 or "quarantine" in sql, f"no rows on the demo:\n{sql}"
    # the README's queries too (they name demo ids)
    for argv in _commands((ROOT / "README.md").read_text()):
        if argv[0] == "query" and argv[1] == "runs/demo":
            assert query(demo_run, argv[2]).num_rows > 0, argv[2]
    # the Python snippet
    snippet = re.search(r"```python\n(from curator.store.query.*?)```", text, re.S).group(1)
    exec(snippet.replace('"runs/demo"', repr(str(demo_run))), {})  # noqa: S102 - our own docs
