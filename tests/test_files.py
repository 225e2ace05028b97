"""FileSource: every format, positions, resume-exactly-the-rest, bad input as rejections."""

from __future__ import annotations

import base64
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.files import FileSource, FileSourceError, class_names
from curator.batch import Positions, RawBatch, advance
from curator.records import Position
from curator.validate import validate_records
from curator.wire import read_json_bytes


def png_bytes(seed: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (4, 4), (seed * 37 % 256, seed * 91 % 256, 7))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path: Path, n: int, start: int = 0, row_group_size: int = 7) -> None:
    rows = [
        {
            "id": f"p{start + i}",
            "image": png_bytes(i),
            "image_uri": None,
            "text": f"caption {start + i}",
            "label": i % 3,
            "metadata": json.dumps({"k": i}),
            "embedding": [float(i + 1), 1.0, 0.5],
        }
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def write_jsonl(path: Path, lines: list[Any]) -> None:
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def write_tar(path: Path, members: list[tuple[str, bytes]], gz: bool = False) -> None:
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def drain(src: FileSource, batch_size: int, start: Positions | None = None) -> list[RawBatch]:
    return list(src.batches(batch_size, start))


def items(batches: list[RawBatch]) -> list[tuple[Position, str]]:
    """Every item, record or rejection, as (position, what), in stream order within each batch."""
    out: list[tuple[Position, str]] = []
    for b in batches:
        out += [(p, f"rec:{r.get('id')}") for r, p in zip(b.records, b.positions, strict=True)]
        out += [(e.position, f"err:{e.reason[:20]}") for e in b.errors]
    return sorted(out, key=lambda t: (t[0].source, t[0].partition, t[0].offset))


# --------------------------------------------------------------------------- formats


def test_parquet_reads_row_groups_in_order_with_positions(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    write_parquet(f, 25)
    src = FileSource(str(f))
    assert src.total() == 25
    batches = drain(src, 10)
    assert [len(b) for b in batches] == [10, 10, 5]
    recs = [r for b in batches for r in b.records]
    pos = [p for b in batches for p in b.positions]
    assert [r["id"] for r in recs] == [f"p{i}" for i in range(25)]
    assert pos == [Position(str(f), src.units[0].tag, i) for i in range(25)]
    assert isinstance(recs[0]["image"], bytes) and recs[3]["embedding"] == [4.0, 1.0, 0.5]
    table, rejects = validate_records(recs, pos)
    assert table.num_rows == 25 and not rejects


def test_parquet_resume_inside_a_row_group(tmp_path: Path) -> None:
    f = tmp_path / "a.parquet"
    write_parquet(f, 25, row_group_size=7)
    tag = FileSource(f).units[0].tag or next(FileSource(f).batches(1)).positions[0].partition
    for cut in (0, 1, 7, 13, 24, 25, 40):
        rest = drain(FileSource(f), 4, {str(f): {tag: cut}})
        got = [p.offset for b in rest for p in b.positions]
        assert got == list(range(cut, 25)), cut


def test_jsonl_base64_images_and_bad_lines_become_rejections(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    img = png_bytes(1)
    write_jsonl(
        f,
        [
            {"id": "a", "image": base64.b64encode(img).decode(), "label": 1},
            {"id": "b", "image_b64": base64.b64encode(img).decode(), "text": "a cat"},
            "{not json",
            "",
            [1, 2, 3],
            {"id": "c", "image": "!!!not base64!!!"},
            {"id": "d", "text": "plain caption", "extra": 5},
        ],
    )
    src = FileSource(f)
    batches = drain(src, 100)
    assert len(batches) == 1
    b = batches[0]
    assert [r["id"] for r in b.records] == ["a", "b", "d"]
    assert b.records[0]["image"] == img and b.records[1]["image"] == img
    assert [p.offset for p in b.positions] == [0, 1, 6]
    errs = {e.position.offset: e for e in b.errors}
    assert set(errs) == {2, 4, 5}  # the blank line (3) is neither record nor error
    assert errs[2].code == "invalid-json" and "invalid JSON" in errs[2].reason and errs[2].raw == b"{not json\n"
    assert errs[4].code == "not-an-object" and errs[5].code == "bad-base64"
    assert "expected a JSON object" in errs[4].reason and "array" in errs[4].reason
    assert "base64" in errs[5].reason and errs[5].id == "c"
    assert all(e.position.source == str(f) and e.position.partition == src.units[0].tag for e in b.errors)
    table, rejects = validate_records(b.records, b.positions)
    assert table.num_rows == 3 and not rejects


def test_jsonl_oversized_line_is_rejected_without_stopping(tmp_path: Path) -> None:
    f = tmp_path / "big.jsonl"
    write_jsonl(f, [{"id": "x", "text": "y" * 5000}, {"id": "ok", "text": "fine"}])
    b = drain(FileSource(f, max_record_bytes=1000), 10)[0]
    assert [r["id"] for r in b.records] == ["ok"] and b.positions[0].offset == 1
    assert len(b.errors) == 1 and "over 1000 bytes" in b.errors[0].reason and b.errors[0].position.offset == 0


def test_gzipped_jsonl(tmp_path: Path) -> None:
    import gzip

    f = tmp_path / "d.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"id": "z", "text": "t"}) + "\n")
    assert [r["id"] for b in drain(FileSource(f), 5) for r in b.records] == ["z"]


def test_image_folder_named_classes_and_captions(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for cls, n in (("dog", 2), ("cat", 3)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(png_bytes(i))
    (root / "cat" / "1.txt").write_text("a grey cat\n")
    (root / "loose.jpg").write_bytes(png_bytes(9))  # in the root: no label
    (root / "notes.md").write_text("ignored")
    src = FileSource(root)
    assert src.total() == 6 and class_names(src) == {str(root): ["cat", "dog"]}
    b = drain(src, 100)[0]
    ids = [r["id"] for r in b.records]
    assert ids == ["cat/0.png", "cat/1.png", "cat/2.png", "dog/0.png", "dog/1.png", "loose.jpg"]
    assert [r.get("label") for r in b.records] == [0, 0, 0, 1, 1, None]
    assert b.records[1]["text"] == "a grey cat" and "text" not in b.records[0]
    assert b.records[3]["metadata"] == {"class_name": "dog"}
    assert b.records[0]["image"] == png_bytes(0)
    assert [p.source for p in b.positions] == [str(root / i) for i in ids]
    assert all(p.offset == 0 for p in b.positions)
    done: Positions = {}
    advance(done, b.positions[:4])
    rest = drain(src, 100, done)
    assert [r["id"] for r in rest[0].records] == ["dog/1.png", "loose.jpg"]


def test_image_folder_integer_classes(tmp_path: Path) -> None:
    root = tmp_path / "digits"
    for cls in ("3", "10"):
        (root / cls).mkdir(parents=True)
        (root / cls / "a.png").write_bytes(png_bytes(int(cls)))
    b = drain(FileSource(root, format="images"), 10)[0]
    assert {r["id"]: r["label"] for r in b.records} == {"10/a.png": 10, "3/a.png": 3}
    assert all("metadata" not in r for r in b.records)


def test_webdataset_tar_groups_members_by_key(tmp_path: Path) -> None:
    f = tmp_path / "shard-000.tar"
    write_tar(
        f,
        [
            ("s/000.jpg", png_bytes(0)),
            ("s/000.txt", b"first caption"),
            ("s/000.cls", b"2\n"),
            ("s/000.json", b'{"src": "web"}'),
            ("s/001.png", png_bytes(1)),
            ("s/001.caption", b"second"),
            ("s/001.unknown", b"ignored"),
            ("s/002.txt", b"\xff\xfe not utf8"),
            ("s/003.webp", png_bytes(3)),
        ],
    )
    b = drain(FileSource(f), 10)[0]
    assert [r["id"] for r in b.records] == ["s/000", "s/001", "s/003"]
    r0 = b.records[0]
    assert r0["image"] == png_bytes(0) and r0["text"] == "first caption" and r0["label"] == "2"
    assert r0["metadata"] == '{"src": "web"}'
    assert b.records[1]["text"] == "second" and "unknown" not in b.records[1]
    assert [p.offset for p in b.positions] == [0, 1, 3]
    assert len(b.errors) == 1 and b.errors[0].position.offset == 2 and "UTF-8" in b.errors[0].reason
    table, rejects = validate_records(b.records, b.positions)
    assert table.num_rows == 3 and not rejects and table.column("label").to_pylist() == [2, None, None]
    first = drain(FileSource(f), 2)[0]
    rest = drain(FileSource(f), 10, {str(f): {first.positions[0].partition: 2}})[0]
    assert [p.offset for p in rest.positions] == [3] and [e.position.offset for e in rest.errors] == [2]


def test_truncated_tar_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    rng = random.Random(0)
    members = [(f"{i:03d}.txt", rng.randbytes(600).hex().encode()) for i in range(40)]
    good = tmp_path / "good.tar.gz"
    write_tar(good, members, gz=True)
    bad_gz = tmp_path / "bad.tar.gz"
    bad_gz.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    plain = tmp_path / "plain.tar"
    write_tar(plain, members)
    cut_at_boundary = tmp_path / "cut.tar"  # cut exactly between members: tarfile alone would not notice
    cut_at_boundary.write_bytes(plain.read_bytes()[: 512 * 4 * 8])  # 8 members of 4 blocks each
    batches = drain(FileSource([bad_gz, cut_at_boundary, good]), 50)
    part = {s: i for i, s in enumerate(map(str, [bad_gz, cut_at_boundary, good]))}
    errs = {part[e.position.source]: e for b in batches for e in b.errors}
    ok = [part[p.source] for b in batches for p in b.positions]
    assert set(errs) == {0, 1} and all("truncated or corrupt" in e.reason for e in errs.values())
    assert 5 < ok.count(0) < 40 and errs[0].position.offset == ok.count(0)
    assert ok.count(1) == 7 and errs[1].position.offset == 7  # the last, possibly partial, sample is rejected
    assert ok.count(2) == 40


def test_unreadable_parquet_is_reported_once(tmp_path: Path) -> None:
    f = tmp_path / "junk.parquet"
    f.write_bytes(b"this is not parquet")
    b = drain(FileSource(f), 10)[0]
    assert not b.records and len(b.errors) == 1 and "unreadable Parquet" in b.errors[0].reason
    src = FileSource(f)
    drain(src, 10)
    assert drain(FileSource(f), 10, src.snapshot()) == []


# --------------------------------------------------------------------------- expansion, resume, errors


def make_mixed(tmp_path: Path) -> list[Path]:
    data = tmp_path / "data"
    data.mkdir()
    write_parquet(data / "b.parquet", 9, start=100, row_group_size=4)
    write_parquet(data / "a.parquet", 5)
    write_jsonl(data / "c.jsonl", [{"id": f"j{i}", "text": f"t{i}"} for i in range(4)] + ["{bad"])
    (data / "README.md").write_text("not data")
    tar = tmp_path / "w.tar"
    write_tar(tar, [(f"k{i}.txt", f"c{i}".encode()) for i in range(6)])
    imgs = tmp_path / "imgs" / "0"
    imgs.mkdir(parents=True)
    for i in range(3):
        (imgs / f"{i}.png").write_bytes(png_bytes(i))
    return [data, tar, tmp_path / "imgs"]


def test_folders_expand_sorted_and_partitions_follow(tmp_path: Path) -> None:
    paths = make_mixed(tmp_path)
    src = FileSource([str(p) for p in paths])
    data = str(paths[0])
    assert src.sources == [f"{data}/a.parquet", f"{data}/b.parquet", f"{data}/c.jsonl", str(paths[1]), str(paths[2])]
    assert [u.kind for u in src.units] == ["parquet", "parquet", "jsonl", "webdataset", "images"]
    got = items(drain(src, 7))
    assert len(got) == 5 + 9 + 5 + 6 + 3
    images = [f"{paths[2]}/0/{i}.png" for i in range(3)]
    assert {p.source for p, _ in got} == {*src.sources[:4], *images}
    assert all(p.partition == src.units[src.sources.index(p.source)].tag for p, _ in got if p.source not in images)
    assert all(p.offset == 0 for p, _ in got if p.source in images)


@pytest.mark.parametrize("batch_size", [1, 4, 11])
def test_resume_from_positions_yields_exactly_the_rest(tmp_path: Path, batch_size: int) -> None:
    """Stop after any batch, advance the positions past it, restart: nothing lost, nothing repeated."""
    src = FileSource(make_mixed(tmp_path))
    full = drain(src, batch_size)
    everything = items(full)
    for cut in range(len(full) + 1):
        positions: Positions = {}
        for b in full[:cut]:
            advance(positions, b.positions + [e.position for e in b.errors])
        positions = json.loads(json.dumps(positions))  # through JSON, as a manifest stores them
        positions = {s: {int(k): v for k, v in parts.items()} for s, parts in positions.items()}
        # the same inputs, given as their expanded file list: resume is keyed by source path
        resumed = items(full[:cut]) + items(drain(FileSource(src.sources), batch_size, positions))
        assert sorted(resumed, key=lambda t: (t[0].source, t[0].partition, t[0].offset)) == everything, cut


@pytest.mark.parametrize("per_range", [1, 4, 100])
def test_ranges_read_apart_give_the_stream(tmp_path: Path, per_range: int) -> None:
    """Ray Data's read tasks (`ranges` + `read_range`, each on its own source copy) read exactly what
    one `batches` pass reads after the same start, in the same order, and never move positions."""
    src = FileSource(make_mixed(tmp_path))
    full = drain(src, 3)
    read_to = src.snapshot()
    for cut in (0, 2, 5):
        start: Positions = {}
        for b in full[:cut]:
            advance(start, b.positions + [e.position for e in b.errors])
        plan = src.ranges(start, per_range)
        assert [r[0] for r in plan] == sorted(r[0] for r in plan)
        got: list[RawBatch] = []
        for unit, first, count in plan:
            assert count is None or 0 < count <= per_range
            got += list(src.only(unit).read_range(0, first, count, 2))
        assert all(0 < len(b) <= 2 for b in got)
        assert items(got) == items(drain(FileSource(src.sources), 3, start)), cut
    cut_once = {u.kind for u, (_, _, c) in zip(src.units, src.ranges({}, 10**9), strict=True) if c is not None}
    assert cut_once == {"parquet", "images"}  # the kinds whose length is known without reading them
    assert src.snapshot() == read_to


def test_batches_span_files_and_respect_batch_size(tmp_path: Path) -> None:
    src = FileSource(make_mixed(tmp_path))
    sizes = [len(b) for b in drain(src, 10)]
    assert sizes[:-1] == [10] * (len(sizes) - 1) and 0 < sizes[-1] <= 10


def test_missing_path_and_unknown_extension_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileSourceError, match="does not exist"):
        FileSource(tmp_path / "nope.parquet")
    odd = tmp_path / "table.csv"
    odd.write_text("a,b\n")
    with pytest.raises(FileSourceError, match=r"table\.csv.*unknown extension '\.csv'.*Parquet"):
        FileSource(odd)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileSourceError, match="holds no readable files"):
        FileSource(empty)
    with pytest.raises(FileSourceError, match="unknown format"):
        FileSource(odd, format="csv")
    with pytest.raises(FileSourceError, match="no input paths"):
        FileSource([])
    # forcing a format reads any extension as that format
    odd.write_text(json.dumps({"id": "forced", "text": "x"}) + "\n")
    assert drain(FileSource(odd, format="jsonl"), 2)[0].records[0]["id"] == "forced"


def test_read_json_bytes() -> None:
    assert read_json_bytes(b'{"id": 1, "image": "' + base64.b64encode(b"xy") + b'"}') == {"id": 1, "image": b"xy"}
    with pytest.raises(ValueError, match="invalid JSON"):
        read_json_bytes(b"{")
    with pytest.raises(ValueError, match="a string"):
        read_json_bytes(b'"hello"')
