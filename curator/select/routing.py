"""Which selector shard an item belongs to, and which other shards it must also search.

Cells. A spherical k-means over the router's training items (the trusted bootstrap, or the first
accepted items when there is none) gives many coarse cells, about one per `CELL_ITEMS` training
items, and the cells are grouped into the shards: a k-means over the cell centroids, weighted by
their items, keeps neighbouring cells together, and per-group offsets move border cells until every
shard holds about the same share of the training items. An item's home is the shard of its nearest
cell; only its home indexes it. Cells, not one centroid per shard, because the borders then follow
the gaps in the data instead of cutting straight through dense regions to balance the shards.

Margin. The cells are a Voronoi partition: an accepted item y lies in cell c only if y.c >= y.c1, for
c1 the nearest cell of a query x -- on c's side of the hyperplane that bisects c1 and c, which lies
(x.c1 - x.c) / |c1 - c| from x. So every accepted item within Euclidean distance r of x (cosine
distance r^2 / 2) lives on x's home or on a shard with a cell whose bisector is within r of x. A
query searches its home and those shards only: the items it does not search are all farther than r.
The radius is the router's `margin` (a cosine distance, fixed when the router is trained, so routing
is a pure function of the vector and decisions stay independent of batch boundaries); `routing_margin`
derives it from the duplicate threshold and the copies the stream shows, so a near-duplicate is found
across any border. The bound is a worst case: in many dimensions a neighbour's offset rarely points
straight at a border, so most items with a neighbour nearer than their border distance still find it
at home -- which is why the margin is not widened to the label vote's whole neighbourhood (that would
send nearly every item to every shard; docs/benchmarks.md measures the decisions it leaves).
The centroids are rounded to float16 when trained, so the checkpointed router routes exactly as the
trained one did.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curator.select.calibrate import NN_BINS, NN_HI, NN_LO, separated_copies

CELL_ITEMS = 4  # training items per coarse cell
MAX_CELLS = 1024  # cells of the largest router (routing is a (cells x dim) product per item)
MIN_CELLS_PER_SHARD = 4


@dataclass
class Router:
    centroids: np.ndarray  # (cells, dim) float32, unit rows to float16 precision
    cell_shard: np.ndarray  # (cells,) int64: the shard each cell belongs to
    shards: int
    margin: float = math.inf  # cosine distance: accepted items nearer than this are always searched
    offsets: np.ndarray | None = None  # (cells,): subtracted from the similarity (routers of older runs)
    _order: np.ndarray = field(init=False, repr=False)
    _starts: np.ndarray = field(init=False, repr=False)
    _gap: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.centroids = np.ascontiguousarray(self.centroids, np.float32)
        self.cell_shard = np.asarray(self.cell_shard, np.int64)
        if self.offsets is not None and not np.any(self.offsets):
            self.offsets = None
        if np.bincount(self.cell_shard, minlength=self.shards).min() == 0:
            raise ValueError("every shard needs at least one cell")
        self._order = np.argsort(self.cell_shard, kind="stable")  # cells grouped by shard
        self._starts = np.searchsorted(self.cell_shard[self._order], np.arange(self.shards))
        c = self.centroids.astype(np.float64)
        sq = np.einsum("ij,ij->i", c, c)
        gap = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * (c @ c.T), 1e-12))  # |c_i - c_j|
        np.fill_diagonal(gap, np.inf)
        self._gap = gap.astype(np.float32)

    @property
    def cells(self) -> int:
        return len(self.centroids)

    @property
    def radius(self) -> float:
        """The margin as a Euclidean distance between unit vectors."""
        return math.sqrt(2.0 * self.margin) if math.isfinite(self.margin) else math.inf

    def scores(self, x: np.ndarray) -> np.ndarray:
        s = np.ascontiguousarray(x, np.float32) @ self.centroids.T
        if self.offsets is not None:
            s -= self.offsets.astype(np.float32)
        return s

    def home(self, x: np.ndarray) -> np.ndarray:
        """The home shard of each row: its nearest cell's."""
        return self.cell_shard[np.argmax(self.scores(x), axis=1)]

    def border_distances(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(home shard per row, float32 (rows, shards): how far each row is from the nearest cell of each
        shard's region -- a lower bound on its distance to any item there; 0 for its home)."""
        s = self.scores(x)
        c1 = np.argmax(s, axis=1)
        s1 = np.take_along_axis(s, c1[:, None], axis=1)
        d = (s1 - s) / self._gap[c1]
        d = np.minimum.reduceat(d[:, self._order], self._starts, axis=1) if len(x) else np.zeros((0, self.shards))
        home = self.cell_shard[c1]
        d[np.arange(len(x)), home] = 0.0
        return home, d.astype(np.float32)

    def route(self, x: np.ndarray, probe: int) -> tuple[np.ndarray, np.ndarray]:
        """(home shard per row, bool (rows, shards): the shards each row searches): its home and the
        shards within the margin, nearest first, at most `probe` in all (0: every one)."""
        home, d = self.border_distances(x)
        probes = d <= self.radius
        if 0 < probe < self.shards and len(x):
            over = probes.sum(axis=1) > probe
            if over.any():  # keep the `probe` nearest (home first: its distance is 0)
                rank = np.argsort(d[over], axis=1, kind="stable")
                keep = np.zeros((int(over.sum()), self.shards), bool)
                np.put_along_axis(keep, rank[:, :probe], True, axis=1)
                probes[over] &= keep
        return home, probes

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"dim": int(self.centroids.shape[1]), "shards": self.shards,
                               "centroids16": base64.b64encode(self.centroids.astype(np.float16).tobytes()).decode(),
                               "cell_shard": self.cell_shard.tolist(), "margin": self.margin}
        if self.offsets is not None:
            out["offsets"] = self.offsets.astype(float).tolist()
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Router:
        if "centroids16" not in d:  # a run from before cells: one centroid per shard, balanced by offsets
            c = np.asarray(d["centroids"], np.float32)
            return cls(c, np.arange(len(c)), len(c), math.inf, np.asarray(d["offsets"], np.float64))
        c = np.frombuffer(base64.b64decode(d["centroids16"]), np.float16).reshape(-1, int(d["dim"]))
        return cls(c.astype(np.float32), np.asarray(d["cell_shard"], np.int64), int(d["shards"]), float(d["margin"]),
                   np.asarray(d["offsets"], np.float64) if "offsets" in d else None)


def cells_for(n: int, shards: int) -> int:
    return int(min(MAX_CELLS, max(MIN_CELLS_PER_SHARD * shards, n // CELL_ITEMS)))


def _kmeans(x: np.ndarray, k: int, seed: int, weights: np.ndarray | None = None) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=25, spherical=True, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=1_000_000)
    km.train(np.ascontiguousarray(x, np.float32), weights=weights)
    c = km.centroids.astype(np.float64)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def group_cells(centroids: np.ndarray, counts: np.ndarray, shards: int, seed: int,
                iterations: int = 400) -> np.ndarray:
    """The shard of each cell: a weighted k-means over the cells, then offsets that move border cells
    from a shard with more than its share of the items to one with less (the most balanced kept)."""
    groups = _kmeans(centroids, shards, seed + 1, counts.astype(np.float32) + 1e-3)
    sims = centroids @ groups.T
    offsets = np.zeros(shards)
    best, best_spread = np.argmax(sims, axis=1), math.inf
    step = float(np.std(sims)) / 4 or 0.01
    w = counts / max(counts.sum(), 1)
    for _ in range(iterations):
        shard = np.argmax(sims - offsets, axis=1)
        share = np.bincount(shard, weights=w, minlength=shards)
        spread = share.max() - share.min() if (np.bincount(shard, minlength=shards) > 0).all() else math.inf
        if spread < best_spread:
            best, best_spread = shard, spread
        if spread < 0.02:
            break
        offsets = offsets + step * (share - 1.0 / shards)
        step *= 0.98
    if not math.isfinite(best_spread):  # fewer occupied groups than shards: deal the cells out in turn
        best = np.argsort(np.argsort(-counts, kind="stable"), kind="stable") % shards
    return best.astype(np.int64)


def train_router(x: np.ndarray, shards: int, seed: int = 0, margin: float = math.inf) -> Router:
    """Cells by spherical k-means (FAISS) over x, grouped into `shards` balanced shards."""
    x = np.ascontiguousarray(x, np.float32)
    if len(x) < shards:
        raise ValueError(f"{shards} selector shards need at least {shards} items to place them, got {len(x)}")
    k = min(cells_for(len(x), shards), len(x))
    cent = _kmeans(x, k, seed).astype(np.float16).astype(np.float32)  # what the checkpoint holds
    counts = np.bincount(np.argmax(x @ cent.T, axis=1), minlength=k).astype(np.float64)
    return Router(cent, group_cells(cent.astype(np.float64), counts, shards, seed), shards, margin)


def nn_bins(sims: np.ndarray) -> np.ndarray:
    """The bins of the nearest-neighbour distances 1 - sims in `curator.select.calibrate`'s histogram."""
    d = 1.0 - np.asarray(sims, np.float64)
    b = np.floor((np.log10(np.maximum(d, 1e-300)) - NN_LO) / (NN_HI - NN_LO) * NN_BINS)
    return np.where(d > 0, np.clip(b, 0, NN_BINS - 1), 0).astype(np.int64)


def routing_margin(configured: float | str, eps_dup: float, nn_counts: np.ndarray) -> float:
    """`selector.shard_margin`: the configured cosine distance, or for 'auto' the duplicates' reach.

    A near-duplicate lies within the duplicate radius r = sqrt(2 eps_dup) of what it copies, so two copies
    of one original can be 2r apart: searching every shard within 2r of an item -- cosine distance
    (2r)^2 / 2 = 4 eps_dup -- finds every member of any copy group it belongs to, whichever shard holds
    it, with room for eps_dup to grow after the router trains. But where the distances from the items
    searched so far to their nearest accepted item (`nn_counts`) show the copies as a mode of their own,
    a decade or more below the distinct items (`calibrate.separated_copies`, as eps_dup's calibration
    finds them), the copies the rule exists for lie inside that mode: 4 x its upper edge covers their
    groups, and the empty gap above it need not be searched. Distinct items nearer than eps_dup are at
    most `dup_false_rate` of the stream by calibration; one across a border is kept instead of dropped.
    The label vote and the gain read farther neighbours: beyond the margin they may miss one across a
    border (docs/benchmarks.md measures what that changes)."""
    if configured != "auto":
        return float(configured)
    margin = min(2.0, 4.0 * eps_dup)
    gap_from, _, copies = separated_copies(np.asarray(nn_counts, np.int64))
    if copies:
        margin = min(margin, 4.0 * 10 ** (NN_LO + gap_from * (NN_HI - NN_LO) / NN_BINS))
    return float(margin)
