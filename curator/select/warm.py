"""Loading the compiled selection loop before the stream's first batch.

numba loads a compiled function's cached machine code on its first call in a process, and the first
load also builds numba's typing and target contexts: ~0.7 s on a 2-core machine (with no cache, the
compile takes longer), paid inside the first batch a selector decides. In a service that first batch
holds up every batch in flight behind it. `load_compiled` pays it while the stage sets up instead, by
deciding a small made-up stream on a throwaway selector with the run's settings, in memory: nothing of
it reaches the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from curator.config import SelectorConfig
from curator.select.arrays import select_embeddings

log = logging.getLogger(__name__)

#: made-up items: half a trusted bootstrap, half stream, in batches, so both paths and the calibration run
ITEMS, DIM, BATCH = 96, 8, 32


def load_compiled(cfg: SelectorConfig) -> float:
    """Load the selection loop's compiled code in this process; the seconds it took."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(ITEMS, DIM)), rng.normal(size=(ITEMS, DIM))
    quiet = logging.getLogger("curator.select")  # what it would say is about the made-up stream
    level, failed = quiet.level, None
    quiet.setLevel(logging.CRITICAL + 1)
    try:
        select_embeddings(x, labels=np.arange(ITEMS) % 3, text_embeddings=t, trusted=ITEMS // 2,
                          config=dataclasses.replace(cfg, shards=1, recaption_hook=""), batch_size=BATCH)
    except Exception as exc:  # noqa: BLE001 - the first real batch loads it then, and raises what is its own
        failed = exc
    finally:
        quiet.setLevel(level)
    if failed is not None:
        log.debug("could not load the compiled selection loop ahead of the stream: %s", failed)
    return time.perf_counter() - t0
