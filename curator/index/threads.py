"""How a process that holds an index computes (`configure_process`, once per process).

Thread pools: FAISS searches with OpenMP; numpy's OpenBLAS has a pthreads pool of its own whose
threads spin after every call, so each small numpy product beside a FAISS search (the selector's
in-batch similarities) stalls the search for milliseconds -- measured: 3-5x slower selection on 2
cores. Processes that hold an index give pthreads BLAS pools one thread.

Exhaustive search (flat indexes, every IVF's coarse quantizer, k-means when an IVF is trained):
FAISS computes a batch of queries either one (query, row) pair at a time with SIMD, or as one BLAS
product per block. The product's sums depend on how many threads share it, so the same search gave
other similarities in the last bit with 1 thread than with 2 (an auto index at 512-d, exact and
after its IVF rebuild), and a decision could depend on the cores a process had: `curator ingest`
(every core) against `curator serve`'s one-CPU actor, or a run resumed with other cores. FAISS 1.15
takes the product from 128,000 query elements (250 queries of 512-d, so a real model's full
batches; older versions from 20 queries). Every exhaustive search here takes the per-pair loop,
whose sums do not depend on the threads: the same cost for a selector's batches (1M items, 512-d,
one thread: 4,546 selected items/s against 4,396 with FAISS's switch, one run each), ~1.7x the
time for bulk work (training an IVF and assigning every row to its list: 86 s against 52 s to
build 1M). A flat index's searches get the per-pair loop's answer from a BLAS product that only
nominates candidates (`curator.index.exact`).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_done = False

#: no exhaustive search is a BLAS product (FAISS counts query elements, older versions queries)
NEVER = 2**31 - 1


def configure_process() -> None:
    global _done
    if _done:
        return
    _done = True
    import faiss

    faiss.cvar.distance_compute_blas_threshold = NEVER
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - a scikit-learn dependency, always there
        return
    for lib in ThreadpoolController().lib_controllers:
        if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") == "pthreads":
            lib.set_num_threads(1)
            log.debug("limited %s to one thread (FAISS uses OpenMP)", lib.filepath)
