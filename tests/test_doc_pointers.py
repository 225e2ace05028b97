"""What the repo's text points a reader at is in the repo: every Markdown file named in code, docs
and deployment files exists (no design document from outside the repo is cited), and every pointer
to a section -- README 'Section', docs/page.md, 'Section', page.md#anchor -- names a real heading."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", ".git", "curator.egg-info", "runs", "test-output", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        "__pycache__", ".hypothesis", "build", "dist"}
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".j2", ".html", ".cfg"}
SECTION = re.compile(r"(README(?:\.md)?|docs/[\w-]+\.md)(?:[,:]?\s+(?:section\s+)?['\"]([^'\"\n]+)['\"]|#([\w-]+))")


@functools.cache
def all_files() -> tuple[Path, ...]:
    """Every file of the repo, without descending into the skipped folders (.venv is large)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP)
        out += [Path(dirpath) / f for f in sorted(filenames)]
    return tuple(out)


def repo_files() -> list[Path]:
    """The repo's text, tests' own fixtures aside (they write files like notes.md on purpose)."""
    out = []
    for p in all_files():
        rel = p.relative_to(ROOT)
        if rel.parts[0] == "tests" and p.name.startswith("test_"):
            continue
        if p.suffix in SUFFIXES or p.name == "Makefile" or p.name.startswith("Dockerfile"):
            out.append(p)
    return out


def headings(page: Path) -> set[str]:
    return {ln.lstrip("#").strip() for ln in page.read_text().splitlines() if re.match(r"#{1,6} ", ln)}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_the_scan_sees_the_repo() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in repo_files()}
    assert {"README.md", "curator/store/query.py", "docs/concepts.md", "deploy/curator.example.toml"} <= names


@pytest.mark.parametrize("path", repo_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_markdown_file_named_exists(path: Path) -> None:
    have = {p.name for p in all_files() if p.suffix == ".md"}
    for name in re.findall(r"[\w/.-]*\w\.md\b", path.read_text(errors="replace")):
        assert Path(name).name in have, f"{path.relative_to(ROOT)} names {name}, which is not in the repo"


@pytest.mark.parametrize("path", repo_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_section_pointed_at_exists(path: Path) -> None:
    for m in SECTION.finditer(path.read_text(errors="replace")):
        page = ROOT / (m.group(1) if m.group(1).endswith(".md") else "README.md")
        assert page.is_file(), m.group(0)
        if m.group(2):
            assert m.group(2) in headings(page), f"{path.relative_to(ROOT)}: {m.group(0)}: no such heading"
        else:
            assert m.group(3) in {slug(h) for h in headings(page)}, f"{path.relative_to(ROOT)}: {m.group(0)}"


def test_query_errors_point_at_the_views_columns(tmp_path: Path) -> None:
    from curator.store.query import QueryError, query
    from pipelines.demo import run_demo

    assert run_demo(tmp_path / "demo", 0, progress=False) == 0
    with pytest.raises(QueryError) as exc:
        query(tmp_path / "demo", "SELECT no_such_column FROM kept")
    assert "docs/duckdb-recipes.md, 'The views'" in str(exc.value)
    assert query(tmp_path / "demo", "DESCRIBE kept").num_rows > 10  # the other way the message gives
