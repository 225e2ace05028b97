"""InfoGrowth online selection: clean -> gain -> dedup -> insert -> sample, in stream order.

ALGORITHMS.md section 1 is the spec. Every decision depends only on the items accepted
before it (the index plus the earlier accepted items of the same batch) and on state
updated item by item (quantile sketches, the budget RNG), so decisions do not depend
on where batch boundaries fall: a Kafka run and a file run of the same stream agree,
and a replay after a crash reproduces the same decisions.

Per batch the selector searches the index once and computes the in-batch similarities once;
per item it gathers the neighbours, computes the scores, and applies the rules of
`curator.select.rules` in order (`_decide`).
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import curator.select.rules as rules
from curator.config import IndexConfig, SelectorConfig
from curator.embed.base import Embeddings
from curator.index import VectorIndex
from curator.records import DECISION_SCHEMA, KEPT_DECISIONS, Decision
from curator.select.sketch import StreamingQuantile

log = logging.getLogger(__name__)

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


@dataclass
class Selection:
    """Outcome of one batch: one decision per input row, and what the kept rows become."""

    decisions: pa.Table
    kept_rows: np.ndarray  # row numbers (into the batch) of kept items, in order
    label_out: np.ndarray  # per row, the label after correction (-1 none)
    text_out: list[str | None]  # per row, the caption after a recaption (None = unchanged)
    text_emb_out: np.ndarray | None  # per row, text embedding after a recaption
    gain: np.ndarray
    gain_norm: np.ndarray


@dataclass
class ItemRecord:
    """One item's scores and decision; becomes a row of the decisions table."""

    decision: Decision = Decision.KEPT
    reason: str = ""
    label_noisy: bool | None = None
    agreement: float | None = None
    align: float | None = None
    align_out: float | None = None
    text_out: str | None = None
    gain: float | None = None
    gain_m: dict[str, float] = field(default_factory=dict)
    gain_norm: float | None = None
    max_sim: float | None = None
    dup_of: str | None = None
    keep_prob: float | None = None


#: An item's neighbours in one modality, nearest first: (similarities, vote labels, ids).
Neighbours = tuple[np.ndarray, np.ndarray, list[str]]


@dataclass
class _Batch:
    """What the per-item loop reads and updates for one batch (computed once per batch)."""

    samples: pa.Table
    mods: dict[str, np.ndarray]  # vectors per modality (text rows change on a recaption)
    has: dict[str, np.ndarray]
    search: dict[str, tuple[np.ndarray, np.ndarray]]  # index neighbours per modality
    gram: dict[str, np.ndarray]  # in-batch similarities per modality
    ids: list[str]
    labels_in: np.ndarray
    label_out: np.ndarray
    vote_label: np.ndarray  # labels that may vote: a corrected label never does
    text_out: list[str | None]
    acc: dict[str, list[int]]  # accepted rows of this batch per modality, in insertion order


class InfoGrowthSelector:
    """Owns the indexes of accepted items and decides, item by item, what to keep."""

    def __init__(
        self,
        cfg: SelectorConfig | None = None,
        index_cfg: IndexConfig | None = None,
        model_id: str = "",
        fingerprint: str = "",
        text_embed: Callable[[list[str]], np.ndarray] | None = None,
    ) -> None:
        self.cfg = cfg or SelectorConfig()
        self.index_cfg = index_cfg or IndexConfig()
        self.model_id = model_id
        self.fingerprint = fingerprint
        self.text_embed = text_embed
        self.recaption = load_hook(self.cfg.recaption_hook)
        self.indexes: dict[str, VectorIndex] = {}
        self.gain_sketch = StreamingQuantile(0.0, 2.0, 4096)
        self.align_sketch = StreamingQuantile(-1.0, 1.0, 4096)
        self.boot_align_sketch = StreamingQuantile(-1.0, 1.0, 4096)  # trusted pairs, for align_mode=bootstrap
        self.rng = np.random.Generator(np.random.PCG64(self.cfg.seed))
        self.seq = 0
        self.g_sum = 0.0
        self.g_count = 0
        self.counts: Counter[str] = Counter()
        self._warned_unjudged = False

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
                self.indexes[m] = VectorIndex(x.shape[1], self.index_cfg)

    def __len__(self) -> int:
        p = self.primary
        return len(self.indexes[p]) if p else 0

    def state_dict(self) -> dict[str, Any]:
        """Everything but the indexes (snapshotted separately with `save_indexes`)."""
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seq = int(state["seq"])
        self.g_sum = float(state["g_sum"])
        self.g_count = int(state["g_count"])
        self.counts = Counter(state["counts"])
        self.gain_sketch.load_state_dict(state["gain_sketch"])
        self.align_sketch.load_state_dict(state["align_sketch"])
        self.boot_align_sketch.load_state_dict(state["boot_align_sketch"])
        self.rng.bit_generator.state = state["rng"]

    def save_indexes(self, directory: str | Path) -> None:
        for m, idx in self.indexes.items():
            idx.save(Path(directory) / m)

    def load_indexes(self, directory: str | Path, modalities: list[str]) -> None:
        self.indexes = {m: VectorIndex.load(Path(directory) / m, self.index_cfg) for m in modalities}

    # --- selection ----------------------------------------------------------------------
    def bootstrap(self, samples: pa.Table, emb: Embeddings) -> Selection:
        """Insert a trusted set: gains and dedup apply, cleaning does not."""
        return self._run(samples, emb, trusted=True)

    def select(self, samples: pa.Table, emb: Embeddings) -> Selection:
        return self._run(samples, emb, trusted=False)

    def _run(self, samples: pa.Table, emb: Embeddings, trusted: bool) -> Selection:
        b = self._prepare(samples, emb)
        items = [self._decide(b, i, trusted) for i in range(samples.num_rows)]
        for m, rows_m in b.acc.items():
            if rows_m:
                a = np.asarray(rows_m)
                self.indexes[m].add(b.mods[m][a], [b.ids[j] for j in a], b.vote_label[a])
        seqs = np.arange(self.seq, self.seq + len(items), dtype=np.int64)
        self.seq += len(items)
        for r in items:
            self.counts[r.decision.value] += 1
        kept = np.array([i for i, r in enumerate(items) if r.decision in KEPT_DECISIONS], dtype=np.int64)
        return Selection(
            decisions=self._decisions_table(samples, seqs, items, b.labels_in, b.label_out),
            kept_rows=kept,
            label_out=b.label_out,
            text_out=b.text_out,
            text_emb_out=b.mods.get("text"),
            gain=np.array([np.nan if r.gain is None else r.gain for r in items], np.float32),
            gain_norm=np.array([np.nan if r.gain_norm is None else r.gain_norm for r in items], np.float32),
        )

    def _prepare(self, samples: pa.Table, emb: Embeddings) -> _Batch:
        """The batch-level work: one index search and one in-batch similarity matrix per modality."""
        n = samples.num_rows
        if emb.errors:
            raise ValueError("selector got rows that failed embedding; drop emb.errors rows first")
        if len(emb) != n:
            raise ValueError(f"selector got {n} samples but {len(emb)} embeddings")
        self._ensure_indexes(emb)
        k = max(self.cfg.k_gain, self.cfg.k_label)
        mods = {m: x for m, x in (("image", emb.image), ("text", emb.text)) if x is not None}
        if "text" in mods:
            mods["text"] = mods["text"].copy()  # recaptions replace rows
        labels_in = pc.fill_null(samples.column("label"), -1).to_numpy().astype(np.int64)
        return _Batch(
            samples=samples, mods=mods, has={"image": emb.has_image, "text": emb.has_text},
            search={m: self.indexes[m].search(x, k) for m, x in mods.items()},
            gram={m: x @ x.T for m, x in mods.items()},
            ids=samples.column("id").to_pylist(), labels_in=labels_in, label_out=labels_in.copy(),
            vote_label=labels_in.copy(), text_out=[None] * n, acc={m: [] for m in mods},
        )

    def _neighbours(self, b: _Batch, i: int) -> dict[str, Neighbours]:
        """Item i's nearest accepted items per modality: the index's plus the batch's earlier ones."""
        k = max(self.cfg.k_gain, self.cfg.k_label)
        out: dict[str, Neighbours] = {}
        for m in b.mods:
            if not b.has[m][i]:
                continue
            sims, idx_rows = b.search[m]
            ok = idx_rows[i] >= 0
            s, rr = sims[i][ok], idx_rows[i][ok]
            index = self.indexes[m]
            lab = index.labels[rr] if len(rr) else np.zeros(0, np.int64)
            nid = [index.ids[j] for j in rr]
            if b.acc[m]:
                a = np.asarray(b.acc[m])
                s = np.concatenate([s, b.gram[m][i, a]])
                lab = np.concatenate([lab, b.vote_label[a]])
                nid = nid + [b.ids[j] for j in a]
            order = np.argsort(-s, kind="stable")[:k]
            out[m] = (s[order], lab[order], [nid[j] for j in order])
        return out

    def _decide(self, b: _Batch, i: int, trusted: bool) -> ItemRecord:
        """One item: its scores, then the rules in order -- caption, label, dedup, insert, budget."""
        c, r, notes = self.cfg, ItemRecord(), []
        nb = self._neighbours(b, i)
        prim, dmod = self.primary, self._dedup_modality()
        n_trusted = (len(self.indexes[prim]) + len(b.acc[prim])) if prim in b.mods else 0
        judged = trusted or n_trusted >= c.min_trusted
        pair = "image" in b.mods and "text" in b.mods and b.has["image"][i] and b.has["text"][i]

        if trusted and pair:
            r.align = float(b.mods["image"][i] @ b.mods["text"][i])
            self.boot_align_sketch.update(r.align)
        if not trusted and c.align_mode != "off" and pair:  # 1) caption alignment
            r.align = float(b.mods["image"][i] @ b.mods["text"][i])
            thr = self._align_threshold(judged)
            self.align_sketch.update(r.align)
            if rules.misaligned(r.align, thr):
                self._clean_caption(b, i, r, thr, notes)
        label = int(b.labels_in[i])
        if label >= 0 and prim in nb:  # 1b) label agreement with the nearest accepted neighbours
            s, lab, _ = nb[prim]
            vote = rules.label_vote(s[: c.k_label], lab[: c.k_label], label, c.vote_temperature)
            if vote is not None:
                r.agreement = vote.agreement
                if judged and not trusted and r.decision is not Decision.DROPPED_NOISY:
                    self._clean_label(b, i, r, vote, notes)
        if not judged and not trusted:
            notes.append(rules.note_unjudged(n_trusted, c.min_trusted))
            if not self._warned_unjudged:
                log.warning("the index holds fewer than %d accepted items: accepting items without label "
                            "cleaning until it does (give a trusted bootstrap source to avoid this)", c.min_trusted)
                self._warned_unjudged = True

        if r.decision is not Decision.DROPPED_NOISY:
            r.gain_m = {m: rules.gain_of(s, c.k_gain) for m, (s, _, _) in nb.items()}  # 2) gain
            r.gain = float(np.mean(list(r.gain_m.values()))) if r.gain_m else None
            if dmod in nb and len(nb[dmod][0]):  # 3) near-duplicates
                r.max_sim = float(nb[dmod][0][0])
                if rules.duplicate(r.max_sim, c.eps_dup):
                    r.decision, r.dup_of = Decision.DROPPED_DUPLICATE, nb[dmod][2][0]
                    r.reason = rules.reason_duplicate(r.dup_of, r.max_sim, c.eps_dup)
            if r.decision is not Decision.DROPPED_DUPLICATE and r.gain is not None:
                self._accept(b, i, r, trusted)  # 4) insert, 5) budget
        r.reason = rules.with_notes(notes, r.reason) if r.reason else rules.reason_accepted(trusted, notes, r.gain)
        return r

    def _clean_caption(self, b: _Batch, i: int, r: ItemRecord, thr: float, notes: list[str]) -> None:
        """A misaligned caption: keep the pair only if a recaption scores above the threshold."""
        assert r.align is not None
        new = self._recaption(b.samples, i)
        if new is not None:
            assert self.text_embed is not None
            tv = self.text_embed([new])[0]
            r.align_out = float(b.mods["image"][i] @ tv)
            if not rules.misaligned(r.align_out, thr):
                text = b.mods["text"]
                text[i] = tv
                g = text @ tv
                b.gram["text"][i, :] = g
                b.gram["text"][:, i] = g
                b.text_out[i] = r.text_out = new
                r.decision = Decision.RECAPTIONED
                notes.append(rules.note_recaptioned(r.align, thr, r.align_out))
                return
        r.decision = Decision.DROPPED_NOISY
        r.reason = rules.reason_misaligned(r.align, thr, rules.why_not_recaptioned(
            self.recaption is not None, new, r.align_out))

    def _clean_label(self, b: _Batch, i: int, r: ItemRecord, vote: rules.Vote, notes: list[str]) -> None:
        c, label = self.cfg, int(b.labels_in[i])
        verdict = rules.label_rule(vote, label, c.tau_noise, c.tau_relabel, c.label_action)
        r.label_noisy = verdict != rules.LABEL_OK
        if not r.label_noisy:
            return
        base = rules.label_base(label, vote.agreement, c.tau_noise)
        if verdict == rules.LABEL_RELABEL:
            b.label_out[i] = vote.best
            b.vote_label[i] = -1
            if r.decision is Decision.KEPT:
                r.decision = Decision.RELABELLED
            notes.append(rules.note_relabelled(base, vote.best, vote.share))
        else:
            r.decision = Decision.DROPPED_NOISY
            r.reason = rules.reason_label_dropped(base, vote.share, c.tau_relabel, c.label_action)

    def _accept(self, b: _Batch, i: int, r: ItemRecord, trusted: bool) -> None:
        """Insert a clean, non-duplicate item (selection is by sampling, not rejection); apply the budget."""
        c = self.cfg
        assert r.gain is not None
        r.gain_norm = rules.normalised_gain(r.gain, self.gain_sketch.quantile(c.gain_quantile))
        self.gain_sketch.update(r.gain)
        self.g_sum += r.gain_norm
        self.g_count += 1
        for m in b.mods:
            if b.has[m][i]:
                b.acc[m].append(i)
        if c.keep_rate > 0 and not trusted:
            r.keep_prob = rules.keep_probability(r.gain_norm, self.g_sum / self.g_count, c.keep_rate)
            if self.rng.random() >= r.keep_prob:
                r.decision = Decision.DROPPED_BY_BUDGET
                r.reason = rules.reason_budget(r.keep_prob, c.keep_rate, r.gain_norm)

    def _align_threshold(self, judged: bool) -> float:
        c = self.cfg
        if c.align_mode == "bootstrap" and self.boot_align_sketch.n:
            q = self.boot_align_sketch.quantile(c.align_bootstrap_quantile, lower=True)
            return float(q) if q is not None else c.align_threshold
        if c.align_mode == "adaptive" and judged and self.align_sketch.n >= c.align_warmup:
            q = self.align_sketch.quantile(c.align_drop_quantile)
            return float(q) if q is not None else c.align_threshold
        return c.align_threshold

    def _recaption(self, samples: pa.Table, i: int) -> str | None:
        if self.recaption is None:
            return None
        if self.text_embed is None:
            raise RuntimeError("a recaption hook needs the selector's text_embed function (the embedder's)")
        item = samples.slice(i, 1).to_pylist()[0]
        out = self.recaption([item])
        new = out[0] if out else None
        return new if isinstance(new, str) and new.strip() else None

    def _decisions_table(self, samples: pa.Table, seqs: np.ndarray, rows: list[ItemRecord],
                         labels_in: np.ndarray, label_out: np.ndarray) -> pa.Table:
        def opt_label(v: int) -> int | None:
            return None if v < 0 else int(v)

        n = len(rows)
        cols = {
            "id": samples.column("id"),
            "source": samples.column("source"),
            "partition": samples.column("partition"),
            "offset": samples.column("offset"),
            "seq": pa.array(seqs, pa.int64()),
            "decision": [r.decision.value for r in rows],
            "reason": [r.reason for r in rows],
            "label_in": [opt_label(v) for v in labels_in],
            "label_out": [opt_label(v) for v in label_out],
            "label_noisy": [r.label_noisy for r in rows],
            "label_agreement": [r.agreement for r in rows],
            "align": [r.align for r in rows],
            "align_out": [r.align_out for r in rows],
            "text_out": [r.text_out for r in rows],
            "gain": [r.gain for r in rows],
            "gain_image": [r.gain_m.get("image") for r in rows],
            "gain_text": [r.gain_m.get("text") for r in rows],
            "gain_norm": [r.gain_norm for r in rows],
            "max_sim": [r.max_sim for r in rows],
            "dup_of": [r.dup_of for r in rows],
            "keep_prob": [r.keep_prob for r in rows],
            "model": [self.model_id] * n,
            "config_fingerprint": [self.fingerprint] * n,
        }
        return pa.table({k: pa.array(v, DECISION_SCHEMA.field(k).type) if not isinstance(v, pa.ChunkedArray)
                         else v for k, v in cols.items()}, schema=DECISION_SCHEMA)
