"""The oracle: the selector's per-item loop written plainly in Python (the rules of docs/concepts.md).

`ReferenceSelector` is `InfoGrowthSelector` with its compiled loop (`curator.select.kernel`)
replaced by this one: neighbours by concatenating the index's with the batch's earlier accepted
items and sorting, the quantile sketches through `StreamingQuantile`, one RNG draw at a time. The
batch-level work around it (searching, the decisions table, the reasons) is the selector's own.
"""

from __future__ import annotations

import math

import numpy as np

import curator.select.calibrate as cal
import curator.select.codes as codes
from curator.select.hashdup import RULE_NEAR
from curator.select.loop_data import Scores
from curator.select.outcome import MODALITIES, BatchView
from curator.select.selector import InfoGrowthSelector


def _bin(v: float, lo: float, hi: float, bins: int) -> int:
    return min(max(int(math.floor((v - lo) / (hi - lo) * bins)), 0), bins - 1)


class ReferenceSelector(InfoGrowthSelector):
    def _neighbours(self, v: BatchView, i: int, m: int, acc: list[int]) -> tuple[np.ndarray, np.ndarray, list]:
        k = max(self.cfg.k_gain, self.cfg.k_label)
        ok = v.irow[m, i] >= 0
        s = v.isims[m, i][ok]
        lab = v.ilab[m, i][ok]
        src = [(0, int(r)) for r in v.irow[m, i][ok]]
        acc = [j for j in acc if v.gram[m, i, j] > -np.inf]  # on shards this item does not probe: not seen
        if acc:
            a = np.asarray(acc)
            s = np.concatenate([s, v.gram[m, i, a]])
            lab = np.concatenate([lab, v.vote_label[a]])
            src += [(1, int(j)) for j in a]
        order = np.argsort(-s, kind="stable")[:k]
        return s[order], lab[order], [src[j] for j in order]

    def _hash_copy(self, v: BatchView, s: Scores, i: int, nb: dict) -> bool:
        """The hash rules: the best of the table's match and the batch's earlier accepted matches, by
        (near rather than exact, distance, earliest: the table's items come before the batch's); a near
        match counts only while the perceptual rule is on (`near_ok`)."""
        h = v.hashes
        if h is None:
            return False
        found = [(h.hit_rule[i] == RULE_NEAR, int(h.hit_dist[i]), -1, codes.DUP_HASHED, int(h.hit_row[i]),
                  int(h.hit_rule[i]))] if h.hit_rule[i] else []
        found += [(h.crule[c] == RULE_NEAR, int(h.cdist[c]), int(h.crow[c]), 1, int(h.crow[c]), int(h.crule[c]))
                  for c in range(h.cptr[i], h.cptr[i + 1]) if v.inserted[h.crow[c]]]
        if not found:
            return False
        _, dist, _, src, row, rule = min(found)
        if rule == RULE_NEAR and not self.near_ok:
            return False
        s.decision[i], s.why[i] = codes.DROPPED_DUPLICATE, codes.WHY_HASH
        s.dup_src[i], s.dup_row[i], s.hash_rule[i], s.hash_dist[i] = src, row, rule, dist
        return True

    def _align_threshold(self, judged: bool) -> float:
        """The caption threshold in force now (NaN: not calibrated yet, captions pass)."""
        c, fixed = self.cfg, self.cal.values["align_threshold"]
        if c.align_mode == "bootstrap" and self.boot_align_sketch.n:
            q = self.boot_align_sketch.quantile(c.align_bootstrap_quantile, lower=True)
            return float(q) if q is not None else fixed
        if c.align_mode == "adaptive" and judged and self.align_sketch.n >= c.align_warmup:
            q = self.align_sketch.quantile(c.align_drop_quantile)
            return float(q) if q is not None else fixed
        return fixed

    def _resolve(self, v: BatchView, trusted: bool) -> Scores:
        c, n = self.cfg, len(v.ids)
        s = Scores.empty(n)
        acc: list[list[int]] = [[], []]
        ev = self.evidence
        for i in range(n):
            self._begin_item(v, s, i, trusted)
            nb = {m: self._neighbours(v, i, m, acc[m]) for m in range(2) if v.present[m] and v.has[m, i]}
            if self._hash_copy(v, s, i, nb):
                continue
            val = self.cal.values
            prim, dmod = v.prim, v.dmod
            n_trusted = int(v.n_index[prim]) + len(acc[prim]) if prim >= 0 and v.present[prim] else 0
            judged = trusted or n_trusted >= c.min_trusted
            dec, why = codes.KEPT, codes.WHY_NONE
            if v.pair[i] and trusted:
                self.boot_align_sketch.update(v.align[i])
            if v.pair[i] and not trusted and c.align_mode != "off":
                ev.sums[cal.STREAM_ALIGN] += v.align[i]
                ev.sums[cal.STREAM_PAIRS] += 1.0
                thr = self._align_threshold(judged)
                s.thr[i] = thr
                if v.align[i] < thr:
                    if self.recaption is not None:
                        self._recaption_item(v, s, i)
                    if s.recap[i] == codes.RECAP_ACCEPTED:
                        dec, s.recap_note[i] = codes.RECAPTIONED, True
                    else:
                        dec, why = codes.DROPPED_NOISY, codes.WHY_MISALIGNED
                self.align_sketch.update(v.align[i])
            if v.pair[i] and (trusted or not judged or self.collecting()[1]):
                ev.sums[cal.CLEAN_ALIGN] += v.align[i]
                ev.sums[cal.CLEAN_ALIGN2] += v.align[i] * v.align[i]
                ev.sums[cal.CLEAN_PAIRS] += 1.0
                if v.cross_ok[i]:
                    ev.cross += (v.cross[i], v.cross[i] * v.cross[i], 1.0)
            label = int(v.labels_in[i])
            if label >= 0 and prim in nb:
                sims, lab, _ = nb[prim]
                voted = lab[: c.k_label] >= 0
                if voted.any():
                    w = sims[: c.k_label][voted].astype(np.float64)
                    w = np.array([math.exp((x - w.max()) / c.vote_temperature) for x in w]) \
                        if c.vote_temperature > 0 else np.maximum(w, 1e-6)
                    lv = lab[: c.k_label][voted]
                    total = w.sum()
                    uniq = np.unique(lv)
                    votes = np.array([w[lv == u].sum() for u in uniq])
                    s.agreement[i] = w[lv == label].sum() / total
                    s.best[i], s.share[i] = int(uniq[int(np.argmax(votes))]), votes.max() / total
                    if judged and not trusted and math.isnan(val["tau_noise"]):
                        s.unjudged[i], s.n_trusted[i] = True, codes.UNJUDGED_CALIBRATING
                    elif judged and not trusted and dec != codes.DROPPED_NOISY:
                        if _bin(s.agreement[i], 0.0, 1.0, cal.AGR_BINS) == 0:
                            ev.sums[cal.STREAM_LOW] += 1.0
                        ev.sums[cal.STREAM_VOTES] += 1.0
                        noisy = s.agreement[i] < val["tau_noise"]
                        s.label_noisy[i] = int(noisy)
                        s.nn_dist[i] = 1.0 - float(sims[0])
                        strong = s.share[i] >= val["tau_relabel"] and s.best[i] != label \
                            and s.nn_dist[i] <= val["relabel_radius"]
                        if noisy and c.label_action == "relabel" and strong:
                            v.label_out[i], v.vote_label[i], s.relabel_note[i] = s.best[i], -1, True
                            dec = codes.RELABELLED if dec == codes.KEPT else dec
                        elif noisy and c.label_action == "relabel" and s.agreement[i] >= val["tau_drop"]:
                            v.vote_label[i], s.abstain_note[i] = -1, True
                        elif noisy:
                            dec, why = codes.DROPPED_NOISY, codes.WHY_LABEL
                            s.abstain_note[i] = c.label_action == "relabel"
            if not judged and not trusted:
                s.unjudged[i], s.n_trusted[i] = True, n_trusted
            if dec == codes.DROPPED_NOISY:
                s.decision[i], s.why[i] = dec, why
                continue
            for m, (sims, _, _) in nb.items():
                top = sims[: c.k_gain]
                s.gain_m[m, i] = float(np.mean(1.0 - top)) if len(top) else 1.0
            if nb:
                s.gain[i] = float(np.mean([s.gain_m[m, i] for m in nb]))
            if dmod in nb and len(nb[dmod][0]):
                s.max_sim[i] = float(nb[dmod][0][0])
                if s.max_sim[i] >= 1.0 - val["eps_dup"]:
                    dec, why = codes.DROPPED_DUPLICATE, codes.WHY_DUPLICATE
                    s.dup_src[i], s.dup_row[i] = nb[dmod][2][0]
            if dec != codes.DROPPED_DUPLICATE and nb:
                if dmod in nb and len(nb[dmod][0]):  # the windowed sketch of nearest-neighbour distances
                    d = 1.0 - s.max_sim[i]
                    b = 0 if not d > 0 else _bin(math.log10(d), cal.NN_LO, cal.NN_HI, cal.NN_BINS)
                    ev.nn[ev.nn_meta[0], b] += 1
                    ev.nn_meta[1] += 1
                    if ev.nn_meta[1] >= cal.NN_WINDOW:
                        ev.nn_meta[0] = 1 - ev.nn_meta[0]
                        ev.nn[ev.nn_meta[0]] = 0
                        ev.nn_meta[1] = 0
                q = self.gain_sketch.quantile(c.gain_quantile)
                s.gain_norm[i] = 1.0 if not q else min(1.0, s.gain[i] / q)
                self.gain_sketch.update(s.gain[i])
                self.g_sum += s.gain_norm[i]
                self.g_count += 1
                v.inserted[i] = True
                for m in range(2):
                    if v.present[m] and v.has[m, i]:
                        acc[m].append(i)
                if c.keep_rate > 0 and not trusted:
                    s.keep_prob[i] = min(1.0, s.gain_norm[i] * c.keep_rate / max(self.g_sum / self.g_count, 1e-9))
                    if self.rng.random() >= s.keep_prob[i]:
                        dec, why = codes.DROPPED_BY_BUDGET, codes.WHY_BUDGET
            s.decision[i], s.why[i] = dec, why
        for m in range(2):
            v.n_acc[m] = len(acc[m])
            v.acc[m, : len(acc[m])] = acc[m]
        return s


__all__ = ["MODALITIES", "ReferenceSelector"]
