"""The accepted items of one modality across N selector shards, behind the interface the selector
uses for its index: search, add, ids.

Each query is sent to the shards it probes (`curator.select.routing`), the answers are merged into
one nearest-first list (ties by stream position, so the order is the same however the items are
split into shards), and accepted items go to their home shard only. Until the router is trained
every item lives on shard 0 and every query probes everything -- one shard; when it is trained
(at the end of the trusted bootstrap, or at stream position `router_train_size` without one),
those items move to their home shards.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from curator.select.routing import Router, train_router
from curator.select.shard import ShardClient

log = logging.getLogger(__name__)

ROW_BITS = 40  # a global row: shard << 40 | the row in its shard


class ShardedIndex:
    def __init__(self, modality: str, dim: int, clients: list[ShardClient], probe: int,
                 router: Router | None = None, seed: int = 0) -> None:
        self.modality = modality
        self.dim = dim
        self.clients = clients
        self.probe = max(1, min(probe, len(clients)))
        self.router = router
        self.seed = seed
        self.n = 0
        self.sizes = [0] * len(clients)  # items indexed per shard (homes), for metrics
        self.latency: dict[int, float] = {}  # the last search's seconds per shard queried

    @property
    def shards(self) -> int:
        return len(self.clients)

    def __len__(self) -> int:
        return self.n

    @property
    def kind(self) -> str:
        """The index kind shard 0 serves this modality with (the shards follow the same policy)."""
        return self.clients[0].describe().kinds.get(self.modality, "flat")

    # --- routing --------------------------------------------------------------------------
    def route(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(home shard per row, bool (rows, shards) of the shards each row compares with)."""
        if self.router is None or self.shards == 1:
            return np.zeros(len(x), np.int64), np.ones((len(x), self.shards), bool)
        return self.router.route(x, self.probe)

    def visibility(self, x: np.ndarray) -> np.ndarray | None:
        """bool (rows, rows): row i compares with row j (j's home is among the shards i probes); None = all."""
        if self.router is None or self.shards == 1 or self.probe >= self.shards:
            return None
        home, probes = self.route(x)
        return probes[:, home]

    def train_router(self) -> None:
        """Route from now on: train on the items indexed so far (all on shard 0), move them home."""
        if self.router is not None or self.shards == 1:
            return
        x, ids, labels, seqs = self.clients[0].take_all(self.modality)
        if len(x) < self.shards:
            raise ValueError(f"selector.shards = {self.shards} needs at least {self.shards} accepted items to "
                             f"place the shards, but the {self.modality} index holds {len(x)}")
        self.router = train_router(x, self.shards, self.seed)
        home, _ = self.router.route(x, 1)
        self.sizes = np.bincount(home, minlength=self.shards).tolist()
        for s, c in enumerate(self.clients):
            sel = np.flatnonzero(home == s)
            if len(sel):
                c.add(self.modality, x[sel], [ids[i] for i in sel], labels[sel], seqs[sel])
        log.info("%s router trained on %d items: %s per shard", self.modality, len(x),
                 np.bincount(home, minlength=self.shards).tolist())

    # --- the index interface ----------------------------------------------------------------
    def search_labelled(self, q: np.ndarray, k: int, seqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(q)
        _, probes = self.route(q)
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
        return tuple(np.take_along_axis(a, best, axis=1) for a in (sims, rows, labels))  # type: ignore[return-value]

    def add(self, x: np.ndarray, ids: list[str], labels: np.ndarray, seqs: np.ndarray) -> None:
        home, _ = self.route(x)
        for s in range(self.shards):
            sel = np.flatnonzero(home == s)
            if len(sel):
                self.clients[s].add(self.modality, x[sel], [ids[i] for i in sel], labels[sel], seqs[sel])
                self.sizes[s] += len(sel)
        self.n += len(x)

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
