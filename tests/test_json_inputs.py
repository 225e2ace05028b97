"""Inputs as users' files hold them (issue 15, items 2 and 3).

JSONL the way LAION / DataComp metadata, img2dataset and Hugging Face exports write it -- a path or
URI in ``image``, ``url`` / ``image_path`` / ``file_name``, ``caption`` / ``key`` / ``uid``, base64
in ``jpg`` -- with real PNG and JPEG files on disk, through `curator ingest` end to end; rejection
codes that group the quarantine; a run that rejects most of its input failing with a summary; and
image-less records in an image run rejected (``no-image``) rather than compared among images.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st
from PIL import Image

from connectors.kafka.codec import read_message
from connectors.kafka.dead_letters import decode_rejection, encode_rejection
from curator.batch import RawBatch
from curator.fields import canonical_record
from curator.records import REJECT_CODES, InvalidRecord, Position, Rejection
from curator.store import read_table
from curator.store.query import query
from curator.validate import validate_records
from curator.wire import read_json_bytes, record_from_json
from pipelines.cli import main

DOCS = Path(__file__).resolve().parents[1] / "docs"
TINY = ["--embedder.model", "curator-tiny", "--embedder.pretrained", "", "--embedder.device", "cpu",
        "--selector.align-mode", "off", "-q"]


def _image(i: int, fmt: str) -> bytes:
    """A small real image, different for each i (a gradient and a square at an i-dependent place)."""
    rng = np.random.default_rng(i)
    px = (np.linspace(0, 255, 24 * 24).reshape(24, 24, 1) * rng.uniform(0.2, 1.0, 3)).astype(np.uint8)
    px[(i * 3) % 16:(i * 3) % 16 + 8, (i * 5) % 16:(i * 5) % 16 + 8] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(px, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def _dataset(root: Path, n: int) -> list[str]:
    """img2dataset's layout: images/00000.jpg, 00001.png, ... -- relative paths to them."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rels = []
    for i in range(n):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        rel = f"images/{i:05d}.{ext}"
        (root / rel).write_bytes(_image(i, fmt))
        rels.append(rel)
    return rels


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ingest(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["ingest", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ------------------------------------------------------------------------------------- fields


def test_image_fields_as_other_tools_write_them(tmp_path: Path) -> None:
    png = _image(0, "PNG")
    b64 = base64.b64encode(png).decode()
    base = tmp_path / "shard"
    cases = [  # (record as written, what curator reads)
        ({"key": "k", "image": "images/1.png", "caption": "a"},
         {"id": "k", "text": "a", "image_uri": str(base / "images/1.png")}),
        ({"image": "1.jpg"}, {"image_uri": str(base / "1.jpg")}),
        ({"image": "/abs/1.jpg"}, {"image_uri": "/abs/1.jpg"}),
        ({"image": "https://example.org/1.jpg"}, {"image_uri": "https://example.org/1.jpg"}),
        ({"image": b64}, {"image": png}),
        ({"image": "data:image/png;base64," + b64}, {"image": png}),
        ({"image_b64": b64}, {"image": png}),
        ({"jpg": b64, "url": "https://example.org/1.jpg", "key": 7},  # img2dataset: the image and where it came from
         {"id": 7, "image": png, "image_uri": "https://example.org/1.jpg"}),
        ({"uid": "u", "url": "https://example.org/1.jpg", "text": "t"},  # DataComp
         {"id": "u", "text": "t", "image_uri": "https://example.org/1.jpg"}),
        ({"SAMPLE_ID": 3, "URL": "https://example.org/1.jpg", "TEXT": "t"},  # LAION
         {"id": 3, "text": "t", "image_uri": "https://example.org/1.jpg"}),
        ({"image_path": "a/1.png"}, {"image_uri": str(base / "a/1.png")}),
        ({"file_name": "1.png", "text": "t"}, {"text": "t", "image_uri": str(base / "1.png")}),  # HF imagefolder
        ({"image": {"bytes": b64, "path": None}}, {"image": png}),  # HF Image feature
        ({"image": {"bytes": None, "path": "1.png"}}, {"image_uri": str(base / "1.png")}),
        ({"image_uri": "rel/1.png"}, {"image_uri": str(base / "rel/1.png")}),
        ({"text": "t", "caption": "kept aside", "image": png}, {"text": "t", "caption": "kept aside", "image": png}),
    ]
    for given, want in cases:
        got = record_from_json(given, base)
        assert got == want, given
        assert canonical_record(got) == got  # once mapped, validation maps nothing again
    # without a folder (a Kafka message), a relative path stays as written
    assert record_from_json({"image": "images/1.png"}) == {"image_uri": "images/1.png"}
    row = validate_records([record_from_json({"key": "k", "jpg": b64, "url": "https://x/1.jpg", "license": "cc"})],
                           [Position("f", 1, 0)])[0].to_pylist()[0]
    assert row["id"] == "k" and row["image"] == png and json.loads(row["metadata"]) == {"license": "cc"}


@settings(max_examples=300, deadline=None)
@for_all(st.binary(max_size=200), st.sampled_from(["", "\n", "\r\n", " "]), st.integers(0, 400))
def test_base64_images_read_the_same_with_or_without_white_space(data: bytes, sep: str, at: int) -> None:
    # plain base64 takes one strict pass; anything else (white space, paths) the checks behind it
    text = base64.b64encode(data).decode()
    wrapped = text[:at] + sep + text[at:]
    for value in (text, wrapped, "  " + text + "\n"):
        if not data and not value.strip():
            continue  # nothing at all is no image (rejected below as such)
        assert record_from_json({"image": value}) == {"image": data}, value
    for bad in (text + "!", text[:-1] if text.endswith("=") else None):  # not base64: never read as bytes
        if bad is None or not bad.strip():
            continue
        try:
            out = record_from_json({"image": bad})
        except InvalidRecord:
            continue
        assert "image" not in out and out["image_uri"] == bad  # a path when it has a '/'


@pytest.mark.parametrize("value, code, words", [
    ("!!not an image!!", "bad-base64", "neither base64 image data"),
    ("data:image/png;base64,@@@", "bad-base64", "data: URI"),
    ({"width": 3}, "bad-field", "without 'bytes' or 'path'"),
])
def test_image_field_that_is_no_image_says_why(value: Any, code: str, words: str) -> None:
    with pytest.raises(InvalidRecord, match=words) as err:
        record_from_json({"image": value})
    assert err.value.code == code
    table, rejects = validate_records([{"image": value}], [Position("f", 1, 4)])
    assert table.num_rows == 0 and [(r.code, r.position.offset) for r in rejects] == [(code, 4)]


def test_every_rejection_has_a_code_without_its_position() -> None:
    for data, code in ((b"{", "invalid-json"), (b"[1, 2]", "not-an-object"), (b'"text"', "not-an-object")):
        with pytest.raises(InvalidRecord) as err:
            read_json_bytes(data)
        assert err.value.code == code
    raws = [{"text": ""}, {"text": 5}, {"label": 1}, {"embedding": [float("nan"), 1.0]}, {"image": b""},
            {"text": "x" * 10_001}]
    _, rejects = validate_records(raws, [Position("f.jsonl", 1, 100 + i) for i in range(len(raws))])
    assert [r.code for r in rejects] == ["empty-caption", "bad-field", "nothing-to-embed", "bad-embedding",
                                         "image-undecodable", "too-large"]
    assert all(c in REJECT_CODES and not re.search(r"\d", c) for c in (r.code for r in rejects))
    with pytest.raises(ValueError, match="unknown rejection code"):
        InvalidRecord("x", "line-3-is-bad")
    # Kafka messages and dead letters carry the code too
    out = RawBatch()
    for off, value in enumerate([None, b"{oops", b"\xff\xff\xff\xffnot arrow", b'{"image": "%%%"}']):
        read_message("t", 0, off, value, None, [], out, 1 << 20)
    assert [e.code for e in out.errors] == ["empty-message", "bad-arrow"]  # framing: where it is read
    assert len(out) == 4 and len(out.messages) == 2  # the JSON payloads: where they are validated
    errors = sorted(out.decoded().errors, key=lambda e: e.position.offset)
    assert [e.code for e in errors] == ["empty-message", "invalid-json", "bad-arrow", "bad-base64"]
    r = Rejection(Position("t", 0, 3), "no image", "id", b"{}", "no-image")
    assert decode_rejection(encode_rejection(r)) == r


def test_docs_name_every_rejection_code_and_input_field() -> None:
    text = (DOCS / "concepts.md").read_text()
    missing = [c for c in REJECT_CODES if f"`{c}`" not in text]
    assert not missing, f"docs/concepts.md does not describe the rejection codes {missing}"
    for name in ("url", "image_path", "jpg", "caption", "key", "uid", "file_name", "no-image", "selector.space"):
        assert f"`{name}`" in text, name


# ----------------------------------------------------------------------------- end to end


def _laion_like(root: Path, rels: list[str]) -> list[dict[str, Any]]:
    """Each row in one of the shapes LAION, DataComp, img2dataset and Hugging Face files have."""
    rows: list[dict[str, Any]] = []
    for i, rel in enumerate(rels):
        caption = f"picture number {i}"
        shape = i % 5
        if shape == 0:
            rows.append({"key": f"{i:05d}", "image": rel, "caption": caption})
        elif shape == 1:
            rows.append({"key": f"{i:05d}", "image_path": rel, "caption": caption, "width": 24})
        elif shape == 2:
            rows.append({"uid": f"{i:05d}", "url": str(root / rel), "text": caption})
        elif shape == 3:
            rows.append({"key": f"{i:05d}", "jpg": base64.b64encode((root / rel).read_bytes()).decode(),
                         "url": f"https://example.org/{i}.jpg", "caption": caption})
        else:
            rows.append({"id": f"{i:05d}", "file_name": rel, "text": caption})
    return rows


def test_jsonl_with_image_paths_ingests_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "laion"
    rels = _dataset(root, 40)
    meta = _write_jsonl(root / "meta.jsonl", _laion_like(root, rels))
    out = tmp_path / "run"
    monkeypatch.chdir(root)  # relative paths are relative to the JSONL file's folder (here also the cwd)
    rc, stdout, err = _ingest(capsys, str(meta), "--store.out", str(out), *TINY)
    assert rc == 0, err
    assert "rejected" not in stdout
    decided = query(out, "SELECT id, decision FROM decisions ORDER BY id").to_pylist()
    assert [d["id"] for d in decided] == [f"{i:05d}" for i in range(40)]
    assert not [d for d in decided if d["decision"] == "rejected-bad-input"]
    kept = {r["id"]: r for r in read_table(out, "kept").to_pylist()}
    assert kept, "nothing kept"
    for rid, r in kept.items():
        i = int(rid)
        assert r["text"] == f"picture number {i}"
        if i % 5 == 3:  # the bytes were in the record; the URL it came from is kept beside them
            assert r["image"] == (root / rels[i]).read_bytes() and r["image_uri"] == f"https://example.org/{i}.jpg"
        else:
            assert Path(r["image_uri"]).resolve() == (root / rels[i]).resolve()
        assert len(r["embedding"]) == 32 and "text_embedding" in r


def test_relative_image_paths_are_relative_to_the_jsonl_file_not_the_working_directory(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data" / "shard-0"
    rels = _dataset(root, 12)
    meta = _write_jsonl(root / "meta.jsonl", [{"key": f"{i:05d}", "image": rel, "caption": f"picture {i}"}
                                              for i, rel in enumerate(rels)])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "run"
    rc, _, err = _ingest(capsys, str(meta), "--store.out", str(out), *TINY)
    assert rc == 0, err
    assert query(out, "SELECT count(*) AS n FROM quarantine").column("n")[0].as_py() == 0


def test_jsonl_reader_rejections_carry_their_code(tmp_path: Path) -> None:
    from connectors.files import FileSource

    f = tmp_path / "bad.jsonl"
    f.write_text('{not json\n[1, 2]\n{"key": "k", "image": "!!not an image!!"}\n' + "x" * 80 + "\n")
    errors = [e for b in FileSource(f, max_record_bytes=60).batches(10) for e in b.errors]
    assert [(e.position.offset, e.code) for e in errors] == [(0, "invalid-json"), (1, "not-an-object"),
                                                             (2, "bad-base64"), (3, "too-large")]
    assert errors[2].id == "k" and not any(re.match(r"line \d", e.reason) or " on line " in e.reason for e in errors)


def test_a_run_that_rejects_most_of_its_input_fails_with_a_summary_by_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shard"
    rels = _dataset(root, 6)
    rows = [{"key": f"ok{i}", "image": rel, "caption": f"picture {i}"} for i, rel in enumerate(rels)]
    rows += [{"key": f"gone{i}", "image": f"images/missing-{i}.jpg", "caption": "x"} for i in range(10)]
    rows += [{"key": f"bare{i}", "caption": f"a caption without an image {i}"} for i in range(4)]
    meta = _write_jsonl(root / "meta.jsonl", rows)
    monkeypatch.chdir(root)
    out = tmp_path / "run"
    rc, stdout, err = _ingest(capsys, str(meta), "--store.out", str(out), *TINY)
    assert rc == 1
    assert "rejected 14 of 20 input items (70.0%) as bad input, by code:" in stdout
    assert re.search(r"10\s+image-unreadable\s+e\.g\. image file '.*missing-\d\.jpg' does not exist", stdout)
    assert re.search(r"4\s+no-image\s+e\.g\. record has no image", stdout)
    assert "source.max_reject_share = 0.5" in err and "--source.max-reject-share 0" in err
    grouped = query(out, "SELECT code, count(*) AS n FROM quarantine GROUP BY code ORDER BY code").to_pylist()
    assert grouped == [{"code": "image-unreadable", "n": 10}, {"code": "no-image", "n": 4}]
    by_decision = query(out, "SELECT code, count(*) AS n FROM decisions WHERE decision = 'rejected-bad-input' "
                             "GROUP BY code ORDER BY code").to_pylist()
    assert by_decision == grouped
    positions = query(out, "SELECT \"offset\" FROM quarantine WHERE code = 'no-image' ORDER BY 1").column(0)
    assert positions.to_pylist() == [16, 17, 18, 19]  # the line, in its own column
    # told otherwise, the same run directory's run ends with status 0 (and still says what it rejected)
    rc, stdout, _ = _ingest(capsys, str(meta), "--store.out", str(out), *TINY, "--source.max-reject-share", "0")
    assert rc == 0 and "rejected 14 of 20" in stdout


def test_image_less_records_in_an_image_run_are_rejected_and_in_a_text_run_compared_by_caption(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "shard"
    rels = _dataset(root, 24)
    rows: list[dict[str, Any]] = []
    for i, rel in enumerate(rels):
        rows.append({"key": f"img{i}", "image": rel, "caption": f"photo {i} of a coloured square"})
        if i % 4 == 3:
            rows.append({"key": f"txt{i}", "caption": f"an unrelated sentence about topic {i}"})
    meta = _write_jsonl(root / "meta.jsonl", rows)
    monkeypatch.chdir(root)
    out = tmp_path / "image-run"
    rc, _, err = _ingest(capsys, str(meta), "--store.out", str(out), *TINY)
    assert rc == 0, err  # 6 of 30 rejected: under the share
    txt = query(out, "SELECT id, decision, code, reason FROM decisions WHERE id LIKE 'txt%' ORDER BY id").to_pylist()
    assert len(txt) == 6 and {(t["decision"], t["code"]) for t in txt} == {("rejected-bad-input", "no-image")}
    assert all("selector.space" in t["reason"] for t in txt)
    kept = read_table(out, "kept").to_pylist()
    assert kept and all(k["id"].startswith("img") for k in kept)
    assert all(np.linalg.norm(k["embedding"]) == pytest.approx(1.0, abs=1e-4) for k in kept)  # image vectors
    # a caption-only run compares captions alone: every item with a caption is decided in the text space
    out_t = tmp_path / "text-run"
    rc, _, err = _ingest(capsys, str(meta), "--store.out", str(out_t), *TINY, "--selector.space", "text")
    assert rc == 0, err
    assert query(out_t, "SELECT count(*) AS n FROM quarantine").column("n")[0].as_py() == 0
    tk = read_table(out_t, "kept")
    assert "text_embedding" not in tk.schema.names and tk.num_rows > 0
    assert tk.schema.field("embedding").type.list_size == 32  # the text tower's width (here equal to the image's)
    d = query(out_t, "SELECT count(*) FILTER (WHERE gain_image IS NOT NULL) AS img, count(*) AS n FROM decisions"
                     ).to_pylist()[0]
    assert d == {"img": 0, "n": 30}  # nothing was compared in the image space


def test_text_space_needs_a_text_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = _write_jsonl(tmp_path / "a.jsonl", [{"embedding": [1.0, 2.0]}])
    rc, _, err = _ingest(capsys, str(f), "--embedder.kind", "precomputed", "--selector.space", "text",
                         "--store.out", str(tmp_path / "o"), "-q")
    assert rc == 2 and "selector.space = 'text' needs an embedder with a text model" in err
