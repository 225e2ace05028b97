"""Which selector shard an item belongs to, and which shards it compares with.

A coarse quantizer -- spherical k-means with one centroid per shard, trained on the trusted
bootstrap, or on the first accepted items when there is none -- routes each embedding to its home
shard: the centroid it is most similar to, after per-shard offsets that balance the training
sample across shards (k-means on clustered data can leave one shard with most items). An item
compares with the items of its `probe` best-scoring shards, so near-duplicates and neighbours
across a border are still seen; only the home shard indexes it. The centroids and offsets are
part of the run's state: routing never changes for a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Router:
    centroids: np.ndarray  # (shards, dim), unit rows
    offsets: np.ndarray  # (shards,): subtracted from the similarity, to balance the shards

    @property
    def shards(self) -> int:
        return len(self.centroids)

    def scores(self, x: np.ndarray) -> np.ndarray:
        return x @ self.centroids.T - self.offsets[None, :]

    def route(self, x: np.ndarray, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """(home shard per row, bool (rows, shards): the shards each row compares with)."""
        s = self.scores(np.ascontiguousarray(x, np.float32))
        order = np.argsort(-s, axis=1, kind="stable")
        probes = np.zeros(s.shape, bool)
        np.put_along_axis(probes, order[:, : max(1, min(probe, self.shards))], True, axis=1)
        return order[:, 0].astype(np.int64), probes

    def to_json(self) -> dict[str, Any]:
        return {"centroids": self.centroids.astype(float).tolist(), "offsets": self.offsets.astype(float).tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Router:
        return cls(np.asarray(d["centroids"], np.float32), np.asarray(d["offsets"], np.float64))


def train_router(x: np.ndarray, shards: int, seed: int = 0, iterations: int = 200) -> Router:
    """Spherical k-means (FAISS) over x, then offsets that give each shard an equal share of x."""
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    if len(x) < shards:
        raise ValueError(f"{shards} selector shards need at least {shards} items to place them, got {len(x)}")
    km = faiss.Kmeans(x.shape[1], shards, niter=25, spherical=True, seed=seed, verbose=False,
                      max_points_per_centroid=100_000)
    km.train(x)
    router = Router(km.centroids.astype(np.float32), np.zeros(shards))
    sims = x @ router.centroids.T
    step = float(np.std(sims)) / 4 or 0.01
    for _ in range(iterations):  # raise the offset of a shard that gets more than its share
        share = np.bincount(np.argmax(sims - router.offsets, axis=1), minlength=shards) / len(x)
        if share.max() - share.min() < 0.02:
            break
        router.offsets = router.offsets + step * (share - 1.0 / shards)
        step *= 0.97
    return router
