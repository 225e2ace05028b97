"""The hash rules for duplicates (curator.select.hashdup): exact copies are always caught, whatever the
model and the calibrated eps_dup; JPEG re-encodes and resizes by their perceptual hash; real photos
(tiles of scikit-learn's sample photographs) that merely look alike are not."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from curator.config import SelectorConfig, load_config
from curator.embed import Embeddings
from curator.embed.hashes import ContentHashes, bytes_key, phash, pixels_key, text_key, thumbnails, vector_key
from curator.records import Position
from curator.sample_photos import COPY_KINDS, decode, encode, photo_tiles
from curator.select import InfoGrowthSelector
from curator.select.hashdup import RULE_CONTENT, RULE_NEAR, RULE_PIXELS, BatchHashes, HashTable, hamming
from curator.store.writer import read_table
from curator.validate import validate_records

TILES = photo_tiles(40, 256, seed=1)


def _phash(rgb: np.ndarray) -> tuple[int, bool]:
    codes, ok = phash(thumbnails([torch.from_numpy(np.array(rgb)).permute(2, 0, 1)]))
    return int(codes[0]), bool(ok[0])


# --- the keys ------------------------------------------------------------------------------------
def test_exact_keys_follow_the_content_not_the_file() -> None:
    jpg = encode(TILES[0])
    pixels = decode(jpg)
    png, bmp = encode(pixels, "PNG"), encode(pixels, "BMP")
    assert bytes_key(jpg) == bytes_key(bytes(jpg)) and bytes_key(png) != bytes_key(bmp)
    assert pixels_key(decode(png)) == pixels_key(decode(bmp)) == pixels_key(pixels)
    assert pixels_key(pixels.reshape(128, 512, 3)) != pixels_key(pixels)  # the shape is part of the picture
    assert pixels_key(decode(encode(pixels, "JPEG", 75))) != pixels_key(pixels)
    assert text_key("A  cat\u00a0on a MAT ") == text_key("a cat on a mat") != text_key("a cat on the mat")
    assert text_key("\uff21 cat") == text_key("a cat")  # NFKC: a full-width A is an A


def test_the_legacy_keys_are_the_blake2b_keys_older_runs_hold() -> None:
    """`blake2b-64` must give exactly what runs from before the scheme was recorded stored; the newest
    scheme keys each kind of payload apart (the same bytes as an image and as a vector differ)."""
    import hashlib

    def b2(data: bytes, person: bytes) -> int:
        v = int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little", signed=True)
        return v or 1

    jpg = encode(TILES[1])
    px = decode(jpg)
    vec = np.linspace(-1, 1, 16, dtype=np.float32)
    assert bytes_key(jpg, "blake2b-64") == b2(jpg, b"curator-bytes")
    assert pixels_key(px, "blake2b-64") == b2(np.asarray(px.shape, np.int64).tobytes() + px.tobytes(),
                                              b"curator-pixels")
    assert vector_key(vec, "blake2b-64") == b2(vec.tobytes(), b"curator-vector")
    assert text_key("A cat", "blake2b-64") == b2(b"a cat", b"curator-caption")
    assert bytes_key(vec.tobytes()) != vector_key(vec) and bytes_key(jpg) != bytes_key(jpg, "blake2b-64")
    with pytest.raises(ValueError, match="not one of xxh3-64, blake2b-64"):
        bytes_key(jpg, "md5")


def test_perceptual_hash_is_close_for_copies_and_far_for_other_photos() -> None:
    codes = [_phash(t) for t in TILES]
    assert all(ok for _, ok in codes[:10])
    for t, (c, _) in zip(TILES[:10], codes, strict=False):
        for kind in ("JPEG q75", "resize 0.9"):
            copy, ok = _phash(decode(COPY_KINDS[kind][1](encode(t))))
            assert ok and hamming(np.int64(c), np.int64(copy)) <= 4, kind
    good = np.array([c for c, ok in codes if ok], np.int64)
    d = hamming(good[:, None], good[None, :])[np.triu_indices(len(good), 1)]
    assert d.min() > 8  # different photographs, even of the same scene, are far apart


def test_a_flat_picture_has_no_perceptual_hash() -> None:
    grey = np.full((64, 64, 3), 128, np.uint8)
    ramp = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 64, 0).repeat(3, 2)
    assert not _phash(grey)[1] and not _phash(ramp)[1] and _phash(TILES[0])[1]


# --- the table -----------------------------------------------------------------------------------
def test_the_multi_index_hash_finds_exactly_what_a_scan_finds() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(-2**63, 2**63 - 1, 300, dtype=np.int64)
    flips = [np.bitwise_or.reduce(np.left_shift(1, rng.choice(64, k, replace=False), dtype=np.int64), initial=0)
             for k in rng.integers(0, 12, 300)]
    queries = base ^ np.array(flips, np.int64)
    for max_dist in (0, 3, 4, 7, 8, 11):
        table = HashTable(max_dist)
        table.add([f"a{i}" for i in range(300)], np.zeros(300, np.int64), np.zeros(300, np.int64), base,
                  np.ones(300, bool))
        got = table.match(np.zeros(300, np.int64), np.zeros(300, np.int64), queries, np.ones(300, bool), [""] * 300)
        d = hamming(queries[:, None], base[None, :])
        want = np.where(d.min(axis=1) <= max_dist, d.argmin(axis=1), -1)
        assert np.array_equal(got.hit_row, want), max_dist
        assert np.array_equal(got.hit_dist[want >= 0], d.min(axis=1)[want >= 0])


def test_in_batch_matches_list_earlier_rows_exact_before_near() -> None:
    table = HashTable(4)
    content = np.array([5, 6, 5, 0, 7], np.int64)
    pixels = np.array([0, 9, 0, 9, 0], np.int64)
    ph = np.array([0b1111, 0, 0b0111, 0, 0b1011], np.int64)
    b = table.match(content, pixels, ph, np.array([True, False, True, False, True]), [""] * 5)
    rows = {i: list(zip(b.crow[b.cptr[i]:b.cptr[i + 1]].tolist(), b.crule[b.cptr[i]:b.cptr[i + 1]].tolist(),
                        strict=True)) for i in range(5)}
    assert rows == {0: [], 1: [], 2: [(0, RULE_CONTENT)], 3: [(1, RULE_PIXELS)], 4: [(0, RULE_NEAR), (2, RULE_NEAR)]}



@pytest.mark.parametrize("seed", range(6))
def test_in_batch_matches_are_every_earlier_row_that_matches_as_a_scan_finds_them(seed: int) -> None:
    """Each row's earlier matches in row order, each by the first rule it meets (content, pixels, then the
    perceptual hash within max_dist); batches past the 512-row block of the perceptual search included."""
    rng = np.random.default_rng(seed)
    n, max_dist = int(rng.integers(1, 1200)), int(rng.integers(0, 9))
    pool = rng.integers(1, 2**40, int(rng.integers(1, 40)))
    content, pixels = (np.where(rng.random(n) < 0.4, rng.choice(pool, n), 0).astype(np.int64) for _ in range(2))
    bases = rng.integers(-2**62, 2**62, 12)
    ph = (bases[rng.integers(0, 12, n)] ^ np.left_shift(1, rng.integers(0, 63, n)) * (rng.random(n) < 0.5)).astype(np.int64)
    ok = rng.random(n) < 0.8
    b = HashTable(max_dist).match(content, pixels, ph, ok, [""] * n)
    for i in rng.choice(n, min(n, 60), replace=False).tolist():
        want = []
        for j in range(i):
            if content[i] and content[i] == content[j]:
                want.append((j, RULE_CONTENT, 0))
            elif pixels[i] and pixels[i] == pixels[j]:
                want.append((j, RULE_PIXELS, 0))
            elif ok[i] and ok[j] and (d := int(hamming(ph[i], ph[j]))) <= max_dist:
                want.append((j, RULE_NEAR, d))
        a, e = b.cptr[i], b.cptr[i + 1]
        assert list(zip(b.crow[a:e].tolist(), b.crule[a:e].tolist(), b.cdist[a:e].tolist(), strict=True)) == want

# --- the selector --------------------------------------------------------------------------------
def _batch(ids: list[str], labels: list[int | None], start: int) -> pa.Table:
    recs = [{"id": i, "label": lab, "embedding": [1.0]} for i, lab in zip(ids, labels, strict=True)]
    return validate_records(recs, [Position("s", 0, start + j) for j in range(len(ids))])[0]


def _emb(x: np.ndarray, hashes: ContentHashes | None = None) -> Embeddings:
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    n = len(x)
    return Embeddings(x, None, np.ones(n, bool), np.zeros(n, bool), hashes=hashes)


def _stream(n: int = 120, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Vectors with exact copies (bit for bit) of earlier ones, some within a few rows of their original."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    src = np.full(n, -1)
    for i in range(10, n, 3):
        src[i] = rng.integers(max(0, i - 4), i) if i % 2 else rng.integers(0, i)
        x[i] = x[src[i]]
    return x, [f"i{j}" for j in range(n)], src


@pytest.mark.parametrize("shards", [1, 2])
def test_exact_copies_are_dropped_whatever_eps_dup_and_wherever_the_original_went(shards: int) -> None:
    x, ids, src = _stream()
    cfg = SelectorConfig(eps_dup=0.0, shards=shards, router_train_size=30, min_trusted=0, probe=1)
    sel = InfoGrowthSelector(cfg)
    out = pa.concat_tables([sel.select(_batch(ids[s:s + 25], [None] * len(ids[s:s + 25]), s), _emb(x[s:s + 25])).decisions
                            for s in range(0, len(ids), 25)])
    rows = out.to_pylist()
    first = {}
    for i, r in enumerate(rows):
        key = x[i].tobytes()
        if key in first:
            assert r["decision"] == "dropped-duplicate" and r["dup_rule"] == "hash-exact", r
            assert r["reason"] == f"duplicate of {first[key]} (exact hash: same embedding)"
            assert r["dup_of"] == first[key]
        else:
            first[key] = r["id"]
            assert r["decision"] == "kept"
    assert (src >= 0).sum() == sum(r["dup_rule"] == "hash-exact" for r in rows)


def test_decisions_do_not_depend_on_where_batches_start() -> None:
    rng = np.random.default_rng(3)
    x, ids = rng.normal(size=(90, 16)).astype(np.float32), [f"i{j}" for j in range(90)]
    h = ContentHashes.empty(90)
    h.image[:] = rng.integers(1, 2**62, 90)
    h.phash[:] = rng.integers(-2**63, 2**63 - 1, 90, dtype=np.int64)
    h.phash_ok[:] = True
    for i in range(5, 90, 7):  # near copies: two perceptual bits off, and close in the embedding space too
        src = i - 1 - i % 3
        h.phash[i] = h.phash[src] ^ np.left_shift(np.int64(1), i % 64) ^ np.left_shift(np.int64(1), (i + 9) % 64)
        x[i] = x[src] + rng.normal(0, 1e-3, 16).astype(np.float32)
    outs = []
    for size in (1, 7, 90):
        sel = InfoGrowthSelector(SelectorConfig(eps_dup=0.0, min_trusted=0))
        outs.append(pa.concat_tables([sel.select(_batch(ids[s:s + size], [None] * len(ids[s:s + size]), s),
                                                 _emb(x[s:s + size], h.take(np.arange(s, min(s + size, 90)))))
                                      .decisions for s in range(0, 90, size)]))
    for col in ("decision", "reason", "dup_of", "dup_rule", "hash_dist"):
        assert outs[0].column(col).to_pylist() == outs[1].column(col).to_pylist() == outs[2].column(col).to_pylist()
    assert outs[0].column("dup_rule").to_pylist().count("hash-near") >= 8  # those after eps_dup's first calibration


def test_the_perceptual_rule_stands_down_where_distinct_pictures_crowd_its_cut() -> None:
    """Simple pictures collide in 64 perceptual bits (the caption benchmark's synthetic scenes: 11% of
    distinct ones within 4 bits of another). When the trusted images show it, near matches are no longer
    copies (exact ones still are) and the manifest's status says why; distinct trusted photos keep it on."""
    rng = np.random.default_rng(4)

    def run(crowded: bool) -> tuple[InfoGrowthSelector, list]:
        x, ids = rng.normal(size=(60, 16)).astype(np.float32), [f"i{j}" for j in range(60)]
        h = ContentHashes.empty(60)
        h.image[:] = rng.integers(1, 2**62, 60)
        h.phash[:] = rng.integers(-2**63, 2**63 - 1, 60, dtype=np.int64)
        if crowded:  # 40 distinct trusted pictures, all within 6 bits of each other
            bits = np.left_shift(np.int64(1), rng.integers(0, 64, (40, 3)))
            h.phash[:40] = np.int64(rng.integers(-2**62, 2**62)) ^ bits[:, 0] ^ bits[:, 1] ^ bits[:, 2]
        h.phash[50:59] = h.phash[:9] ^ np.int64(1)  # one bit off a trusted picture
        h.image[59] = h.image[3]  # and one exact copy
        h.phash_ok[:] = True
        sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
        sel.bootstrap(_batch(ids[:40], [None] * 40, 0), _emb(x[:40], h.take(np.arange(40))))
        dec = sel.select(_batch(ids[40:], [None] * 20, 40), _emb(x[40:], h.take(np.arange(40, 60)))).decisions
        return sel, dec.column("dup_rule").to_pylist()

    sel, rules = run(crowded=True)
    assert rules[10:19] == [None] * 9 and rules[19] == "hash-exact"
    status = sel.calibration_report()["phash_max_dist"]
    assert not sel.near_ok and status["origin"].startswith("not applied:") and "crowd" in status["origin"]
    sel, rules = run(crowded=False)
    assert sel.near_ok and rules[10:19] == ["hash-near"] * 9 and rules[19] == "hash-exact"


class _CountedSearches:
    """A FAISS binary index that counts its range searches and the matches they found."""

    def __init__(self, index: object) -> None:
        self.index, self.searches, self.found = index, 0, 0

    def range_search(self, *args: object) -> object:
        self.searches += 1
        lims, dist, rows = self.index.range_search(*args)  # type: ignore[attr-defined]
        self.found += int(lims[-1])
        return lims, dist, rows

    def __getattr__(self, name: str) -> object:
        return getattr(self.index, name)


class _AlwaysNear(HashTable):
    """Searches for perceptual matches whether or not the rule can apply."""

    def judge(self, hashes: ContentHashes | None, vectors: np.ndarray, modality: str, on: bool = True,
              near: bool = True) -> BatchHashes:
        return super().judge(hashes, vectors, modality, on, True)


def test_a_perceptual_rule_that_stands_down_costs_no_search_and_changes_no_decision() -> None:
    """Where distinct trusted pictures crowd the perceptual cut, the stream's batches are not searched
    for near matches (the loop would ignore them) -- from the batch after the recalibration that turned
    the rule off -- and every decision is what searching them gives."""
    rng = np.random.default_rng(5)
    n = 120
    x, ids = rng.normal(size=(n, 16)).astype(np.float32), [f"i{j}" for j in range(n)]
    h = ContentHashes.empty(n)
    h.image[:] = rng.integers(1, 2**62, n)
    h.phash[:] = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    bits = np.left_shift(np.int64(1), rng.integers(0, 64, (40, 3)))  # 40 crowded trusted pictures
    h.phash[:40] = np.int64(rng.integers(-2**62, 2**62)) ^ bits[:, 0] ^ bits[:, 1] ^ bits[:, 2]
    h.phash[60:80] = h.phash[:20] ^ np.int64(1)  # near copies of trusted pictures, in both stream batches
    h.phash[90:110] = h.phash[20:40] ^ np.int64(2)
    h.image[115] = h.image[45]  # an exact copy still is one
    h.phash_ok[:] = True
    runs = []
    for table in (HashTable, _AlwaysNear):
        sel = InfoGrowthSelector(SelectorConfig(min_trusted=0))
        sel.hashes = table(sel.cfg.phash_max_dist, sel.hashes.keys)
        sel.hashes.near = counted = _CountedSearches(sel.hashes.near)  # type: ignore[assignment]
        sel.bootstrap(_batch(ids[:40], [None] * 40, 0), _emb(x[:40], h.take(np.arange(40))))
        decisions, searches = [], []
        for s in (40, 80):
            decisions.append(sel.select(_batch(ids[s:s + 40], [None] * 40, s),
                                        _emb(x[s:s + 40], h.take(np.arange(s, s + 40)))).decisions)
            searches.append((counted.searches, counted.found))
        runs.append((pa.concat_tables(decisions), searches, sel.near_ok))
    (skipped, skipped_searches, near_ok), (searched, searched_searches, _) = runs
    assert not near_ok
    assert [s for s, _ in skipped_searches] == [1, 1]  # the first stream batch recalibrates at its first item
    assert [s for s, _ in searched_searches] == [1, 2]
    assert searched_searches[1][1] > searched_searches[0][1] > 0  # near matches found, and ignored
    for col in ("decision", "reason", "dup_of", "dup_rule", "hash_dist"):
        assert skipped.column(col).to_pylist() == searched.column(col).to_pylist()
    rules = skipped.column("dup_rule").to_pylist()
    assert rules[75] == "hash-exact" and "hash-near" not in rules


def test_a_copy_of_a_dropped_item_is_judged_on_its_own() -> None:
    """Only accepted items have originals: the copy of an item dropped for its label, in the same batch,
    is judged by the label rule again, not dropped as its duplicate."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 16)) * 3
    x = np.concatenate([centres[np.arange(40) % 2] + rng.normal(0, 0.3, (40, 16)), centres[[0, 0]]])
    x[41] = x[40]  # an exact copy, right after an item whose label is wrong
    labels = [int(i % 2) for i in range(40)] + [1, 0]
    sel = InfoGrowthSelector(SelectorConfig(eps_dup=0.0, min_trusted=10, tau_noise=0.5, label_action="discard"))
    sel.bootstrap(_batch([f"b{i}" for i in range(40)], labels[:40], 0), _emb(x[:40]))
    d = sel.select(_batch(["wrong", "right"], labels[40:], 40), _emb(x[40:])).decisions.to_pylist()
    assert d[0]["decision"] == "dropped-noisy" and d[1]["decision"] == "kept" and d[1]["dup_rule"] is None


# --- end to end: an image folder through `curator ingest` with the tiny CLIP ------------------------
def _ingest(src, out, keys: str = "auto", **selector) -> pa.Table:  # noqa: ANN001 - paths
    from pipelines.ingest import run_ingest

    cfg = load_config(None, {"embedder": {"model": "curator-tiny", "pretrained": "", "device": "cpu",
                                          "content_keys": keys},
                             "selector": {"align_mode": "off", "eps_dup": 0.0, **selector},
                             "store": {"out": str(out)}, "source": {"paths": [str(src)], "batch_size": 16}})
    run_ingest(cfg, progress=False)
    return read_table(out, "decisions")


def test_an_image_folder_loses_its_copies_to_the_hash_rules(tmp_path) -> None:
    """eps_dup = 0: the embedding rule drops nothing, as a calibration below float32 resolution did; the
    same file twice, the same pixels as PNG and BMP, a JPEG re-encode, resizes and a 6-px crop are
    dropped by their hashes, naming the rule; the 20 other photographs are all kept."""
    src = tmp_path / "photos"
    src.mkdir()
    kinds = ["byte-identical", "byte-identical", "same pixels (PNG)", "same pixels (BMP)", "JPEG q75",
             "resize 0.9", "resize 0.5", "crop 6 px"]
    for i, t in enumerate(TILES[:20]):
        data = encode(t)
        (src / f"p{i:02d}.jpg").write_bytes(data)
        if i < len(kinds):
            suffix, make = COPY_KINDS[kinds[i]]
            (src / f"p{i:02d}z.{suffix}").write_bytes(make(data))  # the copy sorts after its original
    d = {r["id"]: r for r in _ingest(src, tmp_path / "run", phash_max_dist=8).to_pylist()}
    assert len(d) == 28
    assert all(d[f"p{i:02d}.jpg"]["decision"] == "kept" for i in range(20))
    for i, kind in enumerate(kinds):
        copy = next(r for k, r in d.items() if k.startswith(f"p{i:02d}z"))
        assert copy["decision"] == "dropped-duplicate" and copy["dup_of"] == f"p{i:02d}.jpg", (kind, copy)
        if kind == "byte-identical":
            assert copy["reason"] == f"duplicate of p{i:02d}.jpg (exact hash: same image bytes)"
        elif kind.startswith("same pixels"):
            assert copy["reason"] == f"duplicate of p{i:02d}.jpg (exact hash: same decoded pixels)"
        else:
            assert copy["dup_rule"] == "hash-near" and copy["hash_dist"] <= 8, (kind, copy)
            assert copy["reason"].startswith(f"near-copy of p{i:02d}.jpg (perceptual hash: {copy['hash_dist']} of 64")
    assert {r["dup_rule"] for r in d.values() if r["decision"] == "kept"} == {None}
    # the rule is in the report (reasons grouped, the galleries' and clusters' rows) and in `config --show`
    from curator.report.data import RunQueries
    from pipelines.cli import show_calibration

    q = RunQueries(tmp_path / "run")
    try:
        reasons = dict(zip(q.reason_counts().column("reason"), q.reason_counts().column("items"), strict=True))
        assert reasons["duplicate of <id> (exact hash: same image bytes)"] == 2
        assert reasons["duplicate of <id> (exact hash: same decoded pixels)"] == 2
        assert {r["dup_rule"] for r in q.dropped_gallery("dropped-duplicate", 50).rows} == {"hash-exact", "hash-near"}
        clusters = q.duplicate_clusters(50, 5)
        assert clusters is not None and {m["dup_rule"] for r in clusters.rows for m in r["members"]} == \
            {"hash-exact", "hash-near"}
    finally:
        q.close()
    shown = show_calibration(str(tmp_path / "run"))
    assert "selector.hash_dedup = on  (config: exact copies by content hash" in shown
    assert "selector.phash_max_dist = 8  (config)" in shown


def test_a_copy_of_an_item_from_before_the_checkpoint_is_caught_after_resume(tmp_path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for i, t in enumerate(TILES[:12]):
        (src / f"p{i:02d}.jpg").write_bytes(encode(t))
    first = _ingest(src, tmp_path / "run")
    assert set(first.column("decision").to_pylist()) == {"kept"}
    (src / "p03z.jpg").write_bytes((src / "p03.jpg").read_bytes())  # arrive after the run was committed
    (src / "p05z.jpg").write_bytes(COPY_KINDS["JPEG q75"][1]((src / "p05.jpg").read_bytes()))
    d = {r["id"]: r for r in _ingest(src, tmp_path / "run").to_pylist()}
    assert len(d) == 14
    assert d["p03z.jpg"]["reason"] == "duplicate of p03.jpg (exact hash: same image bytes)"
    assert d["p05z.jpg"]["dup_rule"] == "hash-near" and d["p05z.jpg"]["dup_of"] == "p05.jpg"


def test_a_run_keeps_the_content_keys_it_started_with(tmp_path) -> None:
    """A run from before the scheme was recorded (blake2b-64 keys, no `content_keys` in its manifest)
    resumes with its own keys, so copies of its earlier items are still exact copies; asking for
    other keys on it is refused, naming the setting; a new run records the newest scheme."""
    import json

    from curator.store.writer import StoreError

    src = tmp_path / "photos"
    src.mkdir()
    for i, t in enumerate(TILES[:10]):
        (src / f"p{i:02d}.jpg").write_bytes(encode(t))
    old = tmp_path / "old"
    _ingest(src, old, keys="blake2b-64")
    manifest = json.loads((old / "manifest.json").read_text())
    assert manifest.pop("content_keys") == "blake2b-64"
    (old / "manifest.json").write_text(json.dumps(manifest))  # as a run of the version before wrote it
    (src / "p02z.jpg").write_bytes((src / "p02.jpg").read_bytes())
    (src / "p04z.png").write_bytes(encode(decode((src / "p04.jpg").read_bytes()), "PNG"))
    with pytest.raises(StoreError, match="--embedder.content_keys blake2b-64"):
        _ingest(src, old, keys="xxh3-64")
    d = {r["id"]: r for r in _ingest(src, old).to_pylist()}
    assert d["p02z.jpg"]["reason"] == "duplicate of p02.jpg (exact hash: same image bytes)"
    assert d["p04z.png"]["reason"] == "duplicate of p04.jpg (exact hash: same decoded pixels)"
    assert json.loads((old / "manifest.json").read_text())["content_keys"] == "blake2b-64"
    new = tmp_path / "new"
    _ingest(src, new)
    assert json.loads((new / "manifest.json").read_text())["content_keys"] == "xxh3-64"


def test_both_decode_paths_hash_alike() -> None:
    """The device path (torchvision's decoder; on a GPU, nvJPEG) hashes what it decodes as Pillow does:
    the same bytes keys, perceptual hashes within a bit or two; its pixels stay on the device, so no
    pixel key (a PNG decodes through Pillow on both paths and has one)."""
    from curator.config import EmbedderConfig
    from curator.embed import ClipEmbedder

    images = [encode(t) for t in TILES[:6]] + [encode(TILES[6], "PNG")]
    recs = [{"id": f"i{j}", "image": b} for j, b in enumerate(images)]
    tab = validate_records(recs, [Position("s", 0, j) for j in range(len(recs))])[0]
    got = {}
    for path in ("pil", "torch"):
        e = ClipEmbedder(EmbedderConfig(model="curator-tiny", pretrained="", device="cpu", decode=path))
        e.setup()
        got[path] = e.embed(tab).hashes
    p, t = got["pil"], got["torch"]
    assert p is not None and t is not None
    assert np.array_equal(p.image, t.image) and (p.image != 0).all()
    assert (p.pixels != 0).all() and (t.pixels[:6] == 0).all() and t.pixels[6] == p.pixels[6]
    assert p.phash_ok.all() and t.phash_ok.all() and hamming(p.phash, t.phash).max() <= 2
