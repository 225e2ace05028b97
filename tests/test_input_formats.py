"""docs/input-formats.md says what the readers do: its examples are read here as a user's files would
be (the Parquet snippet run as written, the JSONL lines as a file), and its statements about image
folders and WebDataset tars are checked on the layouts it draws."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from connectors.files import FileSource
from curator.demo_data import png_bytes
from curator.validate import validate_records

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "input-formats.md").read_text()


def read(*paths: Path, fmt: str = "auto") -> tuple[list[dict], list]:
    """Every record of `paths` as the validate stage makes it, and the rejections on the way."""
    rows, rejects = [], []
    for batch in FileSource([str(p) for p in paths], fmt).batches(64):
        tbl, rej = validate_records(batch.records, batch.positions)
        rows += tbl.to_pylist()
        rejects += batch.errors + rej
    return rows, rejects


def blocks(lang: str) -> list[str]:
    """The page's fenced blocks in `lang` ("" for plain ones)."""
    return [body for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", DOC, re.S | re.M) if tag == lang]


def test_the_parquet_example_runs_and_reads_as_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (snippet,) = [b for b in blocks("python") if "pq.write_table" in b]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.jpg").write_bytes(png_bytes(np.arange(64) % 17))
    exec(snippet, {})  # noqa: S102 - our own docs, as written
    rows, rejects = read(tmp_path / "pairs.parquet")
    assert not rejects and [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["image"] and rows[1]["image_uri"] == "https://example.org/dog.jpg" and rows[1]["label"] == 1
    assert [json.loads(r["metadata"]) for r in rows] == [{"photographer": "Ann"}, {"photographer": "Bo"}]
    assert [r["offset"] for r in rows] == [0, 1]


def test_every_jsonl_example_line_is_a_valid_record(tmp_path: Path) -> None:
    examples = blocks("jsonl")
    assert len(examples) >= 2
    for k, text in enumerate(examples):
        path = tmp_path / f"example{k}.jsonl"
        path.write_text(text)
        rows, rejects = read(path)
        assert not rejects, [r.reason for r in rejects]
        assert len(rows) == len(text.strip().splitlines())
    rows, _ = read(tmp_path / "example0.jsonl")
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["image_uri"] == str(tmp_path / "images" / "cat.jpg") and by_id["a"]["label"] == 0
    assert by_id["c"]["image"].startswith(b"\x89PNG") and by_id["c"]["label"] == 3
    assert json.loads(by_id["d"]["metadata"]) == {"lang": "en"}


def test_image_folders_label_by_class_folder_and_caption_by_sidecar(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for rel in ("cat/0001.jpg", "cat/0002.png", "dog/0003.jpg", "unsorted.webp"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        (photos / rel).write_bytes(png_bytes(np.full(64, len(rel) % 16)))
    (photos / "cat/0001.txt").write_text("a cat on a sofa\n")
    (photos / "dog/0003.jpg.txt").write_text("a dog in the snow")
    rows, rejects = read(photos)
    assert not rejects
    got = {r["id"]: (r["label"], r["text"], r["metadata"] and json.loads(r["metadata"]), r["source"]) for r in rows}
    assert got == {
        "cat/0001.jpg": (0, "a cat on a sofa", {"class_name": "cat"}, str(photos / "cat/0001.jpg")),
        "cat/0002.png": (0, None, {"class_name": "cat"}, str(photos / "cat/0002.png")),
        "dog/0003.jpg": (1, "a dog in the snow", {"class_name": "dog"}, str(photos / "dog/0003.jpg")),
        "unsorted.webp": (None, None, None, str(photos / "unsorted.webp")),
    }
    assert "`{\"class_name\": \"cat\"}`" in DOC and "`cat` is 0 and `dog`\n  is 1" in DOC


def test_integer_class_folders_are_the_labels(tmp_path: Path) -> None:
    for name in ("3", "7"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(png_bytes(np.ones(64)))
    rows, _ = read(tmp_path)
    assert sorted((r["id"], r["label"], r["metadata"]) for r in rows) == [("3/x.png", 3, None), ("7/x.png", 7, None)]


def test_a_folder_with_data_files_is_read_as_those_files(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "a caption"}\n')
    (tmp_path / "x.png").write_bytes(png_bytes(np.ones(64)))
    rows, _ = read(tmp_path)
    assert [r["text"] for r in rows] == ["a caption"]
    rows, _ = read(tmp_path, fmt="images")
    assert [r["id"] for r in rows] == ["x.png"]


def test_webdataset_members_fill_the_fields_the_page_lists(tmp_path: Path) -> None:
    (listing,) = [b for b in blocks("") if "shard-000000.tar" in b]
    path = tmp_path / "shard-000000.tar"
    members = {"000000.jpg": png_bytes(np.ones(64)), "000000.txt": b"a caption", "000000.cls": b"3\n",
               "000000.json": b'{"source_url": "u"}', "000000.seg.png": b"ignored", "000001.png": png_bytes(np.ones(64)),
               "000001.caption": b"another"}
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    rows, rejects = read(path)
    assert not rejects
    assert [(r["id"], r["text"], r["label"], r["offset"]) for r in rows] == [("000000", "a caption", 3, 0),
                                                                             ("000001", "another", None, 1)]
    assert json.loads(rows[0]["metadata"]) == {"source_url": "u"}
    for ext, field in (("jpg", "image"), ("txt", "text"), ("cls", "label"), ("json", "metadata")):
        assert re.search(rf"000000\.{ext}\s+{field}", listing), ext
