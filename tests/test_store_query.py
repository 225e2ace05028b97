import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator.records import DECISION_SCHEMA
from curator.store import MANIFEST, StoreError, StoreWriter, committed_parts, read_manifest, read_table
from curator.store.query import QueryError, format_table, query


def _decisions(ids, decision="kept"):
    rows = [{"id": i, "source": "s", "partition": 0, "offset": n, "seq": n, "decision": decision,
             "reason": "r"} for n, i in enumerate(ids)]
    return pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)


def test_commit_makes_parts_visible_and_orphans_are_ignored_then_removed(tmp_path):
    w = StoreWriter.open(tmp_path, {"config_fingerprint": "abc"})
    w.stage("decisions", _decisions(["a", "b"]))
    m = w.commit({"s": {0: 2}}, {"seq": 2}, None)
    assert m["commit"] == 1 and m["positions"] == {"s": {"0": 2}}
    # a crashed writer leaves a part the manifest does not name
    orphan = tmp_path / "decisions" / "shard=0" / "part-000002.parquet"
    pq.write_table(_decisions(["zombie"]), orphan)
    assert [p.name for p in committed_parts(tmp_path)["decisions"]] == ["part-000001.parquet"]
    assert query(tmp_path, "SELECT count(*) AS n FROM decisions").column("n").to_pylist() == [2]
    # reopening (a restart) collects the orphan and keeps the committed state
    w2 = StoreWriter.open(tmp_path, {"config_fingerprint": "abc"})
    assert not orphan.exists() and w2.commit_no == 1
    assert read_table(tmp_path, "decisions").column("id").to_pylist() == ["a", "b"]


def test_manifest_is_replaced_atomically(tmp_path):
    w = StoreWriter.open(tmp_path, {})
    w.commit({}, None, None)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp files must be renamed away"
    json.loads((tmp_path / MANIFEST).read_text())


def test_other_configuration_is_refused(tmp_path):
    StoreWriter.open(tmp_path, {"config_fingerprint": "abc"}).commit({}, None, None)
    with pytest.raises(StoreError, match="config fingerprint abc"):
        StoreWriter.open(tmp_path, {"config_fingerprint": "xyz"})


def test_missing_or_damaged_run_dir_errors(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        committed_parts(tmp_path / "nope")
    with pytest.raises(StoreError, match="nothing has been committed"):
        committed_parts(tmp_path)
    (tmp_path / MANIFEST).write_text("{broken")
    with pytest.raises(StoreError, match="damaged"):
        read_manifest(tmp_path)


@pytest.fixture()
def run(tmp_path):
    w = StoreWriter.open(tmp_path, {})
    w.stage("decisions", _decisions(["a", "b", "c"]))
    w.commit({}, None, None)
    return tmp_path


@pytest.mark.parametrize(
    "sql, msg",
    [
        ("COPY (SELECT 1) TO 'x.csv'", "only SELECT"),
        ("CREATE TABLE t AS SELECT 1", "only SELECT"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("SELEC 1", "does not parse"),
        ("SELECT * FROM read_csv('/etc/passwd')", "query failed"),
        ("SELECT * FROM nosuchview", "query failed"),
    ],
)
def test_query_is_read_only_and_sandboxed(run, sql, msg):
    with pytest.raises(QueryError, match=msg):
        query(run, sql)


def test_empty_views_exist_and_formats(run):
    assert query(run, "SELECT count(*) AS n FROM quarantine").column("n").to_pylist() == [0]
    tbl = query(run, "SELECT id, decision FROM decisions ORDER BY id")
    assert format_table(tbl, "csv").splitlines()[0] == '"id","decision"'
    assert json.loads(format_table(tbl, "json"))[0] == {"id": "a", "decision": "kept"}
    assert "decision" in format_table(tbl, "table")


def test_query_cli_prints_and_exits_2_on_bad_sql(run):
    ok = subprocess.run([sys.executable, "-m", "pipelines.cli", "query", str(run),
                         "SELECT count(*) AS n FROM decisions", "--format", "csv"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.split() == ['"n"', "3"], ok.stderr
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "query", str(run), "DROP VIEW kept"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "only SELECT" in bad.stderr and "Traceback" not in bad.stderr


def test_image_files_compressed_in_their_own_format_are_stored_as_given(tmp_path):
    """And the columns whose values are each unique (images, embeddings) get no dictionary."""
    import io

    from PIL import Image

    def encoded(fmt, i):
        b = io.BytesIO()
        Image.new("RGB", (16, 16), (i, 2 * i, 3)).save(b, fmt)
        return b.getvalue()

    w = StoreWriter.open(tmp_path, {"model": "m", "config_fingerprint": "f"})
    for no, fmt in enumerate(("JPEG", "PNG", "BMP"), 1):
        images = [encoded(fmt, i) for i in range(20)]
        emb = pa.FixedSizeListArray.from_arrays(pa.array([0.25 * (i % 3) for i in range(80)], pa.float32()), 4)
        w.stage("kept", pa.table({"id": [f"{fmt}{i}" for i in range(20)], "image": images, "embedding": emb}))
        w.stage("decisions", _decisions([f"{fmt}{i}" for i in range(20)]))
        w.commit({}, None, None)
        meta = pq.ParquetFile(tmp_path / f"kept/shard=0/part-{no:06d}.parquet").metadata.row_group(0)
        cols = {meta.column(j).path_in_schema: meta.column(j) for j in range(meta.num_columns)}
        # JPEG and PNG as given, BMP (raw pixels) compressed; images and embeddings never dictionary-encoded
        assert cols["image"].compression == ("ZSTD" if fmt == "BMP" else "UNCOMPRESSED"), fmt
        for unique in ("image", "embedding.list.element"):
            assert not any("DICTIONARY" in e for e in cols[unique].encodings), unique
        assert cols["embedding.list.element"].compression == "ZSTD"
        assert cols["id"].compression == "ZSTD" and any("DICTIONARY" in e for e in cols["id"].encodings)
        assert read_table(tmp_path, "kept").column("image").to_pylist()[-20:] == images
