"""The compiled selection loop equals the plainly written reference loop (tests/reference_selector.py)
on the demo stream and on generated streams: batch sizes, duplicates inside and across batches, label
noise, image-text pairs with misaligned captions and a recaption hook, align modes, the budget."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curator.config import SelectorConfig
from curator.demo_data import digits_stream
from curator.embed import Embeddings
from curator.embed.hashes import ContentHashes
from curator.records import Position
from curator.select import InfoGrowthSelector
from curator.select.rules import label_shares, label_vote, pairwise_sum
from curator.validate import validate_records
from tests.reference_selector import ReferenceSelector

#: a recaption hook the generated streams use: it proposes "fix:<id>" for every misaligned caption
PROPOSALS: dict[str, np.ndarray] = {}


def propose(items: list[dict]) -> list[str | None]:
    return [f"fix:{it['id']}" if int(it["id"][1:]) % 3 else None for it in items]


def text_embed(texts: list[str]) -> np.ndarray:
    return np.stack([PROPOSALS[t] for t in texts])


def _table(ids: list[str], labels: list[int | None], start: int, pairs: bool) -> pa.Table:
    recs = [{"id": i, "label": lab, **({"text": "a caption", "image": b"img"} if pairs else {"embedding": [1.0]})}
            for i, lab in zip(ids, labels, strict=True)]
    tbl, rej = validate_records(recs, [Position("s", 0, start + j) for j in range(len(ids))])
    assert not rej
    return tbl


def _run(cls: type, cfg: SelectorConfig, batches: list[tuple[pa.Table, Embeddings]], boot=None) -> tuple:
    sel = cls(cfg, text_embed=text_embed)
    out = []
    if boot is not None:
        out.append(sel.bootstrap(*boot).decisions)
    for tbl, emb in batches:
        out.append(sel.select(tbl, emb).decisions)
    return sel, pa.concat_tables(out)


def assert_same(a: tuple, b: tuple) -> None:
    (sa, da), (sb, db) = a, b
    assert da.num_rows == db.num_rows
    for col in da.column_names:
        assert da.column(col).to_pylist() == db.column(col).to_pylist(), col
    for name in ("gain_sketch", "align_sketch", "boot_align_sketch"):
        assert np.array_equal(getattr(sa, name).counts, getattr(sb, name).counts), name
    ea, eb = sa.evidence.state_dict(), sb.evidence.state_dict()
    for key in ea:
        assert ea[key] == eb[key], key
    assert sa.cal.state_dict() == sb.cal.state_dict()
    assert (sa.g_sum, sa.g_count, sa.seq) == (sb.g_sum, sb.g_count, sb.seq)
    assert sa.rng.bit_generator.state == sb.rng.bit_generator.state
    assert sa.hashes.ids == sb.hashes.ids and sa.hashes.exact == sb.hashes.exact
    assert np.array_equal(sa.hashes.near_items, sb.hashes.near_items)
    for ca, cb in zip(sa.shards, sb.shards, strict=True):
        for m, ia in ca.target.indexes.items():
            ib = cb.target.indexes[m]
            assert ia.ids == ib.ids and np.array_equal(ia.labels, ib.labels)


def test_equal_on_the_demo_stream_with_a_budget() -> None:
    ds = digits_stream(2)
    x = np.array([r["embedding"] for r in ds.stream], np.float32)
    xb = np.array([r["embedding"] for r in ds.bootstrap], np.float32)

    def emb(v: np.ndarray) -> Embeddings:
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return Embeddings(v.astype(np.float32), None, np.ones(len(v), bool), np.zeros(len(v), bool))

    def tbl(recs: list[dict], start: int) -> pa.Table:
        return validate_records(recs, [Position("s", 0, start + j) for j in range(len(recs))])[0]

    batches = [(tbl(ds.stream[s:s + 128], s), emb(x[s:s + 128])) for s in range(0, len(x), 128)]
    boot = (tbl(ds.bootstrap, 0), emb(xb))
    for cfg in (SelectorConfig(), SelectorConfig(keep_rate=0.6, seed=3, k_label=7, calibrate_every=50),
                SelectorConfig(relabel_abstain="keep", eps_dup=0.004, tau_noise=0.3)):
        fast, ref = _run(InfoGrowthSelector, cfg, batches, boot), _run(ReferenceSelector, cfg, batches, boot)
        assert_same(fast, ref)
        assert set(fast[1].column("decision").to_pylist()) >= {"kept", "relabelled", "dropped-duplicate"}
        assert fast[0].calibration_report() == ref[0].calibration_report()


@st.composite
def streams(draw: st.DrawFn) -> tuple:
    seed = draw(st.integers(0, 10_000))
    n = draw(st.integers(1, 220))
    pairs = draw(st.booleans())
    dup = draw(st.floats(0.0, 0.5))
    noise = draw(st.floats(0.0, 0.4))
    sizes = draw(st.lists(st.integers(1, 97), min_size=1, max_size=8))
    auto = st.just("auto")
    cfg = SelectorConfig(
        seed=seed, k_gain=draw(st.integers(1, 6)), k_label=draw(st.integers(1, 12)),
        tau_noise=draw(auto | st.floats(0.1, 0.6)), tau_relabel=draw(auto | st.floats(0.3, 0.9)),
        relabel_radius=draw(auto | st.floats(0.0, 2.0)), relabel_abstain=draw(st.sampled_from(["drop", "keep"])),
        calibrate_every=draw(st.integers(1, 60)), dup_false_rate=draw(st.sampled_from([0.001, 0.01])),
        vote_temperature=draw(st.sampled_from([0.0, 0.05, 0.2])),
        label_action=draw(st.sampled_from(["relabel", "discard"])), min_trusted=draw(st.integers(0, 30)),
        align_mode=draw(st.sampled_from(["fixed", "adaptive", "bootstrap", "off"])),
        align_threshold=draw(auto | st.floats(-0.2, 0.6)), align_warmup=draw(st.integers(0, 40)),
        recaption_hook="tests.test_fast_selector:propose" if draw(st.booleans()) else "",
        eps_dup=draw(st.sampled_from(["auto", 0.0, 0.01, 0.05])), keep_rate=draw(st.sampled_from([0.0, 0.3, 0.8])),
        dedup_on=draw(st.sampled_from(["auto", "image", "text"])), hash_dedup=draw(st.booleans()),
        phash_max_dist=draw(st.sampled_from([-1, 0, 4, 8])))
    return seed, n, pairs, dup, noise, sizes, cfg, draw(st.booleans()), draw(st.booleans())


def content_hashes(rng: np.random.Generator, n: int, src: np.ndarray) -> ContentHashes:
    """Hashes as an embedder gives them: a copy (src >= 0) has its source's image key or only its pixel
    key, or is a near copy (a few perceptual bits flipped); some pictures are too flat for a phash."""
    h = ContentHashes.empty(n)
    h.image[:] = rng.integers(1, 2**62, n)
    h.pixels[:] = np.where(rng.random(n) < 0.5, rng.integers(1, 2**62, n), 0)
    h.phash[:] = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    h.phash_ok[:] = rng.random(n) < 0.9
    h.text[:] = rng.integers(1, 2**62, n)
    for i in np.flatnonzero(src >= 0):
        j, kind = src[i], rng.integers(3)
        if kind == 0:
            h.image[i], h.pixels[i], h.text[i] = h.image[j], h.pixels[j], h.text[j]
        elif kind == 1 and h.pixels[j]:
            h.pixels[i] = h.pixels[j]
        flips = rng.choice(64, rng.integers(0, 7), replace=False)
        h.phash[i] = h.phash[j] ^ np.bitwise_or.reduce(np.left_shift(1, flips, dtype=np.int64), initial=0)
    return h


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_equal_on_generated_streams(spec: tuple) -> None:
    seed, n, pairs, dup, noise, sizes, cfg, with_boot, hashed = spec
    rng = np.random.default_rng(seed)
    d = 8
    centres = rng.normal(size=(5, d))
    lab = rng.integers(0, 5, n)
    img = centres[lab] + rng.normal(0, 0.5, (n, d))
    copies = rng.random(n) < dup  # near-duplicates of earlier items (some inside the same batch)
    src = np.full(n, -1)
    for i in np.flatnonzero(copies):
        if i:
            src[i] = rng.integers(0, i)
            img[i] = img[src[i]] + rng.normal(0, 1e-3, d) * (rng.random() < 0.5)  # half of them exact
    hashes = content_hashes(rng, n, src)
    given_lab = np.where(rng.random(n) < noise, rng.integers(0, 5, n), lab)
    unlabelled = rng.random(n) < 0.1
    img = (img / np.linalg.norm(img, axis=1, keepdims=True)).astype(np.float32)
    txt = img + rng.normal(0, 0.6, (n, d)) * (rng.random((n, 1)) < 0.3)  # some captions misaligned
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    ids = [f"i{j}" for j in range(n)]
    for j in range(n):
        PROPOSALS[f"fix:i{j}"] = img[j] if j % 2 else -img[j]  # half the proposals score well
    batches, s, b = [], 0, 0
    while s < n:
        m = min(sizes[b % len(sizes)], n - s)
        sl = slice(s, s + m)
        labels = [None if unlabelled[j] else int(given_lab[j]) for j in range(s, s + m)]
        has = np.ones(m, bool)
        emb = Embeddings(img[sl], txt[sl] if pairs else None, has, has if pairs else np.zeros(m, bool),
                         hashes=hashes.take(np.arange(s, s + m)) if hashed else None)
        batches.append((_table(ids[sl], labels, s, pairs), emb))
        s, b = s + m, b + 1
    boot = None
    if with_boot:
        bx = (centres[np.arange(10) % 5] + rng.normal(0, 0.5, (10, d)))
        bx = (bx / np.linalg.norm(bx, axis=1, keepdims=True)).astype(np.float32)
        bt = np.ascontiguousarray(bx[::-1]) if pairs else None
        boot = (_table([f"b{j}" for j in range(10)], [int(j % 5) for j in range(10)], 10_000, pairs),
                Embeddings(bx, bt, np.ones(10, bool), np.ones(10, bool) if pairs else np.zeros(10, bool)))
    assert_same(_run(InfoGrowthSelector, cfg, batches, boot), _run(ReferenceSelector, cfg, batches, boot))


def test_pairwise_sum_and_the_vote_match_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in [0, 1, 7, 8, 9, 15, 16, 127, 128, 129, 300, 1025]:
        a = np.exp(rng.normal(size=n) * 3)
        assert pairwise_sum(a, 0, n) == a.sum()
    sims = np.array([0.9, 0.8, 0.8, 0.5], np.float32)
    ok, agreement, best, share = label_vote(sims, np.array([2, 1, 1, -1]), 4, 2, 0.0)
    w = np.array([0.9, 0.8, 0.8], np.float32).astype(np.float64)
    assert ok and best == 1 and agreement == w[0] / w.sum() and share == (w[1] + w[2]) / w.sum()
    lab, shr = np.empty(4, np.int64), np.empty(4)
    assert label_shares(sims, np.array([2, 1, 1, -1]), 4, 0.0, lab, shr) == 2
    assert lab[:2].tolist() == [1, 2] and shr[:2].tolist() == [share, agreement]
    assert not label_vote(sims, np.array([-1, -1, -1, -1]), 4, 0, 0.05)[0]
