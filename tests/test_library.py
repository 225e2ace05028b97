"""The library front door: `curator.select_embeddings` on numpy arrays and Arrow tables, and the
README's "Use as a library" block, run exactly as the README shows it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curator import select_embeddings
from curator.config import SelectorConfig
from curator.embed import Embeddings
from curator.records import DECISION_SCHEMA
from curator.select import InfoGrowthSelector

ROOT = Path(__file__).resolve().parents[1]


def readme_library_block() -> str:
    section = (ROOT / "README.md").read_text().split("## Use as a library", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_library_block_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    ns: dict = {}
    exec(readme_library_block(), ns)  # noqa: S102 - our own README, verbatim
    decisions, keep = ns["decisions"], ns["keep"]
    assert decisions.schema.equals(DECISION_SCHEMA) and decisions.num_rows == 1797 + 200
    assert decisions["offset"].to_pylist() == list(range(1997))
    copies = decisions.slice(1797).to_pylist()
    assert {r["decision"] for r in copies} == {"dropped-duplicate"}
    assert [r["dup_of"] for r in copies] == [str(i) for i in range(200)]  # each names its original
    assert ns["x_curated"].shape == (int(keep.sum()), 64) and len(ns["y_curated"]) == keep.sum()
    assert keep.sum() > 1700
    assert "dropped-duplicate" in capsys.readouterr().out


def _clusters(n: int = 400, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d)) * 3
    y = rng.integers(0, 4, n)
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_an_arrow_table_and_a_stream_in_parts_decide_as_one_call_on_arrays() -> None:
    x, y = _clusters()
    x[300:340] = x[:40] * 2.5  # the same directions, at another scale: duplicates once normalised
    ids = [f"item-{i}" for i in range(len(x))]
    whole = select_embeddings(x, ids=ids, labels=y, trusted=50)
    cols = ("id", "decision", "reason", "label_out", "dup_of", "seq", "offset")
    assert whole.column("id").to_pylist() == ids
    assert set(whole.slice(300, 40).column("decision").to_pylist()) == {"dropped-duplicate"}
    tbl = pa.table({"id": ids, "embedding": x.tolist(), "label": y.tolist()})
    from_table = select_embeddings(tbl, trusted=50, batch_size=64)
    sel = InfoGrowthSelector(SelectorConfig())
    parts = [select_embeddings(x[:50], ids=ids[:50], labels=y[:50], trusted=50, selector=sel),
             select_embeddings(x[50:170], ids=ids[50:170], labels=y[50:170], selector=sel),
             select_embeddings(x[170:], ids=ids[170:], labels=y[170:], selector=sel, batch_size=7)]
    for other in (from_table, pa.concat_tables(parts)):
        for c in cols:
            assert other.column(c).to_pylist() == whole.column(c).to_pylist(), c


def test_caption_embeddings_turn_on_caption_alignment() -> None:
    rng = np.random.default_rng(1)
    x, y = _clusters(300, 16, seed=1)
    t = x + rng.normal(size=x.shape) * 0.3  # captions near their image
    bad = np.arange(150, 300, 10)
    t[bad] = -t[bad]  # captions of something else
    t[[5, 165]] = 0.0  # no caption
    dec = select_embeddings(x, text_embeddings=t, trusted=60,
                            config=SelectorConfig(align_mode="fixed", align_threshold=0.5))
    rows = dec.to_pylist()
    assert all(rows[i]["decision"] == "dropped-noisy" and "caption" in rows[i]["reason"] for i in bad)
    assert rows[165]["align"] is None and rows[165]["decision"] == "kept" and rows[171]["align"] > 0.5
    assert sum(r["decision"] == "dropped-noisy" for r in rows) == len(bad)


@pytest.mark.parametrize(("call", "message"), [
    (lambda x: select_embeddings(x[0]), r"\(n, d\) array"),
    (lambda x: select_embeddings(np.vstack([x, np.zeros((1, 16))])), r"all zeros or not finite \(rows \[400\]\)"),
    (lambda x: select_embeddings(np.where(np.arange(400)[:, None] == 7, np.nan, x)), r"rows \[7\]"),
    (lambda x: select_embeddings(x, ids=["a"]), "ids has 1 entries for 400 rows"),
    (lambda x: select_embeddings(x, labels=[1] * 399), "labels has 399 entries"),
    (lambda x: select_embeddings(x, labels=["cat"] * 400), r"integer class ids .* row 0 has 'cat'"),
    (lambda x: select_embeddings(x, labels=[0.5] * 400), "row 0 has 0.5"),
    (lambda x: select_embeddings(x, text_embeddings=x[:10]), r"text_embeddings must be \(400, d_t\)"),
    (lambda x: select_embeddings(x, trusted=401), "trusted must be between 0 and the number of rows"),
    (lambda x: select_embeddings(x, config=SelectorConfig(), selector=InfoGrowthSelector()), "not both"),
    (lambda x: select_embeddings(pa.table({"vec": x.tolist()})), "no 'embedding' column"),
    (lambda x: select_embeddings(pa.table({"embedding": [x[0].tolist(), None]})), r"null in rows \[1\]"),
    (lambda x: select_embeddings(pa.table({"embedding": [[1.0, 2.0], [1.0]]})), "different sizes"),
])
def test_bad_arguments_are_errors_that_say_what_is_wrong(call, message: str) -> None:
    x, _ = _clusters()
    with pytest.raises(ValueError, match=message):
        call(x)


def test_trusted_rows_cannot_follow_the_stream() -> None:
    x, _ = _clusters()
    sel = InfoGrowthSelector()
    select_embeddings(x[:100], selector=sel)
    with pytest.raises(ValueError, match="trusted rows must come before the stream"):
        select_embeddings(x[100:], trusted=10, selector=sel)


def test_no_rows_no_decisions() -> None:
    assert select_embeddings(np.zeros((0, 8), np.float32)).num_rows == 0


def test_the_selector_names_the_columns_it_needs() -> None:
    x, _ = _clusters(10)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    emb = Embeddings(x, None, np.ones(10, bool), np.zeros(10, bool))
    with pytest.raises(ValueError, match=r"lack the column\(s\) label, source, partition, offset.*select_embeddings"):
        InfoGrowthSelector().select(pa.table({"id": [str(i) for i in range(10)]}), emb)
