"""`curator export`: a curated image folder written as WebDataset shards, an ImageFolder and Parquet,
read back with the standard readers (tarfile, torchvision's ImageFolder, pyarrow); images the run
did not store come from the input files, byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curator.store import read_table
from curator.store.export import ExportError, export
from tests.photos import CLASSES, ingest_photos, write_photo_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, run directory): 3 classes of photo-like JPEGs and PNGs with near-duplicate copies,
    curated without storing the images (store.store_images = false)."""
    base = tmp_path_factory.mktemp("export")
    write_photo_folder(base / "imgs", per_class=8, copies=2)
    return base / "imgs", ingest_photos(base / "imgs", base / "run", store_images=False)


def _kept(run: Path) -> dict[str, dict]:
    kept = read_table(run, "kept").drop_columns(["embedding", "text_embedding"]).to_pylist()
    assert kept and all(r["image"] is None for r in kept)  # nothing stored: every image is read back
    return {r["id"]: r for r in kept}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_webdataset_shards_as_img2dataset_writes_them(photos: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = photos
    kept = _kept(run)
    out = tmp_path / "wds"
    s = export(run, "webdataset", out, shard_size=10)
    assert s.written == s.kept == len(kept) and s.read_back == len(kept) and not s.problems
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == [f"{i:05d}.tar" for i in range(-(-len(kept) // 10))]
    seen = {}
    for shard in shards:
        samples: dict[str, dict[str, bytes]] = defaultdict(dict)
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                samples[key][ext] = tf.extractfile(m).read()
        assert all(k.startswith(shard.stem) and len(k) == 6 for k in samples)  # shard + index in the shard
        index = pq.read_table(out / f"{shard.stem}.parquet").to_pylist()
        stats = json.loads((out / f"{shard.stem}_stats.json").read_text())
        assert stats["count"] == stats["successes"] == len(index) == len(samples)
        assert {r["key"] for r in index} == set(samples) and {r["status"] for r in index} == {"success"}
        for key, members in samples.items():
            meta = json.loads(members["json"])
            item = kept[meta["id"]]
            assert meta["key"] == key and meta["decision"] == item["decision"]
            assert meta["gain"] == pytest.approx(item["gain"]) and meta["gain_norm"] == pytest.approx(item["gain_norm"])
            assert int(members["cls"]) == item["label"] == meta["label"]
            image = members.get("jpg") or members["png"]  # each image in its own format, bytes unchanged
            assert _sha(image) == meta["sha256"] == _sha((root / meta["id"]).read_bytes())
            assert (members.get("txt") is not None) == (item["text"] is not None)
            seen[meta["id"]] = key
    assert set(seen) == set(kept)


def test_imagefolder_reads_with_torchvision(photos: tuple[Path, Path], tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder

    root, run = photos
    kept = _kept(run)
    out = tmp_path / "folder"
    s = export(run, "imagefolder", out)
    assert s.written == len(kept) and not s.problems
    ds = ImageFolder(str(out))
    assert len(ds) == len(kept) and ds.classes == sorted(CLASSES)
    meta = {r["file_name"]: r for r in map(json.loads, (out / "metadata.jsonl").read_text().splitlines())}
    assert len(meta) == len(kept)
    for path, cls in ds.samples:
        m = meta[Path(path).relative_to(out).as_posix()]
        item = kept[m["id"]]
        assert cls == item["label"]  # sorted class folders give the curated labels
        assert m["decision"] == item["decision"] and m["gain"] == pytest.approx(item["gain"])
        assert _sha(Path(path).read_bytes()) == _sha((root / m["id"]).read_bytes())
    image, label = ds[0]
    assert image.size == (80, 64) and label == 0


def test_parquet_has_every_kept_row_with_its_image(photos: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = photos
    kept = _kept(run)
    out = tmp_path / "pq"
    s = export(run, "parquet", out, shard_size=7)
    assert s.written == len(kept) and s.files == -(-len(kept) // 7)
    assert all(pq.ParquetFile(p).metadata.num_rows <= 7 for p in out.glob("*.parquet"))
    tbl = pq.read_table(out)
    assert tbl.num_rows == len(kept) and {"gain", "gain_norm", "decision", "embedding"} <= set(tbl.schema.names)
    for r in tbl.drop_columns(["embedding", "text_embedding"]).to_pylist():
        assert r["image"] == (root / r["id"]).read_bytes()
        assert r["decision"] == kept[r["id"]]["decision"] and r["gain"] == pytest.approx(kept[r["id"]]["gain"])


def test_an_input_gone_is_reported_and_bad_requests_are_user_errors(photos: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    root, run = photos
    kept = _kept(run)
    gone = root / sorted(kept)[0]
    data = gone.read_bytes()
    gone.unlink()
    try:
        s = export(run, "webdataset", tmp_path / "wds")
    finally:
        gone.write_bytes(data)
    assert s.written == len(kept) - 1 and sum(s.problems.values()) == 1
    index = pq.read_table(tmp_path / "wds" / "00000.parquet").to_pylist()
    failed = [r for r in index if r["status"] != "success"]
    assert len(failed) == 1 and failed[0]["id"] == sorted(kept)[0] and "cannot be read back" in failed[0]["error_message"]
    with pytest.raises(ExportError, match="not an empty folder"):
        export(run, "parquet", tmp_path / "wds")
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "export", str(run), str(tmp_path / "wds"), "--format",
                        "imagefolder"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "not an empty folder" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "export", str(run), str(tmp_path / "cli"), "--format",
                        "webdataset"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and f"exported {len(kept)} of {len(kept)} kept items" in r.stdout, r.stderr
