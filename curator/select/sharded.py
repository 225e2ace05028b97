"""The accepted items of one modality across N selector shards, behind the interface the selector
uses for its index: search, add, ids.

Each query is sent to its home shard and to the shards whose region lies within the router's margin
of it (`curator.select.routing`), the answers are merged into one nearest-first list (ties by stream
position, so the order is the same however the items are split into shards), and accepted items go
to their home shard only. The batch's own earlier items are seen under the same rule (`visibility`),
so a decision does not depend on where batches start. Until the router is trained every item lives
on shard 0 and every query searches it -- one shard; when it is trained (at the end of the trusted
bootstrap, or at stream position `router_train_size` without one), those items move to their home
shards.

Work. Most items search their home alone, so N shards do about the search work of one index; the
items that also search another shard are counted in `searched` (the benchmark reports their share).
Decisions. An accepted item the search skips is farther than the margin (`routing_margin`), which
covers the item's copies and its copies' copies; the label vote and the gain may miss a neighbour beyond
it across a border, which rarely changes a decision (docs/benchmarks.md measures how rarely).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from curator.select.calibrate import NN_BINS
from curator.select.routing import Router, nn_bins, routing_margin, train_router
from curator.select.shard import ShardClient

log = logging.getLogger(__name__)

ROW_BITS = 40  # a global row: shard << 40 | the row in its shard


def probe_cap(probe: int, shards: int) -> int:
    """The most shards an item searches: `selector.probe`, where 0 means no cap but the margin."""
    return shards if probe <= 0 else min(probe, shards)


class ShardedIndex:
    def __init__(self, modality: str, dim: int, clients: list[ShardClient], probe: int,
                 router: Router | dict[str, Any] | None = None, seed: int = 0) -> None:
        """`router`: a trained one, or what `state` gave (a checkpoint's)."""
        self.modality = modality
        self.dim = dim
        self.clients = clients
        self.probe = probe_cap(probe, len(clients))
        # until the router trains: the searched items' distances to their nearest accepted item (routing_margin)
        self.nn_counts = np.zeros(NN_BINS, np.int64)
        if isinstance(router, dict) and "nn_counts" in router:
            self.nn_counts[np.asarray(router["nn_counts"][0], np.int64)] = router["nn_counts"][1]
            router = None
        self.router = Router.from_json(router) if isinstance(router, dict) else router
        self.seed = seed
        self.n = 0
        self.sizes = [0] * len(clients)  # items indexed per shard (homes), for metrics
        self.latency: dict[int, float] = {}  # the last search's seconds per shard queried
        self.searched = np.zeros(len(clients) + 1, np.int64)  # items searched, by how many shards they searched
        self._routed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._homes: tuple[np.ndarray, np.ndarray] | None = None  # the last search's (positions, homes)

    @property
    def shards(self) -> int:
        return len(self.clients)

    def __len__(self) -> int:
        return self.n

    @property
    def kind(self) -> str:
        """The index kind shard 0 serves this modality with (the shards follow the same policy)."""
        return self.clients[0].describe().kinds.get(self.modality, "flat")

    # --- routing ---------------------------------------------------------------------------
    def route(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(home shard per row, bool (rows, shards) of the shards each row searches). The answer for the
        array last searched is kept: the batch's in-batch visibility and homes route the same array."""
        if self.router is None or self.shards == 1:  # everything on shard 0
            probes = np.zeros((len(x), self.shards), bool)
            probes[:, 0] = True
            return np.zeros(len(x), np.int64), probes
        if self._routed is not None and self._routed[0] is x:
            return self._routed[1], self._routed[2]
        home, probes = self.router.route(x, self.probe)
        self._routed = (x, home, probes)
        return home, probes

    def visibility(self, x: np.ndarray) -> np.ndarray | None:
        """bool (rows, rows): row i compares with row j (j's home is among the shards i searches); None = all."""
        if self.router is None or self.shards == 1:
            return None
        home, probes = self.route(x)
        return None if probes.all() else probes[:, home]

    def state(self) -> dict[str, Any] | None:
        """For the selector's checkpoint: the router, or before it trains what its margin will read."""
        if self.router is not None:
            return self.router.to_json()
        at = np.flatnonzero(self.nn_counts)
        return {"nn_counts": [at.tolist(), self.nn_counts[at].tolist()]} if len(at) else None

    def train_router(self, margin: float | str = math.inf, eps_dup: float = math.nan,
                     later: int | None = None) -> None:
        """Route from now on: train on the items indexed so far (all on shard 0), move them home. `margin`:
        `selector.shard_margin` ('auto': from `eps_dup` and the distances seen, `routing_margin`). `later`:
        with too few items to place the shards, say that the router trains at that position."""
        if self.router is not None or self.shards == 1:
            return
        if later is not None and len(self) < self.shards:
            log.warning("the bootstrap gave %d %s items for %d shards: the shard router trains at stream "
                        "position %d instead", len(self), self.modality, self.shards, later)
            return
        x, ids, labels, seqs = self.clients[0].take_all(self.modality)
        if len(x) < self.shards:
            raise ValueError(f"selector.shards = {self.shards} needs at least {self.shards} accepted items to "
                             f"place the shards, but the {self.modality} index holds {len(x)}")
        self.router = train_router(x, self.shards, self.seed, routing_margin(margin, eps_dup, self.nn_counts))
        home = self.router.home(x)
        self.sizes = np.bincount(home, minlength=self.shards).tolist()
        for s, c in enumerate(self.clients):
            sel = np.flatnonzero(home == s)
            if len(sel):
                c.add(self.modality, x[sel], [ids[i] for i in sel], labels[sel], seqs[sel])
        log.info("%s router trained on %d items: %d cells, %s items per shard, margin %.3g", self.modality, len(x),
                 self.router.cells, np.bincount(home, minlength=self.shards).tolist(), self.router.margin)

    # --- the index interface ----------------------------------------------------------------
    def search_labelled(self, q: np.ndarray, k: int, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(q)
        self._routed = None  # routed afresh once per batch (a caller may refill the same array)
        home, probes = self.route(q)
        self._homes = (np.asarray(seqs, np.int64), home)
        self.searched += np.bincount(probes.sum(axis=1), minlength=self.shards + 1)
        asked = [(s, np.flatnonzero(probes[:, s])) for s in range(self.shards)]
        pending = [(s, g, self.clients[s].search(self.modality, q[g], k, seqs[g])) for s, g in asked if len(g)]
        sims = np.full((n, self.shards * k), -np.inf, np.float32)
        rows = np.full((n, self.shards * k), -1, np.int64)
        labels = np.full((n, self.shards * k), -1, np.int64)
        order = np.full((n, self.shards * k), np.iinfo(np.int64).max, np.int64)
        t0 = time.perf_counter()
        self.latency = {}
        for s, g, p in pending:
            ss, rr, ll, qq = p.result()
            self.latency[s] = time.perf_counter() - t0
            cols = slice(s * k, (s + 1) * k)
            sims[g, cols] = ss
            rows[g, cols] = np.where(rr >= 0, (np.int64(s) << ROW_BITS) | rr, -1)
            labels[g, cols], order[g, cols] = ll, np.where(rr >= 0, qq, order[g, cols])
        best = np.lexsort((order, -sims), axis=1)[:, :k]  # nearest first; ties by stream position
        if self.router is None and self.shards > 1:
            found = sims[:, :k].max(axis=1)  # (all on shard 0)
            np.add.at(self.nn_counts, nn_bins(found[found > -np.inf]), 1)
        return tuple(np.take_along_axis(a, best, axis=1) for a in (sims, rows, labels))  # type: ignore[return-value]

    def add(self, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        home = self._known_homes(np.asarray(seqs, np.int64))
        if home is None:
            home = self.route(x)[0] if self.router is None else self.router.home(x)
        for s in range(self.shards):
            sel = np.flatnonzero(home == s)
            if len(sel):
                self.clients[s].add(self.modality, x[sel], [ids[i] for i in sel], labels[sel], seqs[sel])
                self.sizes[s] += len(sel)
        self.n += len(x)

    def _known_homes(self, seqs: np.ndarray) -> np.ndarray | None:
        """The homes of items the last search routed (by stream position: the batch's accepted items),
        or None where one of them was not in it."""
        if self._homes is None or self.router is None:
            return None
        known, home = self._homes
        at = np.searchsorted(known, seqs)
        if len(known) == 0 or (at >= len(known)).any() or not np.array_equal(known[np.minimum(at, len(known) - 1)], seqs):
            return None
        return home[at]

    def ids_of(self, rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, np.int64)
        out: list[str] = [""] * len(rows)
        shard = rows >> ROW_BITS
        for s in np.unique(shard):
            sel = np.flatnonzero(shard == s)
            for i, name in zip(sel, self.clients[int(s)].ids_of(self.modality, rows[sel] & ((1 << ROW_BITS) - 1)),
                               strict=True):
                out[i] = name
        return out
