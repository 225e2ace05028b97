"""The selection rules as small pure functions over one item's scores (compiled with numba).

The selector first gathers an item's scores -- alignment, the neighbour vote, gain, nearest
similarity -- and each rule below turns scores into a verdict; `curator.select.reasons` turns a
verdict into the text a person reads. Nothing here holds state, so each rule is testable alone and
the selector's loop only orders them (in the order docs/concepts.md gives). The same compiled functions serve
the fast loop (`curator.select.kernel`) and the plainly written reference loop the tests keep as
the oracle, so the two cannot differ in arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: label_rule verdicts (ABSTAIN: noisy, but the evidence for a correction is weak)
LABEL_OK, LABEL_RELABEL, LABEL_DROP, LABEL_ABSTAIN = 0, 1, 2, 3


@njit(cache=True)
def _block_sum(a: np.ndarray, start: int, n: int) -> float:
    """numpy's pairwise summation of up to 128 values (its unrolled base case)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[start + i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
        r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
        i = 8
        while i < n - (n % 8):
            r0 += a[start + i]
            r1 += a[start + i + 1]
            r2 += a[start + i + 2]
            r3 += a[start + i + 3]
            r4 += a[start + i + 4]
            r5 += a[start + i + 5]
            r6 += a[start + i + 6]
            r7 += a[start + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[start + i]
            i += 1
        return res
    return 0.0  # not reached: callers split longer runs


@njit(cache=True)
def pairwise_sum(a: np.ndarray, start: int, n: int) -> float:
    """numpy's pairwise summation of a[start:start+n] (the same additions in the same order, so the
    same float result): halves rounded to a multiple of 8 down to runs of 128, summed bottom-up
    without recursion (compiled recursion does not survive numba's cache)."""
    if n <= 128:
        return _block_sum(a, start, n)
    # post-order walk of numpy's recursion tree with an explicit stack
    st_s = np.empty(64, np.int64)
    st_n = np.empty(64, np.int64)
    st_stage = np.empty(64, np.int64)
    st_left = np.empty(64, np.float64)
    top = 0
    st_s[0], st_n[0], st_stage[0] = start, n, 0
    result = 0.0
    while top >= 0:
        s0, n0, stage = st_s[top], st_n[top], st_stage[top]
        if n0 <= 128:
            result = _block_sum(a, s0, n0)
            top -= 1
            continue
        n2 = n0 // 2
        n2 -= n2 % 8
        if stage == 0:  # descend left
            st_stage[top] = 1
            top += 1
            st_s[top], st_n[top], st_stage[top] = s0, n2, 0
        elif stage == 1:  # left done: keep it, descend right
            st_left[top] = result
            st_stage[top] = 2
            top += 1
            st_s[top], st_n[top], st_stage[top] = s0 + n2, n0 - n2, 0
        else:  # both done
            result = st_left[top] + result
            top -= 1
    return result


@njit(cache=True)
def label_shares(sims: np.ndarray, labels: np.ndarray, n: int, temperature: float, out_labels: np.ndarray,
                 out_shares: np.ndarray) -> int:
    """The similarity-weighted vote of the first `n` neighbours that carry a label (-1: none, or a
    corrected one): every label voted for (ascending) and its share of the weight, in `out_*`;
    returns how many. Weights are softmax(sim / T), or the clipped similarity when T = 0: with raw
    CLIP or pixel cosines every neighbour sits at 0.7-0.95, so linear weights are nearly uniform,
    and a temperature lets the closest neighbours decide."""
    m = 0
    s = np.empty(n, np.float64)
    lv = np.empty(n, np.int64)
    for j in range(n):
        if labels[j] >= 0:
            s[m] = np.float64(sims[j])
            lv[m] = labels[j]
            m += 1
    if m == 0:
        return 0
    w = np.empty(m, np.float64)
    if temperature > 0:
        smax = s[0]
        for j in range(1, m):
            if s[j] > smax:
                smax = s[j]
        for j in range(m):
            w[j] = math.exp((s[j] - smax) / temperature)
    else:
        for j in range(m):
            w[j] = max(s[j], 1e-6)
    total = pairwise_sum(w, 0, m)
    order = np.argsort(lv[:m], kind="mergesort")
    sub = np.empty(m, np.float64)
    u_count = 0
    k = 0
    while k < m:
        u = lv[order[k]]
        c = 0
        for j in range(m):  # this label's weights, in neighbour order (as w[lv == u].sum())
            if lv[j] == u:
                sub[c] = w[j]
                c += 1
        out_labels[u_count] = u
        out_shares[u_count] = pairwise_sum(sub, 0, c) / total
        u_count += 1
        while k < m and lv[order[k]] == u:
            k += 1
    return u_count


@njit(cache=True)
def label_vote(sims: np.ndarray, labels: np.ndarray, n: int, label: int,
               temperature: float) -> tuple[bool, float, int, float]:
    """(any voted, share of the weight on `label`, the label with the most weight -- the smallest on
    a tie --, its share), from `label_shares`."""
    lab = np.empty(max(n, 1), np.int64)
    shr = np.empty(max(n, 1), np.float64)
    m = label_shares(sims, labels, n, temperature, lab, shr)
    if m == 0:
        return False, 0.0, -1, 0.0
    agreement = 0.0
    best, best_share = -1, -1.0
    for j in range(m):
        if shr[j] > best_share:
            best, best_share = lab[j], shr[j]
        if lab[j] == label:
            agreement = shr[j]
    return True, agreement, best, best_share


@njit(cache=True)
def gain_of(sims: np.ndarray, n: int, k_gain: int) -> float:
    """Mean cosine distance to the k nearest accepted items (1 with no neighbour yet); float32 as numpy."""
    k = min(n, k_gain)
    if k == 0:
        return 1.0
    acc = np.float32(0.0)
    one = np.float32(1.0)
    for j in range(k):
        acc = np.float32(acc + np.float32(one - sims[j]))
    return float(np.float32(acc / np.float32(k)))


@njit(cache=True)
def normalised_gain(gain: float, has_q: bool, q: float) -> float:
    """min(1, gain / q) with q the streaming gain quantile (1 before there is one)."""
    if not has_q or q == 0.0:
        return 1.0
    return min(1.0, gain / q)


@njit(cache=True)
def misaligned(align: float, threshold: float) -> bool:
    """Caption cleaning: cos(image, text) below the threshold in force."""
    return align < threshold


@njit(cache=True)
def label_rule(agreement: float, best: int, share: float, label: int, tau_noise: float, tau_relabel: float,
               relabel: bool, nn_dist: float, radius: float) -> int:
    """Label cleaning: keep an agreeing label; correct a disagreeing one only on strong evidence --
    a majority share of at least `tau_relabel` from neighbours whose nearest is within `radius`
    (when `relabel`) --, else abstain (the selector drops or keeps it flagged); `discard`: drop."""
    if agreement >= tau_noise:
        return LABEL_OK
    if not relabel:
        return LABEL_DROP
    if share >= tau_relabel and best != label and nn_dist <= radius:
        return LABEL_RELABEL
    return LABEL_ABSTAIN


@njit(cache=True)
def duplicate(max_sim: float, eps_dup: float) -> bool:
    """Near-duplicate of an accepted item (SemDeDup's rule, online)."""
    return max_sim >= 1.0 - eps_dup


@njit(cache=True)
def keep_probability(gain_norm: float, mean_g: float, keep_rate: float) -> float:
    """Storage budget: keep with probability g * keep_rate / mean(g), at most 1."""
    return min(1.0, gain_norm * keep_rate / max(mean_g, 1e-9))
