"""One thread pool per core: FAISS searches with OpenMP; numpy's OpenBLAS has a pthreads pool of its
own whose threads spin after every call, so each small numpy product beside a FAISS search (the
selector's in-batch similarities) stalls the search for milliseconds -- measured: 3-5x slower
selection on 2 cores. Processes that hold an index give pthreads BLAS pools one thread."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_done = False


def share_cores_with_faiss() -> None:
    global _done
    if _done:
        return
    _done = True
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a scikit-learn dependency, always there
        return
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads":
            lib.set_num_threads(1)
            log.debug("limited %s to one thread (FAISS uses OpenMP)", lib.filepath)
