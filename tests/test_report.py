"""`curator report` without a browser: every query the report prints reproduces what it drew (through
`curator query`, as a user would paste it), thresholds come from the manifest before the config,
thumbnails only from bytes that decode, dropped items' payloads only from the run's own inputs,
training summaries are read tolerantly, and the command's errors are for users."""

from __future__ import annotations

import base64
import io
import json
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curator.report.build import build_report, collect, write_report
from curator.report.thresholds import thresholds_in_force
from curator.report.thumbs import MAX_SIDE, thumbnail_uri
from curator.report.training import training_runs
from curator.store import read_manifest, read_table
from curator.store.payloads import read_payloads
from curator.store.query import query
from pipelines.demo import run_demo

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "demo"
    assert run_demo(out, 0, progress=False) == 0
    return out


def _results(ctx: dict) -> list:
    res = [ctx["counts"], ctx["reasons"], ctx["sources"]]
    res += [p.query for p in [*ctx["figs"].values(), *ctx["dist"]] if p.query is not None]
    res += [g.query for g in ctx["galleries"] if g.query is not None]
    return [*res, ctx["cluster_query"]]


def test_every_printed_query_reproduces_its_table(demo: Path) -> None:
    ctx = collect(demo)
    results = _results(ctx)
    assert len(results) >= 13
    for r in results:
        assert r.rows, r.title
        assert query(demo, r.sql).to_pylist() == r.rows, r.title
    # the command line the page prints, pasted into a shell, gives the same numbers
    cmd = shlex.split(f"{ctx['query_cmd']} {shlex.quote(ctx['counts'].sql)}")
    assert cmd[0] == "curator"
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", *cmd[1:], "--format", "json"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ctx["counts"].rows


def test_report_numbers_match_the_run(demo: Path) -> None:
    ctx = collect(demo)
    dec = read_table(demo, "decisions").column("decision").to_pylist()
    assert {r["decision"]: r["items"] for r in ctx["counts"].rows} == {d: dec.count(d) for d in set(dec)}
    assert ctx["run"]["kept"] == read_table(demo, "kept").num_rows
    # the last point of the index-growth curve is the size of the index snapshot of the last commit: its
    # base's items and the rows of the deltas after it
    base, *deltas = json.loads((demo / "manifest.json").read_text())["checkpoint"]["image"]
    rows = pq.read_metadata(demo / base / "items.parquet").num_rows + \
        sum(pq.read_metadata(demo / d / "delta.parquet").num_rows for d in deltas)
    assert ctx["figs"]["growth"].query.rows[-1]["index_size"] == rows
    # histogram bins add up to the scored items, per decision
    for p in ctx["dist"]:
        col = p.key.removeprefix("dist-")
        scored = query(demo, f"SELECT count({col}) AS n FROM decisions").column("n")[0].as_py()
        assert sum(r["items"] for r in p.query.rows) == scored
    kinds = {g.key for g in ctx["galleries"]}
    assert kinds == {"kept", "relabelled", "dropped-duplicate", "dropped-noisy"}
    dup = next(g for g in ctx["galleries"] if g.key == "dropped-duplicate")
    assert all(c.pair is not None and c.pair.thumb and c.thumb for c in dup.cards)  # both sides as images


def test_thresholds_prefer_the_manifest_then_the_config(demo: Path, tmp_path: Path) -> None:
    t = thresholds_in_force(demo)
    cal = read_manifest(demo)["calibration"]  # the demo runs on the calibrated defaults
    assert t["max_sim"].value == pytest.approx(1 - cal["eps_dup"]["value"])
    assert t["max_sim"].origin == cal["eps_dup"]["origin"] and t["max_sim"].origin.startswith("calibrated from")
    assert t["label_agreement"].value == cal["tau_noise"]["value"] and t["align"].value is None  # no captions
    assert t["gain"].value is not None and t["gain"].origin == "selector state"
    run = tmp_path / "run"
    shutil.copytree(demo, run, ignore=shutil.ignore_patterns("inputs", "checkpoints"))
    m = json.loads((run / "manifest.json").read_text())
    m["calibration"] = {"eps_dup": {"value": 0.01, "evidence": "knee of the max_sim histogram"}, "tau_noise": 0.42}
    (run / "manifest.json").write_text(json.dumps(m))
    cfg = (run / "config.toml").read_text()
    (run / "config.toml").write_text(cfg.replace('align_mode = "fixed"', 'align_mode = "off"')
                                     .replace("tau_relabel = 0.5", 'tau_relabel = "auto"'))
    t = thresholds_in_force(run)
    assert t["max_sim"].value == pytest.approx(0.99) and t["max_sim"].origin == "manifest calibration"
    assert t["label_agreement"].value == 0.42 and t["label_agreement"].origin == "manifest calibration"
    assert t["align"].value is None  # caption cleaning off
    th = collect(run)["thresholds"]
    assert any(x.value == pytest.approx(0.99) for x in th)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def test_thumbnails_only_from_bytes_that_decode() -> None:
    uri = thumbnail_uri(_png(640, 320))
    assert uri is not None and uri.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "PNG" and max(im.size) <= MAX_SIDE and im.size[0] == 2 * im.size[1]
    small = Image.open(io.BytesIO(base64.b64decode(thumbnail_uri(_png(8, 8)).split(",", 1)[1])))
    assert small.size == (64, 64)  # tiny images are enlarged, not blurred
    for bad in (b"<script>alert(1)</script>", b"<svg onload=alert(1)></svg>", _png(64, 64)[:40], b"", None,
                "a string", b"GIF89a" + b"\x00" * 10):
        assert thumbnail_uri(bad) is None
    # a PNG header that claims 30000 x 30000 pixels is refused before decoding
    bomb = bytearray(_png(1, 1))
    bomb[16:24] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")
    assert thumbnail_uri(bytes(bomb)) is None


def test_dropped_payloads_only_from_the_runs_own_inputs(demo: Path, tmp_path: Path) -> None:
    stream = str((demo / "inputs" / "stream.parquet").resolve())
    got = read_payloads(demo, [(stream, 0), (stream, 5), (stream, 10**9)])
    assert set(got) == {(stream, 0), (stream, 5)}
    rows = pq.read_table(stream).slice(5, 1).to_pylist()[0]
    assert got[(stream, 5)]["image"] == rows["image"]
    other = tmp_path / "elsewhere.parquet"
    pq.write_table(pa.table({"image": [b"x"], "text": ["secret"]}), other)
    assert read_payloads(demo, [(str(other), 0), ("/etc/passwd", 0)]) == {}


def test_payloads_of_every_input_kind_are_the_items_the_file_source_read(tmp_path: Path) -> None:
    """Image files, JSONL lines, tar samples (plain and gzipped) and Parquet rows (img2dataset's
    column names) are read back at the positions the file source gave them, in any order."""
    from connectors.files import FileSource
    from tests.photos import encode, photo, write_photo_folder

    folder, data = tmp_path / "folder", tmp_path / "data"
    write_photo_folder(folder, per_class=2, copies=1)
    data.mkdir()
    pics = [encode(photo(i), "PNG" if i % 2 else "JPEG") for i in range(6)]
    lines = [json.dumps({"id": f"j{i}", "image": base64.b64encode(p).decode(), "caption": f"line {i}"}) for i, p in
             enumerate(pics)]
    (data / "lines.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")  # a blank line counts
    for name in ("samples.tar", "samples.tar.gz"):
        with tarfile.open(data / name, "w:gz" if name.endswith(".gz") else "w") as tf:
            for i, p in enumerate(pics):
                members = {f"d/s{i}.{'png' if i % 2 else 'jpg'}": p, f"d/s{i}.txt": f"sample {i}".encode()}
                for member, blob in ({"d/s2.unknown": b"?"} if i == 2 else members).items():  # s2: nothing to read
                    info = tarfile.TarInfo(member)
                    info.size = len(blob)
                    tf.addfile(info, io.BytesIO(blob))
    pq.write_table(pa.table({"key": [f"p{i}" for i in range(6)], "jpg": pics, "caption": [f"row {i}" for i in range(6)]}),
                   data / "rows.parquet", row_group_size=4)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f"[source]\npaths = {json.dumps([str(data), str(folder)])}\n")
    expected = {}
    for batch in FileSource([str(data), str(folder)]).batches(64):
        for rec, pos in zip(batch.records, batch.positions, strict=True):
            expected[(pos.source, pos.offset)] = (rec.get("image") or rec.get("jpg"), rec.get("text") or rec.get("caption"))
    assert len(expected) == 12 + 4 * 6
    got = read_payloads(run, reversed(list(expected)))
    assert set(got) == set(expected)
    for pos, (image, text) in expected.items():
        assert got[pos]["image"] == image, pos
        if not pos[0].endswith((".jpg", ".png")):  # an image file's caption is its sidecar's, not read back
            assert got[pos]["text"] == text, pos
    assert got[(str(data / "samples.tar"), 2)] == {"image": None, "text": None}


def test_image_folder_report_shows_every_duplicate_beside_its_original(tmp_path: Path) -> None:
    """An image folder curated without storing images: both sides of every duplicate card, the kept
    items and the duplicate clusters are thumbnails read from the image files; keep rates are per folder."""
    from tests.photos import CLASSES, ingest_photos, write_photo_folder

    n = write_photo_folder(tmp_path / "imgs", per_class=10, copies=3)
    run = ingest_photos(tmp_path / "imgs", tmp_path / "run", store_images=False)
    ctx = collect(run)
    galleries = {g.key: g for g in ctx["galleries"]}
    assert set(galleries) == {"kept", "dropped-duplicate"}
    dup = galleries["dropped-duplicate"]
    assert len(dup.cards) == 3 * 4  # three copies per class, and one more of the first picture
    assert all(c.thumb and c.pair is not None and c.pair.thumb for c in dup.cards), [
        (c.title, c.placeholder, c.pair and c.pair.placeholder) for c in dup.cards]
    assert all(c.thumb for c in galleries["kept"].cards)
    clusters = ctx["clusters"]
    assert [c.total for c in clusters] == [2, 2, 2] + [1] * 6  # largest first
    assert {c.original.title for c in clusters[:3]} == {f"{k}/000.jpg" for k in CLASSES}
    assert all(c.original.thumb and len(c.copies) == c.total and all(x.thumb for x in c.copies) for c in clusters)
    assert [x.title for x in clusters[0].copies] == [f"{clusters[0].original.title[:-4]}{s}" for s in ("b.jpg", "c.png")]
    sources = ctx["sources"]  # one source per image: more than a chart can show, so one bar per class folder
    assert sources.columns[0] == "folder" and len(sources.rows) == 3
    assert sum(r["sources"] for r in sources.rows) == sum(r["items"] for r in sources.rows) == n
    html = build_report(run)
    assert html.count('<figure class="cluster">') == 9 and "cannot be read back" not in html


def test_training_summaries_are_read_tolerantly(tmp_path: Path) -> None:
    root = tmp_path / "train"
    (root / "a").mkdir(parents=True)
    (root / "a" / "train_summary.json").write_text(json.dumps({
        "name": "a", "workers": 2, "history": [
            {"epoch": 0, "eval_acc": 0.5, "saving": 0.0, "new_field": [1, 2]},
            {"epoch": 1, "eval_acc": 0.7, "saving": 0.2, "train_loss": "nan?"}, "junk"]}))
    (root / "b").mkdir()
    (root / "b" / "train_summary.json").write_text("{half a file")
    (root / "c").mkdir()
    (root / "c" / "train_summary.json").write_text("[1, 2]")
    runs = training_runs(tmp_path)
    assert [r.name for r in runs] == ["a"]
    assert runs[0].saving == 0.2 and runs[0].final_accuracy == 0.7 and runs[0].series("train_loss") == [None, None]
    assert training_runs(tmp_path / "nope") == []


def test_a_run_without_kept_items_still_reports(tmp_path: Path) -> None:
    from curator.config import load_config
    from pipelines.ingest import run_ingest

    src = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": f"x{i}", "text": ""} for i in range(5)]), src)
    cfg = load_config(None, {"embedder": {"kind": "precomputed", "model": "m", "pretrained": ""},
                             "store": {"out": str(tmp_path / "run")}, "source": {"paths": [str(src)]}})
    run_ingest(cfg, progress=False)
    html = build_report(tmp_path / "run")
    assert "rejected-bad-input" in html and "empty caption" in html


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_report_command(demo: Path, tmp_path: Path) -> None:
    r = _cli("report", str(demo), "--out", str(tmp_path / "r"), "--gallery-size", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == str((tmp_path / "r" / "index.html").resolve())
    dec = read_table(demo, "decisions").column("decision").to_pylist()
    shown = sum(min(4, dec.count(d)) for d in ("kept", "relabelled", "dropped-duplicate", "dropped-noisy"))
    assert write_report(demo, tmp_path / "r2", 4).read_text().count('<figure class="card') == shown
    for bad, msg in ((tmp_path / "missing", "does not exist"), (tmp_path, "nothing has been committed")):
        r = _cli("report", str(bad))
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_help_stays_light() -> None:
    code = ("import sys; from pipelines.cli import build_parser; p = build_parser(); "
            "assert 'report' in p.format_help(); "
            "assert not [m for m in ('matplotlib', 'duckdb', 'ray') if m in sys.modules], sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
