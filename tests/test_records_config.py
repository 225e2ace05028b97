import math

import numpy as np
import pytest

from curator.config import ConfigError, RunConfig, load_config
from curator.config_text import reference_markdown, to_toml
from curator.records import (
    InvalidRecord,
    Limits,
    Position,
    rejections_table,
)
from curator.select.sketch import StreamingQuantile
from curator.validate import validate_record, validate_records

POS = Position("t", 0, 7)


def test_valid_record_keeps_unknown_fields_as_metadata():
    row = validate_record({"id": 5, "text": "a cat", "label": "3", "license": "x"}, POS)
    assert row["id"] == "5" and row["label"] == 3 and row["offset"] == 7
    assert '"license": "x"' in row["metadata"]


def test_missing_id_defaults_to_position():
    assert validate_record({"text": "hi"}, POS)["id"] == "t:0:7"


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"text": ""}, "empty caption"),
        ({"text": 5}, "must be a string"),
        ({"label": 1}, "nothing to embed"),
        ({"text": "a", "label": 1.5}, "integer class id"),
        ({"text": "a", "label": True}, "boolean"),
        ({"embedding": [1.0, float("nan")]}, "NaN"),
        ({"embedding": [0.0, 0.0]}, "all zeros"),
        ({"embedding": [[1.0], [2.0]]}, "flat"),
        ({"embedding": ["a", "b"]}, "not a list of numbers"),
        ({"image": 5}, "must be bytes"),
        ({"image": "!!not an image!!"}, "neither base64 image data"),
        ({"image": b""}, "empty"),
        ({"id": [1], "text": "a"}, "'id' must be"),
        ({"text": "a", "label": 2**70}, "64-bit"),
        ({"text": "bad \ud800 text"}, "not valid Unicode"),
        ({"id": "x\udfff", "text": "a"}, "not valid Unicode"),
        ({"image_uri": "/tmp/\ud800.png"}, "not valid Unicode"),
    ],
)
def test_bad_records_say_why(raw, reason):
    with pytest.raises(InvalidRecord, match=reason):
        validate_record(raw, POS)


def test_limits_apply():
    with pytest.raises(InvalidRecord, match="over the limit"):
        validate_record({"image": b"x" * 11}, POS, Limits(max_image_bytes=10))
    with pytest.raises(InvalidRecord, match="expected 3"):
        validate_record({"embedding": [1.0, 2.0]}, POS, Limits(embedding_dim=3))


def test_unstorable_records_become_rejections_not_errors():
    tbl, rej = validate_records([{"id": "a\ud800", "text": "x\ud800"}, {"text": "fine"}],
                                [Position("f", 0, i) for i in range(2)])
    assert tbl.num_rows == 1 and len(rej) == 1
    rejections_table(rej)  # storable: the id was made printable


def test_validate_records_splits_good_and_bad():
    tbl, rej = validate_records([{"text": "ok"}, "garbage", {"text": ""}],
                                [Position("f", 0, i) for i in range(3)])
    assert tbl.num_rows == 1 and [r.position.offset for r in rej] == [1, 2]
    assert "must be an object" in rej[0].reason


def test_config_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[selector]\nk_gain = 8\n[index]\nkind = "hnsw"\n')
    cfg = load_config(p, {"selector": {"tau_noise": "0.3"}})
    assert cfg.selector.k_gain == 8 and cfg.index.kind == "hnsw" and cfg.selector.tau_noise == 0.3
    # the rendered TOML round-trips
    q = tmp_path / "d.toml"
    q.write_text(to_toml(cfg))
    assert load_config(q).to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    "text, msg",
    [
        ("[selectr]\nk=1\n", "unknown section"),
        ("[selector]\nk_gian = 1\n", "unknown setting selector.k_gian"),
        ("[index]\nkind = 'annoy'\n", "must be one of"),
        ("[selector]\nk_gain = 'many'\n", "expected int"),
        ("[selector]\nk_gain = 0\n", "k_gain must be >= 1"),
        ("[selector]\neps_dup = 'automatic'\n", "selector.eps_dup: expected a number or 'auto'"),
        ("[selector]\ntau_noise = 1.5\n", "tau_noise must be 'auto' or in"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_config_errors_name_the_setting(tmp_path, text, msg):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(p)


def test_auto_settings_take_auto_or_a_number(tmp_path):
    assert RunConfig().selector.eps_dup == "auto"
    cfg = load_config(None, {"selector": {"eps_dup": "0.004", "tau_noise": "AUTO", "align_threshold": 0.3}})
    assert cfg.selector.eps_dup == 0.004 and cfg.selector.tau_noise == "auto" and cfg.selector.align_threshold == 0.3
    assert cfg.fingerprint() != RunConfig().fingerprint()  # "auto" is a value like any other
    q = tmp_path / "c.toml"
    q.write_text(to_toml(cfg))
    assert load_config(q).to_dict() == cfg.to_dict()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_fingerprint_ignores_output_location():
    a, b = RunConfig(), RunConfig()
    b.store.out = "elsewhere"
    assert a.fingerprint() == b.fingerprint()
    b.selector.k_gain = 5
    assert a.fingerprint() != b.fingerprint()


def test_probe_is_in_the_fingerprint_only_with_shards():
    # one shard is searched whatever probe says: a single-shard run resumes across probe's default change
    a, b = RunConfig(), RunConfig()
    b.selector.probe = 2
    assert a.fingerprint() == b.fingerprint()
    a.selector.shards = b.selector.shards = 4
    assert a.fingerprint() != b.fingerprint()


def test_reference_lists_every_field():
    ref = reference_markdown()
    assert "`selector.eps_dup`" in ref and "`index.hnsw_m`" in ref


def test_streaming_quantile_matches_numpy_and_round_trips():
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 2, 10_000)
    q = StreamingQuantile(0, 2, 4096)
    for chunk in np.array_split(v, 7):
        q.update(chunk)
    assert math.isclose(q.quantile(0.99), np.quantile(v, 0.99), abs_tol=2 / 4096 * 2)
    r = StreamingQuantile(0, 2, 4096)
    r.load_state_dict(q.state_dict())
    assert r.quantile(0.5) == q.quantile(0.5) and r.n == 10_000
    assert StreamingQuantile(0, 1).quantile(0.5) is None
