"""The compiled loop's numba cache goes when any of its sources changes (numba itself only looks at
the file that defines each function)."""

from __future__ import annotations

import shutil
from pathlib import Path

import curator.select
from curator.select.jit_cache import COMPILED_MODULES, drop_stale


def test_a_changed_step_drops_the_kernels_cached_code(tmp_path: Path) -> None:
    src = Path(curator.select.__file__).parent
    for m in COMPILED_MODULES:
        shutil.copy(src / f"{m}.py", tmp_path / f"{m}.py")
    cache = tmp_path / "__pycache__"
    assert drop_stale(tmp_path)  # no stamp yet
    compiled = cache / "kernel.resolve-38.py311.1.nbc"
    index = cache / "kernel.resolve-38.py311.nbi"
    other = cache / "selector.cpython-311.pyc"
    for f in (compiled, index, other):
        f.write_bytes(b"x")
    assert not drop_stale(tmp_path) and compiled.exists()  # same sources: the cache is kept
    (tmp_path / "steps.py").write_text((tmp_path / "steps.py").read_text() + "\n# changed\n")
    assert drop_stale(tmp_path)
    assert not compiled.exists() and not index.exists() and other.exists()  # only numba's files of these modules
    assert not drop_stale(tmp_path)
