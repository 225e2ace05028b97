"""InfoGrowth online selection: clean -> gain -> dedup -> insert -> sample, in stream order.

ALGORITHMS.md section 1 is the spec. Every decision depends only on the items accepted
before it (the index plus the earlier accepted items of the same batch) and on state
updated item by item (quantile sketches, the budget RNG), so decisions do not depend
on where batch boundaries fall: a Kafka run and a file run of the same stream agree,
and a replay after a crash reproduces the same decisions.
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

from curator.config import IndexConfig, SelectorConfig
from curator.embed import Embeddings
from curator.index import VectorIndex
from curator.quantile import StreamingQuantile
from curator.records import DECISION_SCHEMA, KEPT_DECISIONS, Decision, kept_schema

log = logging.getLogger(__name__)

#: (samples, indices of items whose caption failed alignment) -> new captions (None = no proposal)
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
class _Row:
    """Per-item working values; turned into a decision record."""

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


def _vote_weights(sims: np.ndarray, temperature: float) -> np.ndarray:
    """Neighbour vote weights: softmax(sim / T), or the clipped similarity itself when T = 0.

    With raw CLIP or pixel cosines every neighbour sits at 0.7-0.95, so linear weights are
    nearly uniform; a temperature lets the closest neighbours decide.
    """
    s = sims.astype(np.float64)
    if temperature > 0:
        return np.exp((s - s.max()) / temperature)
    return np.maximum(s, 1e-6)


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
        n = samples.num_rows
        if emb.errors:
            raise ValueError("selector got rows that failed embedding; drop emb.errors rows first")
        if len(emb) != n:
            raise ValueError(f"selector got {n} samples but {len(emb)} embeddings")
        self._ensure_indexes(emb)
        c = self.cfg
        K = max(c.k_gain, c.k_label)
        mods = {m: x for m, x in (("image", emb.image), ("text", emb.text)) if x is not None}
        has = {"image": emb.has_image, "text": emb.has_text}
        text_vecs = None if emb.text is None else emb.text.copy()  # recaptions replace rows
        if text_vecs is not None:
            mods["text"] = text_vecs
        prim, dmod = self.primary, self._dedup_modality()
        search = {m: self.indexes[m].search(x, K) for m, x in mods.items()}
        gram = {m: x @ x.T for m, x in mods.items()}  # in-batch similarities, once per batch
        labels_in = pc.fill_null(samples.column("label"), -1).to_numpy().astype(np.int64)
        ids = samples.column("id").to_pylist()
        label_out = labels_in.copy()
        # labels that may vote: a corrected label never does, so the cleaner cannot confirm itself
        vote_label = labels_in.copy()
        text_out: list[str | None] = [None] * n
        # accepted items of this batch, per modality: row numbers (order of insertion)
        acc: dict[str, list[int]] = {m: [] for m in mods}
        rows: list[_Row] = []
        seqs = np.arange(self.seq, self.seq + n, dtype=np.int64)
        for i in range(n):
            r = _Row()
            # neighbours per modality: the index's plus this batch's earlier accepted items
            nb: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}
            for m in mods:
                if not has[m][i]:
                    continue
                sims, idx_rows = search[m]
                s = sims[i]
                ok = idx_rows[i] >= 0
                s, rr = s[ok], idx_rows[i][ok]
                index = self.indexes[m]
                lab = index.labels[rr] if len(rr) else np.zeros(0, np.int64)
                nid = [index.ids[j] for j in rr]
                if acc[m]:
                    a = np.asarray(acc[m])
                    s = np.concatenate([s, gram[m][i, a]])
                    lab = np.concatenate([lab, vote_label[a]])
                    nid = nid + [ids[j] for j in a]
                order = np.argsort(-s, kind="stable")[:K]
                nb[m] = (s[order], lab[order], [nid[j] for j in order])
            n_trusted = (len(self.indexes[prim]) + len(acc[prim])) if prim in mods else 0
            judged = trusted or n_trusted >= c.min_trusted
            notes: list[str] = []

            if trusted and has["image"][i] and has["text"][i] and emb.image is not None and text_vecs is not None:
                r.align = float(emb.image[i] @ text_vecs[i])
                self.boot_align_sketch.update(r.align)
            # 1) clean: caption alignment
            if not trusted and c.align_mode != "off" and has["image"][i] and has["text"][i] \
                    and emb.image is not None and text_vecs is not None:
                a_ = float(emb.image[i] @ text_vecs[i])
                r.align = a_
                thr = self._align_threshold(judged)
                self.align_sketch.update(a_)
                if a_ < thr:
                    new = self._recaption(samples, i)
                    if new is not None:
                        tv = self.text_embed([new])[0]
                        r.align_out = float(emb.image[i] @ tv)
                        if r.align_out >= thr:
                            text_vecs[i] = tv
                            g = text_vecs @ tv
                            gram["text"][i, :] = g
                            gram["text"][:, i] = g
                            text_out[i] = r.text_out = new
                            r.decision = Decision.RECAPTIONED
                            notes.append(f"caption misaligned (cos {a_:.3f} < {thr:.3f}); recaption scores "
                                         f"{r.align_out:.3f}")
                    if r.decision is not Decision.RECAPTIONED:
                        r.decision = Decision.DROPPED_NOISY
                        why = "no recaption hook" if self.recaption is None else (
                            "no recaption proposed" if new is None else f"recaption scores {r.align_out:.3f}")
                        r.reason = f"caption misaligned: cos(image, text) {a_:.3f} < {thr:.3f}; {why}"
            # 1b) clean: label agreement with the nearest accepted neighbours
            if labels_in[i] >= 0 and prim in nb:
                s, lab, _ = nb[prim]
                s, lab = s[: c.k_label], lab[: c.k_label]
                voted = lab >= 0
                if voted.any():
                    w = _vote_weights(s[voted], c.vote_temperature)
                    lv = lab[voted]
                    total = w.sum()
                    r.agreement = float(w[lv == labels_in[i]].sum() / total)
                    if judged and not trusted and r.decision is not Decision.DROPPED_NOISY:
                        r.label_noisy = r.agreement < c.tau_noise
                        if r.label_noisy:
                            uniq = np.unique(lv)
                            votes = np.array([w[lv == u].sum() for u in uniq])
                            best = int(uniq[int(np.argmax(votes))])
                            share = float(votes.max() / total)
                            base = (f"label {labels_in[i]} disagrees with neighbours "
                                    f"(agreement {r.agreement:.2f} < {c.tau_noise})")
                            if c.label_action == "relabel" and share >= c.tau_relabel and best != labels_in[i]:
                                label_out[i] = best
                                vote_label[i] = -1
                                r.decision = Decision.RELABELLED if r.decision is Decision.KEPT else r.decision
                                notes.append(f"{base}; corrected to {best} (share {share:.2f})")
                            else:
                                r.decision = Decision.DROPPED_NOISY
                                r.reason = (f"{base}; no confident majority (share {share:.2f} < "
                                            f"{c.tau_relabel})" if c.label_action == "relabel"
                                            else f"{base}; label_action=discard")
            if not judged and not trusted:
                notes.append(f"unjudged: only {n_trusted} accepted items (< selector.min_trusted "
                             f"{c.min_trusted}); give a trusted bootstrap")
                if not self._warned_unjudged:
                    log.warning("the index holds fewer than %d accepted items: accepting items without label "
                                "cleaning until it does (give a trusted bootstrap source to avoid this)",
                                c.min_trusted)
                    self._warned_unjudged = True

            if r.decision is not Decision.DROPPED_NOISY:
                # 2) gain per modality, averaged; 3) near-duplicates
                for m, (s, _, _) in nb.items():
                    top = s[: c.k_gain]
                    r.gain_m[m] = float(np.mean(1.0 - top)) if len(top) else 1.0
                for m in mods:
                    if has[m][i] and m not in r.gain_m:
                        r.gain_m[m] = 1.0
                r.gain = float(np.mean(list(r.gain_m.values()))) if r.gain_m else None
                if dmod in nb and len(nb[dmod][0]):
                    r.max_sim = float(nb[dmod][0][0])
                    if r.max_sim >= 1.0 - c.eps_dup:
                        r.decision = Decision.DROPPED_DUPLICATE
                        r.dup_of = nb[dmod][2][0]
                        r.reason = f"near-duplicate of {r.dup_of} (cos {r.max_sim:.4f} >= {1 - c.eps_dup:.4f})"
                if r.decision is not Decision.DROPPED_DUPLICATE and r.gain is not None:
                    q = self.gain_sketch.quantile(c.gain_quantile)
                    r.gain_norm = 1.0 if not q else min(1.0, r.gain / q)
                    self.gain_sketch.update(r.gain)
                    self.g_sum += r.gain_norm
                    self.g_count += 1
                    # 4) insert every clean, non-duplicate item (selection is by sampling, not rejection)
                    for m in mods:
                        if has[m][i]:
                            acc[m].append(i)
                    # 5) sample under a storage budget
                    if c.keep_rate > 0 and not trusted:
                        mean_g = self.g_sum / self.g_count
                        r.keep_prob = min(1.0, r.gain_norm * c.keep_rate / max(mean_g, 1e-9))
                        if self.rng.random() >= r.keep_prob:
                            r.decision = Decision.DROPPED_BY_BUDGET
                            r.reason = (f"storage budget: keep probability {r.keep_prob:.3f} "
                                        f"(keep_rate {c.keep_rate}, normalised gain {r.gain_norm:.3f})")
            if not r.reason:
                head = "trusted bootstrap" if trusted else "clean"
                gain = f"gain {r.gain:.4f}" if r.gain is not None else "no gain"
                r.reason = "; ".join([head, *notes, gain])
            elif notes:
                r.reason = "; ".join([*notes, r.reason])
            rows.append(r)

        for m, rows_m in acc.items():
            if rows_m:
                a = np.asarray(rows_m)
                vecs = mods[m][a]
                self.indexes[m].add(vecs, [ids[j] for j in a], vote_label[a])
        self.seq += n
        for r in rows:
            self.counts[r.decision.value] += 1
        kept = np.array([i for i, r in enumerate(rows) if r.decision in KEPT_DECISIONS], dtype=np.int64)
        dec = self._decisions_table(samples, seqs, rows, labels_in, label_out)
        return Selection(
            decisions=dec,
            kept_rows=kept,
            label_out=label_out,
            text_out=text_out,
            text_emb_out=text_vecs,
            gain=np.array([np.nan if r.gain is None else r.gain for r in rows], np.float32),
            gain_norm=np.array([np.nan if r.gain_norm is None else r.gain_norm for r in rows], np.float32),
        )

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

    def _decisions_table(self, samples: pa.Table, seqs: np.ndarray, rows: list[_Row],
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


def kept_table(samples: pa.Table, emb: Embeddings, sel: Selection, store_images: bool = True) -> pa.Table:
    """The curated rows of a batch: corrected labels and captions, with their embeddings."""
    rows = sel.kept_rows
    primary = emb.image if emb.image is not None else sel.text_emb_out
    if primary is None:
        raise ValueError("kept_table needs at least one embedding modality")
    has_text_col = emb.image is not None and sel.text_emb_out is not None
    schema = kept_schema(primary.shape[1], sel.text_emb_out.shape[1] if has_text_col else None)
    sub = samples.take(pa.array(rows, pa.int64()))
    dec = sel.decisions.take(pa.array(rows, pa.int64()))
    texts = sub.column("text").to_pylist()
    texts = [sel.text_out[j] or t for j, t in zip(rows, texts, strict=True)]
    lab_out = sel.label_out[rows]
    d = primary.shape[1]

    def fixed(x: np.ndarray, dim: int) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(x, np.float32).ravel(), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, dim)

    cols: dict[str, Any] = {
        "id": sub.column("id"),
        "image": sub.column("image") if store_images else pa.nulls(len(rows), pa.binary()),
        "image_uri": sub.column("image_uri"),
        "text": pa.array(texts, pa.string()),
        "label": pa.array([None if v < 0 else int(v) for v in lab_out], pa.int64()),
        "label_original": sub.column("label"),
        "metadata": sub.column("metadata"),
        "source": sub.column("source"),
        "partition": sub.column("partition"),
        "offset": sub.column("offset"),
        "seq": dec.column("seq"),
        "decision": dec.column("decision"),
        "gain": dec.column("gain"),
        "gain_norm": dec.column("gain_norm"),
        "embedding": fixed(primary[rows].reshape(len(rows), d), d),
    }
    if has_text_col:
        cols["text_embedding"] = fixed(sel.text_emb_out[rows], sel.text_emb_out.shape[1])
    return pa.table(cols, schema=schema)
