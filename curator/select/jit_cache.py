"""numba keys a compiled function's cache on its own source file only: after a change to steps.py or
rules.py (a git pull, an edit), a loop compiled against the old code would load as it was and decide
by the old rules. The compiled modules are one unit here: when any of their sources changes, all of
their cached code goes, and the next call compiles afresh."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: the modules of curator.select that hold compiled code (and what it inlines or calls)
COMPILED_MODULES = ("codes", "rules", "sketch", "loop_data", "steps", "kernel", "calibrate", "trust")
STAMP = "numba-sources.sha256"


def sources_digest(pkg_dir: Path) -> str:
    h = hashlib.sha256()
    for m in COMPILED_MODULES:
        h.update(m.encode() + b"\0" + (pkg_dir / f"{m}.py").read_bytes() + b"\0")
    return h.hexdigest()


def drop_stale(pkg_dir: Path = Path(__file__).parent) -> bool:
    """Remove the compiled modules' numba cache in `pkg_dir/__pycache__` if their sources changed
    since it was written; True when something was stale. A read-only install is left as it is."""
    cache = pkg_dir / "__pycache__"
    stamp = cache / STAMP
    digest = sources_digest(pkg_dir)
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    try:
        cache.mkdir(exist_ok=True)
        for m in COMPILED_MODULES:
            for f in cache.glob(f"{m}.*.nb[ic]"):
                f.unlink(missing_ok=True)
        tmp = cache / f"{STAMP}.{os.getpid()}"
        tmp.write_text(digest)
        tmp.replace(stamp)
    except OSError:
        return False
    return True
