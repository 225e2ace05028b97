"""The selector's evidence about its own trustworthiness that is not a calibrated threshold: the
vectors whose leave-one-out votes are the label evidence while they are collected, and how crowded
distinct trusted pictures make the perceptual-hash cut.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from curator.select.hashdup import hamming

#: trusted images whose perceptual hashes show how crowded distinct pictures are (see `phash_crowd`)
PHASH_SAMPLE = 512
#: the perceptual rule is applied while at most this share of them has another within twice its distance
PHASH_CROWD = 0.01
PHASH_MIN = 8  # trusted images before the check can switch the rule off


def phash_crowd(x: np.ndarray, max_dist: int) -> tuple[bool, float]:
    """(rule stays on, crowded share): whether distinct pictures stay clear of the perceptual cut in
    these data -- at most PHASH_CROWD of the trusted images have another within twice `max_dist` bits.
    Simple or synthetic pictures crowd 64-bit hashes (distinct scenes within 4 bits), photos do not
    (none closer than 10 bits in 57,000 pairs). Only trusted images are evidence: a stream's own
    near-copies beyond the cut would look like crowding. Too few (or none): the rule applies."""
    if len(x) < PHASH_MIN:
        return True, 0.0
    d = hamming(x[:, None], x[None, :])
    np.fill_diagonal(d, 64)
    crowd = float((d.min(axis=1) <= 2 * max_dist).mean())
    return crowd <= PHASH_CROWD, crowd


def crowd_status(crowd: float, n: int, max_dist: int) -> str:
    return (f"{crowd:.1%} of the {n} trusted images have another within {2 * max_dist} bits (at most "
            f"{PHASH_CROWD:.0%} allowed): distinct pictures in these data crowd the perceptual cut; exact "
            "copies are still caught")


def loo_state(xs: list[np.ndarray], ys: list[np.ndarray]) -> dict[str, Any] | None:
    """The vectors whose leave-one-out votes are the label evidence, while they are still collected."""
    if not ys:
        return None
    x = np.concatenate(xs).astype(np.float32)
    return {"dim": int(x.shape[1]), "x": base64.b64encode(x.tobytes()).decode(),
            "y": np.concatenate(ys).astype(int).tolist()}


def loo_from_state(state: dict[str, Any] | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if not state:
        return [], []
    x = np.frombuffer(base64.b64decode(state["x"]), np.float32).reshape(-1, int(state["dim"]))
    return [x.copy()], [np.asarray(state["y"], np.int64)]
