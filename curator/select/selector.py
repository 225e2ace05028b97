"""InfoGrowth online selection: clean -> gain -> dedup -> insert -> sample, in stream order.

docs/concepts.md states the rules. Every decision depends only on the items accepted
before it (the index plus the earlier accepted items of the same batch) and on state
updated item by item (quantile sketches, the budget RNG), so decisions do not depend
on where batch boundaries fall: a Kafka run and a file run of the same stream agree,
and a replay after a crash reproduces the same decisions.

Per batch (`_prepare`): one index search per modality for every item, the in-batch similarity
matrices, the alignments -- array work. Per item (`_resolve`): the compiled loop of
`curator.select.kernel`, which merges each item's index neighbours with the batch's earlier
accepted items and applies the rules in order. Then (`_finish`) the accepted items go into the
index and the decisions table is built from the per-item scores.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import curator.select.kernel as kern
from curator.config import IndexConfig, SelectorConfig
from curator.embed.base import Embeddings
from curator.embed.hashes import KEYS
from curator.records import KEPT_DECISIONS
from curator.select.calibrate import (
    EARLY,
    EPS_FLOOR,
    NN_HI,
    NN_LO,
    NN_WINDOW,
    SQ8_FLOOR,
    Calibration,
    Evidence,
    calibrate,
)
from curator.select.codes import ALIGN_MODES, DECISIONS, KEPT, RECAP_ACCEPTED, RECAP_NONE, RECAP_REJECTED
from curator.select.hashdup import ACCEPTED, HashTable, hash_report
from curator.select.loop_data import G_COUNT, G_SUM, USED, LoopBatch, LoopSettings, LoopState, Scores
from curator.select.outcome import (
    MODALITIES,
    BatchView,
    Selection,
    concat_selections,
    decisions_table,
)
from curator.select.shard import IndexShard, LocalShard, ShardClient
from curator.select.sharded import ShardedIndex
from curator.select.sketch import StreamingQuantile
from curator.select.trust import PHASH_SAMPLE, GetFile, LooVotes, PutFile, crowd_status, phash_crowd

log = logging.getLogger(__name__)

_DECISION_VALUES = np.array([d.value for d in DECISIONS], dtype=object)  # by decision code
_KEPT_CODES = np.array([d in KEPT_DECISIONS for d in DECISIONS])
_ACCEPTED_CODES = np.array([d.value in ACCEPTED for d in DECISIONS])  # inserted into the index

#: Columns of the sample table the selector reads (the decisions carry the position).
SAMPLE_COLUMNS = ("id", "label", "source", "partition", "offset")

#: (samples whose caption failed alignment) -> new captions (None = no proposal)
RecaptionHook = Callable[[list[dict[str, Any]]], list[str | None]]


def load_hook(spec: str) -> RecaptionHook | None:
    """Resolve 'package.module:function' into the recaption callable."""
    if not spec:
        return None
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise ValueError(f"selector.recaption_hook must look like 'package.module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load recaption hook {spec!r}: {exc}") from None


class InfoGrowthSelector:
    """Owns the indexes of accepted items and decides, item by item, what to keep."""

    def __init__(
        self,
        cfg: SelectorConfig | None = None,
        index_cfg: IndexConfig | None = None,
        model_id: str = "",
        fingerprint: str = "",
        text_embed: Callable[[list[str]], np.ndarray] | None = None,
        shards: list[ShardClient] | None = None,
        keys: str = KEYS,
    ) -> None:
        self.cfg = cfg or SelectorConfig()
        self.index_cfg = index_cfg or IndexConfig()
        # the shards hold the indexes (here: in this process, unless the caller gives remote ones)
        self.shards = shards or [LocalShard(IndexShard(k, self.index_cfg)) for k in range(self.cfg.shards)]
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.text_embed = text_embed
        self.recaption = load_hook(self.cfg.recaption_hook)
        self.indexes: dict[str, ShardedIndex] = {}
        self.gain_sketch = StreamingQuantile(0.0, 2.0, 4096)
        self.align_sketch = StreamingQuantile(-1.0, 1.0, 4096)
        self.boot_align_sketch = StreamingQuantile(-1.0, 1.0, 4096)  # trusted pairs, for align_mode=bootstrap
        self.rng = np.random.Generator(np.random.PCG64(self.cfg.seed))
        self.seq = 0
        self.g_sum = 0.0
        self.g_count = 0
        self.counts: Counter[str] = Counter()
        self._warned_unjudged = False
        self.evidence = Evidence()
        self.boot_evidence = Evidence()  # the trusted items' leave-one-out votes
        self.loo = LooVotes(self.cfg.k_label, self.cfg.vote_temperature)  # trusted vectors (primary modality)
        self._loo_stale = False  # trusted vectors were added since boot_evidence was computed
        self.trusted_seen = 0  # trusted items decided (bootstrap)
        self.cal_pending = False  # trusted items decided since the last calibration
        self.cal = calibrate(self.cfg, self.evidence, self._evidence_source(), -1)
        self._warned_uncalibrated = False
        self._warned_rules: set[str] = set()
        self.near_ok, self.near_crowd = True, 0.0  # the perceptual rule applies (curator.select.trust.phash_crowd)
        self._recent_phash = np.zeros(0, np.int64)  # the first PHASH_SAMPLE trusted images' perceptual hashes
        self._view: BatchView | None = None  # the batch being decided, and how far its evidence is collected
        self.hashes = HashTable(self.cfg.phash_max_dist, keys)  # the accepted items' content hashes (hash rules)
        self._hashed = 0  # items the hash table held at the checkpoint restored (rebuilt by `restore_hashes`)
        self._collected_to = 0

    # --- state --------------------------------------------------------------------------
    @property
    def primary(self) -> str | None:
        if "image" in self.indexes:
            return "image"
        return "text" if "text" in self.indexes else None

    def _dedup_modality(self) -> str | None:
        want = self.cfg.dedup_on
        if want != "auto" and want in self.indexes:
            return want
        return self.primary

    def _ensure_indexes(self, emb: Embeddings) -> None:
        for m, x in (("image", emb.image), ("text", emb.text)):
            if x is not None and m not in self.indexes:
                self.indexes[m] = ShardedIndex(m, x.shape[1], self.shards, self.cfg.probe, seed=self.cfg.seed)

    def __len__(self) -> int:
        p = self.primary
        return len(self.indexes[p]) if p else 0

    def state_dict(self, put: PutFile | None = None) -> dict[str, Any]:
        """Everything but the indexes (snapshotted separately with `save_indexes`); `put`: where the
        label votes' vectors go (`LooVotes.state_dict`), else into the state."""
        return {
            "seq": self.seq,
            "g_sum": self.g_sum,
            "g_count": self.g_count,
            "counts": dict(self.counts),
            "gain_sketch": self.gain_sketch.state_dict(),
            "align_sketch": self.align_sketch.state_dict(),
            "boot_align_sketch": self.boot_align_sketch.state_dict(),
            "rng": self.rng.bit_generator.state,
            "modalities": sorted(self.indexes),
            "indexed": {m: len(i) for m, i in self.indexes.items()},
            "dims": {m: int(i.dim) for m, i in self.indexes.items()},
            "shard_sizes": {m: list(i.sizes) for m, i in self.indexes.items()},
            "routers": {m: r for m, i in self.indexes.items() if (r := i.state())},  # (or what they train on)
            "evidence": self.evidence.state_dict(),
            "boot_evidence": self._trusted_evidence().state_dict(),
            "calibration": self.cal.state_dict(),
            "trusted_seen": self.trusted_seen,
            "cal_pending": self.cal_pending,
            "hashed": len(self.hashes),
            "loo": self.loo.state_dict(put),
            "recent_phash": self._recent_phash.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any], get: GetFile | None = None) -> None:
        """`get`: reads the files `state_dict(put)` named."""
        self.seq = int(state["seq"])
        self.g_sum = float(state["g_sum"])
        self.g_count = int(state["g_count"])
        self.counts = Counter(state["counts"])
        self.gain_sketch.load_state_dict(state["gain_sketch"])
        self.align_sketch.load_state_dict(state["align_sketch"])
        self.boot_align_sketch.load_state_dict(state["boot_align_sketch"])
        self.rng.bit_generator.state = state["rng"]
        routers, dims = state.get("routers") or {}, state.get("dims") or {}
        self.indexes = {m: ShardedIndex(m, int(dims.get(m, 0)), self.shards, self.cfg.probe,
                                        routers.get(m), self.cfg.seed)
                        for m in state["modalities"]}
        for m, n in (state.get("indexed") or {}).items():
            self.indexes[m].n = int(n)
        for m, sizes in (state.get("shard_sizes") or {}).items():
            self.indexes[m].sizes = list(sizes)
        if "evidence" in state:  # a checkpoint from before calibration: start the evidence afresh
            self.evidence.load_state_dict(state["evidence"])
            self.boot_evidence.load_state_dict(state["boot_evidence"])
            self.cal = Calibration.from_state(state["calibration"])
            self.trusted_seen = int(state["trusted_seen"])
            self.cal_pending = bool(state["cal_pending"])
            self.loo = LooVotes.from_state(state.get("loo"), self.cfg.k_label, self.cfg.vote_temperature, get)
            self._recent_phash = np.asarray(state.get("recent_phash") or [], np.int64)
            # only the bootstrap fills the sample, and the stream's first item recalibrates: derived, not stored
            self.near_ok, self.near_crowd = phash_crowd(self._recent_phash, self.cfg.phash_max_dist)
        self._hashed = int(state.get("hashed", 0))

    def restore_hashes(self, decisions: pa.Table) -> None:
        """Rebuild the hash table from the committed decisions (their `hashdup.KEY_COLUMNS`, which the
        select-and-write stage reads): they record every accepted item's keys, so the table needs no
        snapshot of its own."""
        self.hashes.rebuild(decisions)
        if self.cfg.hash_dedup and len(self.hashes) != self._hashed:
            raise ValueError(f"the committed decisions hold {len(self.hashes)} accepted items' hashes, but the "
                             f"checkpoint counted {self._hashed}: the run directory is damaged")

    # --- calibration --------------------------------------------------------------------
    def _evidence_source(self) -> str:
        return "trusted bootstrap" if self.trusted_seen else "first accepted items (no trusted bootstrap)"

    def calibration_report(self) -> dict[str, Any]:
        """The thresholds in force and the evidence behind each (the manifest's "calibration")."""
        rep = hash_report(self.cfg.hash_dedup, self.cfg.phash_max_dist, len(self.hashes))
        if rep["phash_max_dist"]["value"] is not None and not self.near_ok:
            rep["phash_max_dist"] |= {"value": None, "origin": "not applied: " + self._crowd_status()}
        rep["phash_max_dist"]["crowded_share"] = round(self.near_crowd, 4)
        return {**self.cal.report(), **rep}

    def _calibration_point(self, pos: int) -> bool:
        """Stream positions where calibration is redone (a pure function of the stream): multiples of
        calibrate_every, and a few earlier points so that a short stream is calibrated on its own items."""
        return pos % self.cfg.calibrate_every == 0 or (pos in EARLY and pos < self.cfg.calibrate_every)

    def _calibration_due(self, pos: int) -> bool:
        """Recalibrate before deciding the item at stream position `pos`: at a calibration point, and
        where the stream starts after trusted items."""
        return self.cal.seq < 0 or self.cal_pending or (self._calibration_point(pos) and self.cal.seq != pos)

    def _eps_floor(self) -> float:
        """The least cosine distance the duplicate modality's index resolves (see calibrate.EPS_FLOOR)."""
        m = self._dedup_modality()
        index = self.indexes.get(m) if m else None
        return SQ8_FLOOR if index is not None and "sq8" in index.kind else EPS_FLOOR

    def _recalibrate(self, pos: int) -> None:
        self.cal = calibrate(self.cfg, self.evidence, self._evidence_source(), pos, self._trusted_evidence(),
                             self._eps_floor())
        self.cal_pending = False
        self.near_ok, self.near_crowd = phash_crowd(self._recent_phash, self.cfg.phash_max_dist)
        if not self.near_ok and "phash_max_dist" not in self._warned_rules:
            log.warning("the perceptual-hash rule is not applied: %s", self._crowd_status())
            self._warned_rules.add("phash_max_dist")
        for name, status in self.cal.origin.items():  # one warning per rule the evidence does not support
            if status.startswith("not applied") and "not calibrated yet" not in status \
                    and name not in self._warned_rules and not (name == "tau_drop" and not self.cal.applied("tau_noise")):
                log.warning("selector.%s = 'auto' is not applied: %s. Its items are recorded as not judged by it "
                            "(evidence: %s)", name, status.removeprefix("not applied: "),
                            {k: v for k, v in self.cal.evidence.get(name, {}).items() if k != "from"})
                self._warned_rules.add(name)
        if not self.collecting()[0]:  # the label evidence is complete: no more leave-one-out votes to redo
            self.loo = LooVotes(self.cfg.k_label, self.cfg.vote_temperature)
        if not self.trusted_seen and not self._warned_uncalibrated and any(
                o.startswith("calibrated") for o in self.cal.origin.values()):
            log.warning("no trusted bootstrap: the 'auto' thresholds are calibrated on the first accepted items "
                        "(taken unjudged); give source.bootstrap for thresholds calibrated on trusted data")
            self._warned_uncalibrated = True

    def collecting(self) -> tuple[bool, bool]:
        """Whether accepted items still count as right-label / right-caption evidence: while the label
        (caption) rule lacks the votes (pairs) to be calibrated at all -- without a bootstrap, or with
        too small a one -- the accepted items it cannot judge yet are taken as that evidence (their
        labels vote leave-one-out among themselves and the trusted items, as a bootstrap's do)."""
        o = self.cal.origin
        return (o.get("tau_noise", "").startswith("not applied: not calibrated yet"),
                o.get("align_threshold", "").startswith("not applied: not calibrated yet"))

    def _note_trusted(self, v: BatchView, rows: np.ndarray | None = None) -> None:
        """Keep trusted vectors (up to LOO_CAP) for `_trusted_evidence`. `rows`: the batch's rows to take
        (default: every labelled one)."""
        if v.prim < 0:
            return
        ok = v.has[v.prim] & (v.labels_in >= 0)
        rows = np.flatnonzero(ok) if rows is None else rows[ok[rows]]
        held = len(self.loo)
        self.loo.add(v.mods[MODALITIES[v.prim]][rows], v.labels_in[rows])
        self._loo_stale = self._loo_stale or len(self.loo) > held

    def _trusted_evidence(self) -> Evidence:
        """The kept trusted items' leave-one-out votes (the same however the bootstrap was batched), brought
        up to date when read, not per batch."""
        if self._loo_stale:
            self.boot_evidence = self.loo.evidence()
            self._loo_stale = False
        return self.boot_evidence

    def _segment_end(self, i: int, n: int, trusted: bool) -> int:
        """Where the compiled loop stops next: the batch's end, or the next calibration point."""
        if trusted:
            return n
        r, pos = self.cfg.calibrate_every, self.seq + i
        nxt = min([p for p in EARLY if pos < p < r] + [pos + r - pos % r])
        return min(n, i + nxt - pos)

    def _crowd_status(self) -> str:
        return crowd_status(self.near_crowd, len(self._recent_phash), self.cfg.phash_max_dist)

    def _collect(self, s: Scores, upto: int) -> None:
        """While the label rule cannot be calibrated, the batch's accepted items before `upto` that no
        label rule judged join the leave-one-out evidence (before a calibration point, so its values
        depend on the stream only, not on where batches end)."""
        lo, self._collected_to = self._collected_to, max(self._collected_to, upto)
        if upto <= lo or self._view is None:
            return
        r = np.arange(lo, upto)
        if self.collecting()[0]:
            self._note_trusted(self._view, r[s.unjudged[r].astype(bool) & (s.decision[r] == KEPT)])

    def _note_phash(self, s: Scores, r: np.ndarray) -> None:
        """The trusted images' perceptual hashes (rows `r` of a bootstrap batch): distinct pictures by
        assumption, so how close they sit to each other says how crowded these data make the cut."""
        h = self._view.hashes if self._view is not None else None
        if h is not None and len(r):
            took = r[_ACCEPTED_CODES[s.decision[r]] & h.phash_ok[r]]
            self._recent_phash = np.concatenate([self._recent_phash, h.phash[took]])[:PHASH_SAMPLE]

    def _begin_item(self, v: BatchView, s: Scores, i: int, trusted: bool) -> None:
        """Before deciding item i (of this batch): recalibrate when due, note the values in force."""
        if not trusted and self._calibration_due(self.seq + i):
            self._collect(s, i)
            self._recalibrate(self.seq + i)
        if not v.cals or v.cals[-1] is not self.cal:
            v.cals.append(self.cal)
        s.cal_idx[i] = len(v.cals) - 1

    def _settings(self, has_hook: bool) -> LoopSettings:
        """The values in force, as the compiled loop takes them."""
        c, val = self.cfg, self.cal.values
        boot = self.boot_align_sketch.quantile(c.align_bootstrap_quantile, lower=True)
        return LoopSettings(
            k_gain=int(c.k_gain), k_label=int(c.k_label), min_trusted=int(c.min_trusted),
            align_mode=ALIGN_MODES[c.align_mode], align_warmup=int(c.align_warmup),
            relabel=c.label_action == "relabel", has_hook=has_hook, collect_pairs=self.collecting()[1],
            nn_window=NN_WINDOW, near_ok=bool(self.near_ok), tau_noise=float(val["tau_noise"]),
            tau_relabel=float(val["tau_relabel"]), tau_drop=float(val["tau_drop"]),
            relabel_radius=float(val["relabel_radius"]), temperature=float(c.vote_temperature),
            eps_dup=float(val["eps_dup"]), gain_quantile=float(c.gain_quantile), keep_rate=float(c.keep_rate),
            align_threshold=float(val["align_threshold"]), align_drop_quantile=float(c.align_drop_quantile),
            boot_threshold=np.nan if boot is None else float(boot), gain_lo=self.gain_sketch.lo,
            gain_hi=self.gain_sketch.hi, align_lo=self.align_sketch.lo, align_hi=self.align_sketch.hi,
            nn_lo=NN_LO, nn_hi=NN_HI)

    def save_indexes(self, directory: str | Path) -> None:
        """Snapshot the shards' indexes (in this process) under `directory` (shard k: `shard=k/`), and the
        hash table (a run directory needs no such file: its decisions hold the keys)."""
        for c in self.shards:
            assert isinstance(c, LocalShard), "remote shards write their own snapshots"
            c.target.save(Path(directory) if len(self.shards) == 1 else Path(directory) / f"shard={c.shard}")
        pq.write_table(self.hashes.to_table(), Path(directory) / "hashes.parquet")

    def load_indexes(self, directory: str | Path, modalities: list[str]) -> None:
        for c in self.shards:
            assert isinstance(c, LocalShard), "remote shards restore their own snapshots"
            c.target.load(Path(directory) if len(self.shards) == 1 else Path(directory) / f"shard={c.shard}")
        for m in modalities:
            if m not in self.indexes:
                dim = next(c.target.indexes[m].dim for c in self.shards if m in c.target.indexes)  # type: ignore[attr-defined]
                self.indexes[m] = ShardedIndex(m, dim, self.shards, self.cfg.probe, seed=self.cfg.seed)
            self.indexes[m].n = sum(c.describe().sizes.get(m, 0) for c in self.shards)
        saved = Path(directory) / "hashes.parquet"
        self.restore_hashes(self.hashes.check_saved(pq.read_table(saved), saved))

    def finish_bootstrap(self) -> None:
        """The trusted items are in: train the shard routers on them (nothing to do with one shard)."""
        self._train_routers(later=self.cfg.router_train_size)

    def _train_routers(self, later: int | None = None) -> None:
        """Route from here on; an 'auto' margin reads the eps_dup the evidence so far calibrates (the
        calibration in force may predate the last items); `later`: see ShardedIndex.train_router."""
        if self.cfg.shards == 1 or all(i.router is not None for i in self.indexes.values()):
            return
        eps = calibrate(self.cfg, self.evidence, self._evidence_source(), self.seq, self._trusted_evidence(),
                        self._eps_floor()).values["eps_dup"]
        for index in self.indexes.values():
            index.train_router(self.cfg.shard_margin, eps, later)

    # --- selection ----------------------------------------------------------------------
    def bootstrap(self, samples: pa.Table, emb: Embeddings) -> Selection:
        """Insert a trusted set: gains and dedup apply, cleaning does not."""
        return self._run(samples, emb, trusted=True)

    def select(self, samples: pa.Table, emb: Embeddings) -> Selection:
        """Decide one batch of the stream, item by item. `samples`: validated sample rows with their
        positions (`curator.records.SAMPLE_SCHEMA`, as `curator.validate.validate_records` makes them);
        `emb`: their unit-norm embeddings. From plain arrays: `curator.select_embeddings`."""
        return self._run(samples, emb, trusted=False)

    def _run(self, samples: pa.Table, emb: Embeddings, trusted: bool) -> Selection:
        missing = [c for c in SAMPLE_COLUMNS if c not in samples.column_names]
        if missing:
            raise ValueError(f"the selector's samples lack the column(s) {', '.join(missing)}: it takes validated "
                             "sample tables (curator.records.SAMPLE_SCHEMA: id, label and the position: source, "
                             "partition, offset); from plain arrays, use curator.select_embeddings")
        cut = self._router_cut(samples.num_rows, trusted)
        if cut is not None:  # the routers train at a fixed stream position, also mid-batch
            first = self._run(samples.slice(0, cut), emb.take(np.arange(cut)), trusted)
            self._train_routers()
            rest = self._run(samples.slice(cut), emb.take(np.arange(cut, samples.num_rows)), trusted)
            return concat_selections(first, rest)
        view = self._prepare(samples, emb, trusted)
        self._view, self._collected_to = view, 0
        scores = self._resolve(view, trusted)
        if not trusted:
            self._collect(scores, samples.num_rows)
        else:
            self._note_phash(scores, np.arange(samples.num_rows))
        if trusted and samples.num_rows:
            self.trusted_seen += samples.num_rows
            self.cal_pending = True
            self._note_trusted(view)
        return self._finish(view, scores, trusted)

    def _router_cut(self, n: int, trusted: bool) -> int | None:
        """Where in this batch the routers must train (stream position router_train_size), if here."""
        if trusted or self.cfg.shards == 1 or not any(i.router is None for i in self.indexes.values()):
            return None
        at = self.cfg.router_train_size - self.seq
        if at <= 0:
            self._train_routers()
            return None
        return at if at < n else None

    def _prepare(self, samples: pa.Table, emb: Embeddings, trusted: bool) -> BatchView:
        """The batch-level work: one index search and one in-batch similarity matrix per modality."""
        n = samples.num_rows
        if emb.errors:
            raise ValueError("selector got rows that failed embedding; drop emb.errors rows first")
        if len(emb) != n:
            raise ValueError(f"selector got {n} samples but {len(emb)} embeddings")
        space = self.cfg.space  # every item has a vector in the run's space, and a text run has no image index
        has = emb.has_image if space == "image" else emb.has_text
        if not has.all() or (space == "text" and emb.image is not None):
            raise ValueError(f"selector.space = {space!r}: every item needs a {space} embedding and nothing else "
                             f"may be compared; reject the others first (the embed stage does: code no-{space})")
        self._ensure_indexes(emb)
        k = max(self.cfg.k_gain, self.cfg.k_label)
        mods = {m: x for m, x in (("image", emb.image), ("text", emb.text)) if x is not None}
        if "text" in mods:
            mods["text"] = mods["text"].copy()  # recaptions replace rows
        present = np.array([m in mods for m in MODALITIES])
        has = np.stack([emb.has_image, emb.has_text]).astype(bool)
        isims = np.full((2, n, k), -np.inf, np.float32)
        ilab = np.full((2, n, k), -1, np.int64)
        irow = np.full((2, n, k), -1, np.int64)
        gram = np.zeros((2, n, n), np.float32)
        n_index = np.zeros(2, np.int64)
        seqs = np.arange(self.seq, self.seq + n, dtype=np.int64)
        for j, m in enumerate(MODALITIES):
            if m not in mods:
                continue
            index = self.indexes[m]
            isims[j], irow[j], ilab[j] = index.search_labelled(mods[m], k, seqs)
            gram[j] = mods[m] @ mods[m].T
            visible = index.visibility(mods[m]) if hasattr(index, "visibility") else None  # (a bare VectorIndex: all)
            if visible is not None:  # in-batch items on shards it does not search
                gram[j][~visible] = -np.inf
            n_index[j] = len(index)
        pair = present[0] & present[1] & has[0] & has[1]
        align = np.full(n, np.nan)
        if pair.any():
            align[pair] = np.einsum("ij,ij->i", mods["image"][pair], mods["text"][pair])
        labels_in = pc.fill_null(samples.column("label"), -1).to_numpy().astype(np.int64)
        prim, dmod = self.primary, self._dedup_modality()
        cross, cross_ok = self._cross_pairs(mods, has)
        # the perceptual rule's value for this batch: near_ok, or what the recalibration due at its first
        # item makes of trusted hashes added since (only they move it)
        near = self.near_ok or (not trusted and self.cal_pending)
        hashes = self.hashes.judge(emb.hashes, mods[dmod], dmod, self.cfg.hash_dedup, near) if dmod else None
        return BatchView(samples, samples.column("id").to_pylist(), mods, present, has, isims, ilab, irow, gram,
                         n_index, labels_in, labels_in.copy(), labels_in.copy(), pair, align, [None] * n,
                         np.zeros((2, n), np.int64), np.zeros(2, np.int64),
                         MODALITIES.index(prim) if prim else -1, MODALITIES.index(dmod) if dmod else -1,
                         cross, cross_ok, hashes, np.zeros(n, bool))

    def _cross_pairs(self, mods: dict[str, np.ndarray], has: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """cos(image i, caption of the stream's previous item): mismatched pairs, in stream order."""
        n = has.shape[1]
        cross, ok = np.zeros(n), np.zeros(n, bool)
        if "image" not in mods or "text" not in mods:
            return cross, ok
        img, txt = mods["image"], mods["text"]
        prev = np.empty_like(txt)
        prev[1:] = txt[:-1]
        prev_has = np.zeros(n, bool)
        prev_has[1:] = has[1, :-1]
        last = self.evidence.last_text
        if last is not None and len(last) == txt.shape[1]:
            prev[0], prev_has[0] = np.asarray(last, np.float32), True
        ok = has[0] & prev_has
        cross[ok] = np.einsum("ij,ij->i", img[ok], prev[ok])
        rows = np.flatnonzero(has[1])
        if len(rows):
            self.evidence.last_text = txt[rows[-1]].astype(np.float64).tolist()
        return cross, ok

    def _resolve(self, v: BatchView, trusted: bool) -> Scores:
        """The per-item loop (compiled), stopping to ask a recaption hook and to recalibrate."""
        n = len(v.ids)
        s = Scores.empty(n)
        budget = self.cfg.keep_rate > 0 and not trusted
        rng_state = self.rng.bit_generator.state
        h = v.hashes or self.hashes.judge(None, np.zeros((n, 1), np.float32), "image", on=False)
        b = LoopBatch(trusted, int(v.isims.shape[2]), v.prim, v.dmod, v.present, v.has, v.isims, v.ilab, v.irow,
                      v.gram, v.n_index, v.labels_in, v.pair, v.align, v.cross, v.cross_ok, h.hit_rule, h.hit_dist,
                      h.hit_row, h.cptr, h.crow, h.crule, h.cdist)
        ev = self.evidence
        run = LoopState(self.gain_sketch.counts, self.align_sketch.counts, self.boot_align_sketch.counts, v.acc,
                        v.n_acc, v.vote_label, v.label_out, v.inserted,
                        np.array([self.g_sum, float(self.g_count), 0.0]),
                        self.rng.random(n) if budget else np.zeros(0),  # at most one draw per item
                        ev.nn, ev.nn_meta, ev.sums, ev.cross)
        i = 0
        while i < n:
            self._begin_item(v, s, i, trusted)
            stop = self._segment_end(i, n, trusted)
            s.cal_idx[i:stop] = s.cal_idx[i]
            j = kern.resolve(b, self._settings(self.recaption is not None), run, s, i, stop)
            if j < stop:
                self._recaption_item(v, s, j)
            i = j
        self.g_sum, self.g_count = float(run.tally[G_SUM]), int(run.tally[G_COUNT])
        if budget:  # the generator moves by the draws used, as if drawn one by one
            self.rng.bit_generator.state = rng_state
            self.rng.bit_generator.advance(int(run.tally[USED]))
        return s

    def _recaption_item(self, v: BatchView, s: Scores, i: int) -> None:
        """Item i's caption is misaligned: ask the hook; keep a proposal that scores above the threshold."""
        new = self._recaption(v.samples, i)
        if new is None:
            s.recap[i] = RECAP_NONE
            return
        assert self.text_embed is not None
        tv = self.text_embed([new])[0].astype(np.float32)
        s.align_out[i] = float(v.mods["image"][i] @ tv)
        if s.align_out[i] < s.thr[i]:
            s.recap[i] = RECAP_REJECTED
            return
        text = v.mods["text"]
        text[i] = tv
        v.gram[1, :, i] = text @ tv  # what later items see of item i (its own neighbours were gathered)
        v.text_out[i] = new
        s.recap[i] = RECAP_ACCEPTED

    def _finish(self, v: BatchView, s: Scores, trusted: bool) -> Selection:
        """Insert the accepted items, count, and write the decisions table."""
        for j, m in enumerate(MODALITIES):
            if v.n_acc[j]:
                a = v.acc[j, : v.n_acc[j]]
                self.indexes[m].add(v.mods[m][a], [v.ids[t] for t in a], v.vote_label[a], self.seq + a)
        if v.hashes is not None and self.cfg.hash_dedup:
            self.hashes.add_rows(v.hashes, v.ids, np.flatnonzero(v.inserted))
        n = len(v.ids)
        seqs = np.arange(self.seq, self.seq + n, dtype=np.int64)
        self.seq += n
        values = _DECISION_VALUES[s.decision]
        self.counts.update(values.tolist())
        if s.unjudged.any() and not self._warned_unjudged:
            log.warning("the index holds fewer than %d accepted items: accepting items without label "
                        "cleaning until it does (give a trusted bootstrap source to avoid this)", max(1, self.cfg.min_trusted))
            self._warned_unjudged = True
        prim = v.prim if v.prim >= 0 else 0
        index = self.indexes[MODALITIES[prim]] if v.present[prim] else None
        homes = index.route(v.mods[MODALITIES[prim]])[0] if isinstance(index, ShardedIndex) else np.zeros(n, np.int64)
        return Selection(
            decisions=decisions_table(self, v, s, seqs, values, trusted),
            kept_rows=np.flatnonzero(_KEPT_CODES[s.decision]).astype(np.int64),
            label_out=v.label_out,
            text_out=v.text_out,
            text_emb_out=v.mods.get("text"),
            gain=s.gain.astype(np.float32),
            gain_norm=s.gain_norm.astype(np.float32),
            homes=homes,
        )

    def _recaption(self, samples: pa.Table, i: int) -> str | None:
        if self.recaption is None:
            return None
        if self.text_embed is None:
            raise RuntimeError("a recaption hook needs the selector's text_embed function (the embedder's)")
        item = samples.slice(i, 1).to_pylist()[0]
        out = self.recaption([item])
        new = out[0] if out else None
        return new if isinstance(new, str) and new.strip() else None

