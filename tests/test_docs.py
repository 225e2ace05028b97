"""The README must describe the code as it is."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def test_readme_config_reference_is_current():
    from update_readme import render

    readme = (ROOT / "README.md").read_text()
    assert render(readme) == readme, "README's configuration reference is stale: run `make docs`"


def test_readme_starts_with_the_two_entry_points():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("make ")]
    assert lines[0].startswith("make run") and lines[1].startswith("make test")
