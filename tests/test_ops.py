"""Filters and scores as registered operators (curator.ops), and the registries for filters, embedders and
index kinds: the built-in filters' scores, the keep rule and its reasons, the filter stage's decisions,
the [[filters]] config (errors, round trip, fingerprint), and a run in this process where filtered
items get exactly one decision, are never embedded and leave their scores in the decisions table."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from curator.batch import RawBatch
from curator.config import (
    ConfigError,
    FilterConfig,
    RunConfig,
    SelectorConfig,
    load_config,
    parse_filters,
)
from curator.config_text import to_toml
from curator.demo_data import demo_config, write_demo_inputs
from curator.embed import Embeddings
from curator.ops import Filter, Rule, build_rules
from curator.ops.image import AspectRatio, ImageResolution
from curator.ops.language import Language
from curator.ops.stage import FilterStage, scores_column
from curator.ops.text import CaptionLength, CaptionWords
from curator.records import DECISION_SCHEMA, Decision, Position
from curator.registry import EMBEDDERS, FILTERS, INDEX_KINDS, Registry, RegistryError
from curator.select import InfoGrowthSelector
from curator.validate import validate_batch
from tests.test_auto_index import stream, table


def png(w: int, h: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def samples(records: list[dict]) -> pa.Table:
    batch = validate_batch(RawBatch(records, [Position("s", 0, i) for i in range(len(records))]))
    assert not batch.rejects, batch.rejects
    return batch.samples


@pytest.fixture
def mixed(tmp_path: Path) -> pa.Table:
    (tmp_path / "wide.png").write_bytes(png(300, 100))
    return samples([
        {"id": "a", "image": png(64, 48), "text": "  a red square on white  "},
        {"id": "b", "image_uri": str(tmp_path / "wide.png"), "text": "ok"},
        {"id": "c", "text": "une photo d'un chat noir sur le canapé"},  # no image
        {"id": "d", "image": png(20, 20)},  # no caption
        {"id": "e", "image_uri": str(tmp_path / "missing.png"), "text": "gone"},  # unreadable: not applicable
    ])


def test_builtin_filters_score_each_row_nan_where_they_do_not_apply(mixed: pa.Table) -> None:
    nan = np.nan
    np.testing.assert_array_equal(ImageResolution().score(mixed), [48, 100, nan, 20, nan])
    np.testing.assert_array_equal(ImageResolution("pixels").score(mixed), [64 * 48, 30000, nan, 400, nan])
    np.testing.assert_array_equal(ImageResolution("width").score(mixed), [64, 300, nan, 20, nan])
    np.testing.assert_allclose(AspectRatio().score(mixed), [64 / 48, 3.0, nan, 1.0, nan])
    np.testing.assert_allclose(AspectRatio(symmetric=False).score(mixed), [64 / 48, 3.0, nan, 1.0, nan])
    np.testing.assert_array_equal(CaptionLength().score(mixed), [len("a red square on white"), 2, 38, nan, 4])
    np.testing.assert_array_equal(CaptionWords().score(mixed), [5, 1, 8, nan, 1])
    with pytest.raises(ValueError, match="of must be one of min_side"):
        ImageResolution("area")


def test_language_filter_runs_offline_and_scores_the_wanted_languages(mixed: pa.Table) -> None:
    en, fr = Language("en"), Language(["fr", "de"])
    en.setup()
    s_en, s_fr = en.score(mixed), fr.score(mixed)
    assert s_en[0] > 0.5 and s_en[2] < 0.1  # English caption, French caption
    assert s_fr[2] > 0.9 and s_fr[0] < 0.5
    assert np.isnan(s_en[3]) and np.isnan(s_fr[3])  # no caption
    assert np.all((s_en[~np.isnan(s_en)] >= 0) & (s_en[~np.isnan(s_en)] <= 1))
    import pickle

    again = pickle.loads(pickle.dumps(en))  # what Ray sends to its actors: no model inside
    assert again._ident is None and np.allclose(again.score(mixed), s_en, equal_nan=True)
    with pytest.raises(ValueError, match="langs must be a language code"):
        Language(["english"])
    with pytest.raises(ValueError, match="does not know xx"):
        Language("xx").setup()


def test_keep_rule_is_inclusive_never_fails_nan_and_says_why() -> None:
    r = Rule("res", ImageResolution(), min=64, max=1024)
    s = np.array([63.0, 64.0, 1024.0, 1025.0, np.nan])
    assert r.fails(s).tolist() == [True, False, False, True, False]
    assert r.why(63.0) == "filter res: 63 < min 64" and r.why(1025.0) == "filter res: 1025 > max 1024"
    assert not Rule("score only", ImageResolution()).fails(s).any()


class Wrong(Filter):
    def score(self, samples: pa.Table) -> np.ndarray:
        return np.zeros(samples.num_rows + 1)


def test_a_filter_returning_the_wrong_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"filter wrong: score\(\) returned shape \(3,\) for 2 rows"):
        Rule("wrong", Wrong()).scores(samples([{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]))


def test_filter_stage_drops_with_one_decision_each_and_carries_every_score(mixed: pa.Table) -> None:
    specs = [FilterConfig("image_resolution", "res", min=32), FilterConfig("caption_words", max=5),
             FilterConfig("aspect_ratio")]  # a score only
    stage = FilterStage(build_rules(specs), "m", "fp")
    stage.setup()
    batch = validate_batch(RawBatch([{"id": r["id"], "text": r["text"], "image": r["image"],
                                      "image_uri": r["image_uri"]} for r in mixed.to_pylist()],
                                    [Position("s", 0, i) for i in range(5)]))
    out = stage.process(batch)
    assert out.samples.column("id").to_pylist() == ["a", "b", "e"]
    assert out.items == 5 and out.positions == batch.positions  # every item still accounted for
    scores = dict(out.samples.column("filters")[0].as_py())
    assert scores == {"res": 48.0, "caption_words": 5.0, "aspect_ratio": pytest.approx(64 / 48)}
    assert dict(out.samples.column("filters")[2].as_py())["res"] is None  # unreadable image: not applicable
    f = out.filtered
    assert f is not None and f.schema.equals(DECISION_SCHEMA)
    rows = {r["id"]: r for r in f.to_pylist()}
    assert set(rows) == {"c", "d"}
    assert rows["c"]["reason"] == "filter caption_words: 8 > max 5"
    assert rows["d"]["reason"] == "filter res: 20 < min 32"
    assert all(r["decision"] == Decision.DROPPED_FILTERED.value and r["seq"] == -1 and r["model"] == "m"
               for r in rows.values())
    assert dict(rows["d"]["filters"]) == {"res": 20.0, "caption_words": None, "aspect_ratio": 1.0}
    both = FilterStage(build_rules([FilterConfig("image_resolution", min=500), FilterConfig("caption_words",
                                                                                            min=2)]), "m", "fp")
    r = {x["id"]: x["reason"] for x in both.process(batch).filtered.to_pylist()}
    assert r["b"] == "filter image_resolution: 100 < min 500; filter caption_words: 1 < min 2"


def test_the_selectors_decisions_carry_the_filters_scores_in_the_one_decision_schema() -> None:
    """In memory as stored and queried: the selector's decision records are DECISION_SCHEMA's, with the scores
    the filter stage gave the samples, and a null map for samples no filter saw."""
    x, given = stream(30, d=16)
    plain = table(given, 0, 30)
    scored = plain.append_column(DECISION_SCHEMA.field("filters"), scores_column(["w"], np.arange(30.0)[:, None]))
    emb = Embeddings(x, None, np.ones(30, bool), np.zeros(30, bool))
    for t in (scored, plain):
        d = InfoGrowthSelector(SelectorConfig(min_trusted=0)).select(t, emb).decisions
        assert d.schema.equals(DECISION_SCHEMA)
        assert d.column("filters").to_pylist() == ([[("w", float(i))] for i in range(30)] if t is scored
                                                   else [None] * 30)


def _load(tmp_path: Path, text: str) -> RunConfig:
    p = tmp_path / "c.toml"
    p.write_text(textwrap.dedent(text))
    return load_config(p)


def test_filters_config_reads_checks_round_trips_and_fingerprints(tmp_path: Path) -> None:
    cfg = _load(tmp_path, """
        [[filters]]
        op = "image_resolution"
        min = 64
        of = "pixels"

        [[filters]]
        op = "language"
        name = "english"
        langs = ["en"]
        min = 0.5
        """)
    assert cfg.filters == [FilterConfig("image_resolution", "", 64, None, {"of": "pixels"}),
                           FilterConfig("language", "english", 0.5, None, {"langs": ["en"]})]
    q = tmp_path / "again.toml"
    q.write_text(to_toml(cfg))
    assert load_config(q).to_dict() == cfg.to_dict()
    assert cfg.fingerprint() != RunConfig().fingerprint()
    changed = load_config(q, {"filters": '[{"op": "image_resolution", "min": 65, "of": "pixels"}]'})
    assert changed.fingerprint() != cfg.fingerprint() and len(changed.filters) == 1  # the flag replaces the list
    assert "filters" not in RunConfig().to_dict() or RunConfig().to_dict()["filters"] == []


@pytest.mark.parametrize("text, msg", [
    ('[[filters]]\nop = "sharpness"\n', r"\[\[filters\]\] #1 \(op = 'sharpness'\): unknown filter 'sharpness'; "
                                        r"use one of image_resolution, aspect_ratio"),
    ('[[filters]]\nmin = 3\n', r"#1: needs op = "),
    ('[[filters]]\nop = "caption_words"\nlangs = ["en"]\n', r"bad parameters langs: .*caption_words takes no "
                                                            r"parameters besides op, name, min, max"),
    ('[[filters]]\nop = "image_resolution"\nof = "area"\n', r"of must be one of min_side"),
    ('[[filters]]\nop = "caption_words"\nmin = 5\nmax = 2\n', r"min 5 is above max 2"),
    ('[[filters]]\nop = "caption_words"\nmin = "3"\n', r"min must be a number, got '3'"),
    ('[[filters]]\nop = "caption_words"\n[[filters]]\nop = "caption_words"\nmax = 9\n',
     r"#2 \(op = 'caption_words'\): two filters are named 'caption_words'; give one a name"),
    ('[filters]\nop = "caption_words"\n', r"write each filter as its own \[\[filters\]\] table"),
    ('[[filters]]\nop = "nosuchmodule_xyz:Filter"\n', r"cannot load filter 'nosuchmodule_xyz:Filter': No module"),
    ('[[filters]]\nop = "numpy:ndarray"\n', r"not a filter class"),
    ('[embedder]\nkind = "sift"\n', r"embedder.kind must be one of clip, precomputed, or your own class"),
    ('[index]\nkind = "annoy"\n', r"index.kind must be one of auto, flat, hnsw"),
])
def test_filter_and_kind_errors_name_the_table_and_what_it_takes(tmp_path: Path, text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        _load(tmp_path, text)


def test_all_problems_of_all_filters_come_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, '[[filters]]\nop = "nope"\n[[filters]]\nop = "caption_words"\nmin = 9\nmax = 1\n'
                        '[selector]\nk_gain = 0\n')
    assert len(e.value.problems) == 3


def test_registry_names_paths_and_registration() -> None:
    reg = Registry("thing", {"one": "curator.ops.text:CaptionWords"})
    assert reg.get("one") is CaptionWords
    assert reg.get("curator.ops.text:CaptionLength") is CaptionLength

    @reg.register("mine")
    class Mine(Filter):
        pass

    assert reg.get("mine") is Mine and reg.names() == ["one", "mine"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("one")(Mine)
    with pytest.raises(RegistryError, match="unknown thing 'two'; use one of one, mine"):
        reg.get("two")
    with pytest.raises(RegistryError, match="module 'curator.ops.text' has no 'Nope'"):
        reg.get("curator.ops.text:Nope")
    for registry in (FILTERS, EMBEDDERS, INDEX_KINDS):  # every built-in path resolves
        for name in registry.names():
            assert isinstance(registry.get(name), type), name


def test_builtin_index_kinds_keep_their_factories() -> None:
    from curator.config import IndexConfig
    from curator.index.kinds import Spec, bytes_per_vector, first_spec

    cfg = IndexConfig()
    assert [Spec(k, 256).factory(64, cfg) for k in ("flat", "hnsw", "ivf", "ivf-pq", "ivf-pq-sq8")] == [
        "Flat", "HNSW32,Flat", "IVF256,Flat", "IVF256,PQ8x4fs,RFlat", "IVF256,PQ8x4fs,Refine(SQ8)"]
    assert [bytes_per_vector(Spec(k), 64) for k in ("flat", "hnsw", "ivf", "ivf-pq", "ivf-pq-sq8")] == [
        256.0, 768.0, 272.0, 268.0, 76.0]
    assert [first_spec(IndexConfig(kind=k)).kind for k in ("auto", "flat", "hnsw", "ivf", "ivf-pq")] == [
        "flat", "flat", "hnsw", "flat", "flat"]


def test_user_kinds_work_by_name_in_a_run(tmp_path: Path) -> None:
    """An index kind and an embedder registered by name (their module imported first, as a plugin
    package would be) are what a run builds, and it decides the same as with the built-ins."""
    (tmp_path / "my_kinds.py").write_text(textwrap.dedent("""
        from curator.embed import PrecomputedEmbedder
        from curator.index.kinds import IndexKind
        from curator.registry import EMBEDDERS, INDEX_KINDS

        @INDEX_KINDS.register("exact-copy")
        class ExactCopy(IndexKind):
            def factory(self, dim, cfg, nlist):
                return "Flat"

        @EMBEDDERS.register("my-vectors")
        class MyVectors(PrecomputedEmbedder):
            pass
        """))
    sys.path.insert(0, str(tmp_path))
    try:
        import my_kinds  # noqa: F401 - registers

        from curator.store import read_table
        from pipelines.ingest import run_ingest

        write_demo_inputs(tmp_path, 0)
        base = demo_config(tmp_path / "a", 0, {"source": {"limit": 400}})
        base.source.paths, base.source.bootstrap = [str(tmp_path / "inputs/stream.parquet")], []
        run_ingest(base, progress=False)
        mine = load_config(None, {**{k: v for k, v in base.to_dict().items() if k != "filters"},
                                  "store": {"out": str(tmp_path / "b")},
                                  "index": {"kind": "exact-copy"}, "embedder": {"kind": "my-vectors"}})
        from curator.stages import build_stages

        st = build_stages(mine)
        assert type(st.embed.embedder).__name__ == "MyVectors"
        run_ingest(mine, progress=False)
        a, b = (read_table(tmp_path / d, "decisions").sort_by("seq") for d in ("a", "b"))
        assert a.column("decision").to_pylist() == b.column("decision").to_pylist()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_kinds", None)


def test_a_run_with_filters_decides_each_item_once_and_never_embeds_a_filtered_one(tmp_path: Path) -> None:
    from curator.store import read_table
    from curator.store.query import query
    from pipelines.ingest import run_ingest

    write_demo_inputs(tmp_path, 0)
    cfg = demo_config(tmp_path, 0)
    cfg.filters = [FilterConfig("image_resolution", min=9), FilterConfig("caption_words")]
    boot = cfg.source.bootstrap
    cfg.source.bootstrap = []
    problems: list[str] = []
    assert parse_filters([{"op": "image_resolution", "min": 9}], "x", problems) and not problems
    # every digit is 8x8: all filtered, none embedded, nothing in the index, the quarantine or kept
    m = run_ingest(cfg, progress=False)
    n = pq_rows(cfg.source.paths[0])
    assert m["counts"] == {Decision.DROPPED_FILTERED.value: n}
    d = read_table(tmp_path, "decisions")
    assert d.num_rows == n and len(set(d.column("id").to_pylist())) == n
    assert set(d.column("reason").to_pylist()) == {"filter image_resolution: 8 < min 9"}
    assert read_table(tmp_path, "kept").num_rows == 0 and read_table(tmp_path, "quarantine").num_rows == 0
    t = query(tmp_path, "SELECT count(*) AS n, min(filters['image_resolution']) AS r, "
                        "count(filters['caption_words']) AS w FROM decisions")
    assert t.to_pylist() == [{"n": n, "r": 8.0, "w": 0}]
    # a bar the images pass: scores recorded for every item, kept ones included; same decisions as no filter
    cfg2 = demo_config(tmp_path / "b", 0)
    cfg2.source.paths, cfg2.source.bootstrap = cfg.source.paths, boot
    cfg2.filters = [FilterConfig("image_resolution", min=8)]
    run_ingest(cfg2, progress=False)
    cfg3 = demo_config(tmp_path / "c", 0)
    cfg3.source.paths, cfg3.source.bootstrap = cfg.source.paths, boot
    run_ingest(cfg3, progress=False)
    with_f, without = (read_table(tmp_path / x, "decisions").sort_by([("seq", "ascending"), ("id", "ascending")])
                       for x in ("b", "c"))
    assert with_f.column("decision").to_pylist() == without.column("decision").to_pylist()
    assert with_f.column("reason").to_pylist() == without.column("reason").to_pylist()
    assert [dict(x) for x in with_f.column("filters").to_pylist()] == [{"image_resolution": 8.0}] * with_f.num_rows
    assert without.column("filters").null_count == without.num_rows


class ZeroOrOne(Filter):
    """A user's filter named by its path: 1 for ids ending in an even digit, else 0 (NaN without a digit)."""

    def score(self, samples: pa.Table) -> np.ndarray:
        last = [i[-1] for i in samples.column("id").to_pylist()]
        return np.array([float(int(c) % 2 == 0) if c.isdigit() else np.nan for c in last])


def test_a_users_filter_by_path_shows_in_the_report(tmp_path: Path) -> None:
    from curator.report.build import build_report
    from curator.store.query import query
    from pipelines.ingest import run_ingest

    write_demo_inputs(tmp_path, 0)
    cfg = demo_config(tmp_path, 0, {"source": {"limit": 512}})
    problems: list[str] = []
    cfg.filters = parse_filters([{"op": "tests.test_ops:ZeroOrOne", "name": "even", "min": 1}], "x", problems)
    assert not problems
    m = run_ingest(cfg, progress=False)
    t = query(tmp_path, "SELECT decision = 'dropped-filtered' AS dropped, min(filters['even']) AS lo, "
                        "max(filters['even']) AS hi, min(reason) AS reason, max(seq) AS seq FROM decisions GROUP BY 1 "
                        "ORDER BY 1").to_pylist()
    assert t[0]["lo"] == t[0]["hi"] == 1.0 and t[1]["lo"] == t[1]["hi"] == 0.0  # kept and dropped: scored
    assert t[1]["reason"] == "filter even: 0 < min 1" and t[1]["seq"] == -1
    assert m["counts"]["dropped-filtered"] == query(tmp_path, "SELECT count(*) AS n FROM decisions WHERE "
                                                              "filters['even'] = 0").column("n")[0].as_py() > 100
    html = build_report(tmp_path)
    assert 'id="gallery-dropped-filtered"' in html or "Gallery: dropped-filtered" in html
    assert "filter even: 0 &lt; min 1" in html and "item(s) dropped by a filter have no place" in html


def pq_rows(path: str) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows
