"""The selector's evidence about its own trustworthiness that is not a calibrated threshold: the
vectors whose leave-one-out votes are the label evidence while they are collected, and how crowded
distinct trusted pictures make the perceptual-hash cut.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

from curator.select.calibrate import LOO_CAP, MAX_LABELS, Evidence, vote_rows
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


#: `LooVotes.state_dict(put)`: put(name, produce) keeps produce()'s bytes in a file beside the committed
#: state, named `name` unless one is there already, and returns its path (`get` reads it back)
PutFile = Callable[[str, Callable[[], bytes]], str]
GetFile = Callable[[str], bytes]

#: rows of the leave-one-out similarity matrix computed together, once a block of them is held
LOO_BLOCK = 256
#: the fewest rows in one product: smaller ones take BLAS's small-matrix kernels (or a matrix-vector
#: product), whose sums may round differently from the large products' in the last bit
LOO_MIN_ROWS = 64


class LooVotes:
    """The label evidence of up to LOO_CAP trusted (or taken-as-trusted) items: each votes among its
    `k` nearest of all the *other* items (leave one out), so every vote sees the full set, whatever
    its batches were. Kept incrementally: each complete block of LOO_BLOCK rows is compared once with
    the rows before it, and every row keeps its k best (similarity, then row) among complete blocks;
    only the rows past the last complete block are compared afresh when the evidence is read. So the
    similarities are products of fixed shapes that depend on the number of rows held alone, and the
    evidence is the same however the rows were added and whenever it was read."""

    def __init__(self, k: int, temperature: float) -> None:
        self.k, self.temperature = max(int(k), 1), float(temperature)
        self.x = np.zeros((0, 0), np.float32)
        self.y = np.zeros(0, np.int64)
        self.n = 0
        self.done = 0  # rows in complete blocks, compared with each other
        self.cols = np.zeros((0, self.k), np.int64)  # per row: its k best among complete blocks
        self.sims = np.zeros((0, self.k), np.float32)
        self.cnt = np.zeros(0, np.int64)
        self._file: tuple[int, str] = (0, "")  # (rows, name) of the rows' file, once `state_dict(put)` named one

    def __len__(self) -> int:
        return self.n

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Hold these items (labelled ones only; up to LOO_CAP in all)."""
        ok = np.asarray(y) >= 0
        x, y = np.asarray(x, np.float32)[ok][: LOO_CAP - self.n], np.asarray(y, np.int64)[ok][: LOO_CAP - self.n]
        if not len(y):
            return
        if not self.n:  # room for all of them at once (LOO_CAP x 512-d: 4 MB)
            self.x, self.y = np.zeros((LOO_CAP, x.shape[1]), np.float32), np.zeros(LOO_CAP, np.int64)
            self.cols, self.sims = np.zeros((LOO_CAP, self.k), np.int64), np.zeros((LOO_CAP, self.k), np.float32)
            self.cnt = np.zeros(LOO_CAP, np.int64)
        self.x[self.n:self.n + len(y)], self.y[self.n:self.n + len(y)] = x, y
        self.n += len(y)

    def evidence(self) -> Evidence:
        """The held items' leave-one-out votes, as the calibration reads them."""
        ev = Evidence()
        if self.n < 2:
            return ev
        cols, sims = self.neighbours()
        y = self.y[: self.n]
        vote_rows(sims, y[cols], y, self.temperature, ev.clean, ev.noisy, ev.prec, ev.sums)
        uniq = np.unique(y)[:MAX_LABELS]
        ev.labels[0] = len(uniq)
        ev.labels[1:1 + len(uniq)] = uniq
        return ev

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """Each held item's min(k, n - 1) nearest others (rows, similarities): largest first, equal
        similarities in row order (a stable sort of the row)."""
        n = self.n
        while self.done + LOO_BLOCK <= n:
            self._complete_block()
        d, x = self.done, self.x
        lo = max(0, min(d, n - LOO_MIN_ROWS))  # the rest, with enough rows before it for a large product
        g = x[lo:n] @ x[:n].T
        cols, sims, cnt = self.cols[:n].copy(), self.sims[:n].copy(), self.cnt[:n].copy()
        _fold(np.ascontiguousarray(g.T[:d, d - lo:]), d, 0, cols, sims, cnt)  # the complete rows, over the rest
        _fold(g[d - lo:], 0, d, cols[d:], sims[d:], cnt[d:])  # the rest, over every row
        kk = max(0, min(self.k, n - 1))
        return cols[:, :kk], sims[:, :kk]

    def _complete_block(self) -> None:
        """Compare the next block of rows with every row up to its end; keep each row's k best."""
        d, e, x = self.done, self.done + LOO_BLOCK, self.x
        g = x[d:e] @ x[:e].T
        _fold(np.ascontiguousarray(g.T[:d]), d, 0, self.cols, self.sims, self.cnt)
        _fold(g, 0, d, self.cols[d:e], self.sims[d:e], self.cnt[d:e])
        self.done = e

    def state_dict(self, put: PutFile | None = None) -> dict[str, Any] | None:
        """The items held, while they are still collected (the rest is derived from them). Their vectors
        (LOO_CAP x 512-d: 5.6 MB as base64) go into the state itself, or with `put` into a file that is
        written again only when rows were added: a label rule that never gathers its votes (more classes
        than LOO_CAP / 10) holds them for the whole run, and every commit would rewrite them."""
        if not self.n:
            return None
        x = self.x[: self.n]
        state: dict[str, Any] = {"dim": int(x.shape[1]), "y": self.y[: self.n].tolist()}
        if put is None:
            state["x"] = base64.b64encode(x.tobytes()).decode()
            return state
        rows, name = self._file
        if rows != self.n:  # the rows only grow: their count and digest name their content
            name = f"loo-{self.n}-{hashlib.blake2b(x.tobytes(), digest_size=8).hexdigest()}.f32"
            self._file = (self.n, name)
        state["x_file"] = put(name, x.tobytes)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, k: int, temperature: float,
                   get: GetFile | None = None) -> LooVotes:
        votes = cls(k, temperature)
        if state:
            if "x_file" in state:
                if get is None:
                    raise ValueError("the selector state keeps its label votes' vectors in a file "
                                     f"({state['x_file']}): restore it with the run directory's reader")
                raw = get(state["x_file"])
            else:
                raw = base64.b64decode(state["x"])
            x = np.frombuffer(raw, np.float32).reshape(-1, int(state["dim"]))
            votes.add(x, np.asarray(state["y"], np.int64))  # the next state_dict(put) names the same file
        return votes


@njit(cache=True)
def _fold(g: np.ndarray, col0: int, row0: int, cols: np.ndarray, sims: np.ndarray, cnt: np.ndarray) -> None:
    """Fold columns col0.. (values g[i, :]) into each row i's best list (cols/sims, cnt long, at most
    cols.shape[1]): largest first, equal values in column order -- the columns come after every one
    already listed, so a new value goes after the listed values it does not exceed. Row i is stream
    row row0 + i and skips itself (leave one out)."""
    k = cols.shape[1]
    for i in range(g.shape[0]):
        c = cnt[i]
        for j in range(g.shape[1]):
            col = col0 + j
            if col == row0 + i:
                continue
            v = g[i, j]
            if c == k and not v > sims[i, k - 1]:
                continue
            if c < k:
                p, c = c, c + 1
            else:
                p = k - 1  # the last one drops out
            while p > 0 and not sims[i, p - 1] >= v:
                sims[i, p], cols[i, p] = sims[i, p - 1], cols[i, p - 1]
                p -= 1
            sims[i, p], cols[i, p] = v, col
        cnt[i] = c
