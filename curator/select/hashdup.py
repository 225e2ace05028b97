"""The hash rules for duplicates: model-free, applied before the embedding rules, never calibrated.

An item is a duplicate of an **accepted** item (one in the index, or accepted earlier in its batch)
when

1. one of its exact keys -- its content key (image bytes, a precomputed vector, or a caption in a
   text run) or its decoded-pixel key -- equals that item's (`RULE_CONTENT`, `RULE_PIXELS`), or
2. its perceptual hash is within `max_dist` bits (Hamming) of that item's (`RULE_NEAR`).

An exact match wins over a near one; among near ones the closest, then the earliest accepted. The
keys come from `curator.embed.hashes`. The table of accepted keys lives with the selector, which
sees every item in stream order whatever shard its vector goes to, so a copy is caught wherever its
original went. Lookups are a dict for exact keys and FAISS multi-index hashing for perceptual ones:
the 64 bits cut into max_dist + 1 pieces, one hash table each, so every item within max_dist bits
shares at least one piece exactly (pigeonhole) and is found; at 4 bits (12-bit pieces) a lookup
among a million items costs about 50 us, at 8 bits (7-bit pieces) about 3 ms.

Whether an earlier item of the same batch was accepted is known only inside the per-item loop, so
this module gives the loop (`curator.select.kernel`) each item's match in the table and the earlier
rows of its batch it matches (`BatchHashes`); the loop takes the first of those that was accepted.
The table is rebuilt on resume from the committed decisions, which record every item's keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curator.embed.hashes import KEYS, LEGACY_KEYS, ContentHashes, check_scheme, vector_key
from curator.records import Decision
from curator.select.codes import RULE_CONTENT, RULE_NEAR, RULE_NONE, RULE_PIXELS  # noqa: F401 - the rules' codes

#: the value of the decisions' `dup_rule` column per rule (the embedding rule's is "embedding")
RULE_NAMES = {RULE_CONTENT: "hash-exact", RULE_PIXELS: "hash-exact", RULE_NEAR: "hash-near"}
#: the largest perceptual distance allowed (12 pieces of 5 bits: lookups approach a scan beyond it)
MAX_NEAR_DIST = 11
#: decisions whose item was accepted (inserted into the index): the ones the table holds
ACCEPTED = (Decision.KEPT.value, Decision.RELABELLED.value, Decision.RECAPTIONED.value,
            Decision.DROPPED_BY_BUDGET.value)
_CHUNK = 1 << 16  # growth of the FAISS-row -> item array


@dataclass
class BatchHashes:
    """One batch's keys and what they match: in the table (`hit_*`) and earlier in the batch (`c*`,
    rows j < i of item i from cptr[i] to cptr[i + 1], j ascending)."""

    content: np.ndarray  # int64 (0: none)
    pixels: np.ndarray  # int64 (0: none)
    phash: np.ndarray  # int64
    phash_ok: np.ndarray  # bool
    hit_rule: np.ndarray  # int8: RULE_* of the best match in the table
    hit_dist: np.ndarray  # int64: its Hamming distance (0 for an exact match)
    hit_row: np.ndarray  # int64: its item number in the table
    cptr: np.ndarray  # int64 (n + 1)
    crow: np.ndarray  # int64
    crule: np.ndarray  # int8
    cdist: np.ndarray  # int64
    what: list[str]  # per row, what its content key is of: "image bytes", "caption (normalised)", "embedding"


def _codes(x: np.ndarray) -> np.ndarray:
    """int64 hashes as FAISS binary codes: (n, 8) uint8."""
    return np.ascontiguousarray(x, np.int64).view(np.uint8).reshape(-1, 8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between int64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b).view(np.uint64)).astype(np.int64)


class HashTable:
    """The accepted items' keys, in acceptance order (an item's number is its place in that order)."""

    def __init__(self, max_dist: int = 4, keys: str = KEYS) -> None:
        if max_dist > MAX_NEAR_DIST:
            raise ValueError(f"selector.phash_max_dist must be at most {MAX_NEAR_DIST}, got {max_dist}")
        self.max_dist = max_dist  # < 0: no perceptual rule
        self.keys = check_scheme(keys)  # the run's content keys: the vectors' keys are made here
        self.exact: dict[int, int] = {}
        self.ids: list[str] = []
        pieces = max(0, max_dist) + 1
        self.near = faiss.IndexBinaryMultiHash(64, pieces, 64 // pieces)
        self.near.nflip = 0
        self._near_items = np.zeros(0, np.int64)  # FAISS row -> item number (capacity; ntotal are valid)
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # the keys, as added

    def __len__(self) -> int:
        return len(self.ids)

    def judge(self, hashes: ContentHashes | None, vectors: np.ndarray, modality: str, on: bool = True,
              near: bool = True) -> BatchHashes:
        """One batch's keys in the dedup modality and, when the rules are `on`, their matches. An item
        whose embedder saw no payload to hash (precomputed vectors) is keyed by its vector. `near`: the
        perceptual rule can apply to this batch; when it cannot (distinct pictures crowd its cut), its
        searches are skipped -- their matches would be ignored."""
        n = len(vectors)
        h = hashes if hashes is not None else ContentHashes.empty(n)
        own = h.image if modality == "image" else h.text
        content = own.copy()
        what = ["image bytes" if modality == "image" else "caption (normalised)"] * n
        for i in np.flatnonzero(own == 0).tolist():
            content[i], what[i] = vector_key(vectors[i], self.keys), "embedding"
        pixels = h.pixels if modality == "image" else np.zeros(n, np.int64)
        ph, ok = (h.phash, h.phash_ok) if modality == "image" else (np.zeros(n, np.int64), np.zeros(n, bool))
        if not on:
            z = np.zeros(n, np.int64)
            return BatchHashes(content, pixels, ph, ok, np.zeros(n, np.int8), z, np.full(n, -1, np.int64),
                               np.zeros(n + 1, np.int64), z[:0], np.zeros(0, np.int8), z[:0], what)
        return self.match(content, pixels, ph, ok, what, near)

    def match(self, content: np.ndarray, pixels: np.ndarray, phash: np.ndarray, phash_ok: np.ndarray,
              what: list[str], near: bool = True) -> BatchHashes:
        """The batch's matches in the table and among its own earlier rows (see `BatchHashes`); perceptual
        ones only where `near`."""
        n = len(content)
        usable = phash_ok & (self.max_dist >= 0) & near
        rule, dist, row = np.zeros(n, np.int8), np.zeros(n, np.int64), np.full(n, -1, np.int64)
        for r, keys in ((RULE_CONTENT, content), (RULE_PIXELS, pixels)):
            for i, key in enumerate(keys.tolist()):
                if key and not rule[i] and key in self.exact:
                    rule[i], row[i] = r, self.exact[key]
        q = np.flatnonzero(usable & (rule == RULE_NONE))
        if len(q) and self.near.ntotal:
            lims, d, found = self.near.range_search(_codes(phash[q]), self.max_dist + 1)
            query = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
            item = self._near_items[found]
            order = np.lexsort((item, d, query))  # per query: the nearest, then the earliest item
            first = order[np.flatnonzero(np.diff(query[order], prepend=-1))]
            hit = q[query[first]]
            rule[hit], dist[hit], row[hit] = RULE_NEAR, d[first], item[first]
        cptr, crow, crule, cdist = self._in_batch(content, pixels, phash, usable)
        return BatchHashes(content, pixels, phash, phash_ok, rule, dist, row, cptr, crow, crule, cdist, what)

    def _in_batch(self, content: np.ndarray, pixels: np.ndarray, phash: np.ndarray,
                  phash_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (i, j < i) of rows that match: an exact key in common, else perceptual hashes within
        max_dist (found with a flat binary index over the batch: no n x n arrays for large batches)."""
        n = len(content)
        found: list[tuple[np.ndarray, ...]] = []  # (i, j, rule, dist) arrays; the first found of a pair wins
        for rule, keys in ((RULE_CONTENT, content), (RULE_PIXELS, pixels)):
            given = keys[keys != 0]
            if len(np.unique(given)) == len(given):  # no key twice (most batches): no pairs to find
                continue
            seen: dict[int, list[int]] = {}
            ii, jj = [], []
            for i, key in enumerate(keys.tolist()):
                if key:
                    for j in seen.get(key, ()):
                        ii.append(i)
                        jj.append(j)
                    seen.setdefault(key, []).append(i)
            found.append((np.array(ii, np.int64), np.array(jj, np.int64), np.full(len(ii), rule, np.int8),
                          np.zeros(len(ii), np.int64)))
        ok = np.flatnonzero(phash_ok)
        codes = phash[ok]
        for a in range(0, len(ok), 512):  # blocks of rows: no n x n array for a large batch
            d = hamming(codes[a:a + 512, None], codes[None, :])
            t, u = np.nonzero(d <= self.max_dist)
            i, j = ok[a + t], ok[u]
            below = j < i
            found.append((i[below], j[below], np.full(int(below.sum()), RULE_NEAR, np.int8), d[t, u][below].astype(np.int64)))
        i, j, rule, dist = (np.concatenate([f[c] for f in found]) if found else np.zeros(0, np.int8 if c == 2 else np.int64)
                            for c in range(4))
        _, first = np.unique(i * n + j, return_index=True)  # pairs in (i, j) order, each as first found
        cptr = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(i[first], minlength=n), out=cptr[1:])
        return cptr, j[first], rule[first], dist[first]

    def add(self, ids: list[str], content: np.ndarray, pixels: np.ndarray, phash: np.ndarray,
            phash_ok: np.ndarray) -> None:
        """Accepted items, in acceptance order."""
        base = len(self.ids)
        self.ids.extend(ids)
        self._chunks.append((content, pixels, phash, phash_ok))
        for r, keys in enumerate(zip(content.tolist(), pixels.tolist(), strict=True)):
            for key in keys:
                if key:
                    self.exact.setdefault(key, base + r)
        ok = np.flatnonzero(phash_ok) if self.max_dist >= 0 else np.zeros(0, np.int64)
        if len(ok):
            n0 = self.near.ntotal
            if n0 + len(ok) > len(self._near_items):
                grown = np.zeros(max(2 * len(self._near_items), n0 + len(ok) + _CHUNK), np.int64)
                grown[:n0] = self._near_items[:n0]
                self._near_items = grown
            self._near_items[n0:n0 + len(ok)] = base + ok
            self.near.add(_codes(phash[ok]))

    @property
    def near_items(self) -> np.ndarray:
        """Per perceptual hash in the index (FAISS row), its item number."""
        return self._near_items[: self.near.ntotal]

    def add_rows(self, b: BatchHashes, ids: list[str], rows: np.ndarray) -> None:
        """A batch's accepted rows (in stream order)."""
        self.add([ids[r] for r in rows.tolist()], b.content[rows], b.pixels[rows], b.phash[rows], b.phash_ok[rows])

    def to_table(self) -> pa.Table:
        """The accepted items' keys in acceptance order, as decisions record them (what `rebuild` reads),
        with the scheme they were made with (`check_saved`)."""
        n = len(self.ids)
        c, p, h, ok = (np.concatenate([ch[f] for ch in self._chunks]) if self._chunks else
                       np.zeros(0, bool if f == 3 else np.int64) for f in range(4))
        return pa.table({"id": pa.array(self.ids, pa.string()), "seq": pa.array(np.arange(n), pa.int64()),
                         "decision": pa.array([Decision.KEPT.value] * n, pa.string()),
                         "content_hash": pa.array(c, pa.int64(), mask=c == 0),
                         "pixel_hash": pa.array(p, pa.int64(), mask=p == 0),
                         "phash": pa.array(h, pa.int64(), mask=~ok)}, metadata={"content_keys": self.keys})

    def check_saved(self, table: pa.Table, where: object) -> pa.Table:
        """`table` as `to_table` saved it, refused when its keys were made with another scheme than this
        table makes: no key of a copy would equal its original's."""
        held = (table.schema.metadata or {}).get(b"content_keys", LEGACY_KEYS.encode()).decode()
        if held != self.keys:
            raise ValueError(f"{where} holds content keys made with {held}, but this selector makes {self.keys}: "
                             f"construct it with keys={held!r} (and the embedder with content_keys = {held!r}), "
                             "or copies of the saved items go unnoticed")
        return table

    def rebuild(self, decisions: pa.Table) -> None:
        """The table as the committed decisions left it: their accepted items' keys, in stream order."""
        self.__init__(self.max_dist, self.keys)  # type: ignore[misc]
        if not decisions.num_rows:
            return
        t = decisions.filter(pc.is_in(decisions.column("decision"), pa.array(ACCEPTED)))
        t = t.take(pc.sort_indices(t, [("seq", "ascending")]))

        def keys(name: str) -> np.ndarray:
            return pc.fill_null(t.column(name), 0).to_numpy().astype(np.int64)

        ph = t.column("phash")
        self.add(t.column("id").to_pylist(), keys("content_hash"), keys("pixel_hash"), keys("phash"),
                 pc.is_valid(ph).to_numpy(zero_copy_only=False))


#: the decisions' columns the table is rebuilt from (a resuming run reads only these of its committed ones)
KEY_COLUMNS = ["id", "seq", "decision", "content_hash", "pixel_hash", "phash"]


def hash_report(on: bool, max_dist: int, accepted: int) -> dict[str, dict]:
    """The hash rules as the manifest's "calibration" shows the thresholds: configured, never calibrated."""
    near = on and max_dist >= 0
    return {"hash_dedup": {"value": "on" if on else None, "accepted_items": accepted,
                           "origin": "config: exact copies by content hash, before every other rule; model-free, "
                                     "never calibrated" if on else "not applied: selector.hash_dedup = false"},
            "phash_max_dist": {"value": float(max_dist) if near else None,
                               "origin": "config" if near else "not applied: " + (
                                   "selector.hash_dedup = false" if not on else "selector.phash_max_dist = -1")}}
