"""docs/extending.md's worked example, run as written: the user's filter module and curator.toml from the
page, in a folder outside the package, through `curator ingest` (the commands of its shell block) and
`curator serve` on the same files, which must decide the same (parity, Ray). Also the page's index kind.

The one change to the page's commands: `curator ingest` and `curator serve` get the tiny offline CLIP
(random weights), since tests cannot download ViT-B-32's, and the service a free port.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.photos import encode, photo, write_photo_folder

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "extending.md"
TINY = "--embedder.model curator-tiny --embedder.pretrained '' --embedder.device cpu --selector.align-mode off"
SERVE = "--service.port 0 --service.embed-actors 2 --service.embed-num-cpus 0.5 --service.selector-num-cpus 0.5"


def blocks(lang: str) -> dict[str, str]:
    """The page's code blocks of one language that start with a `# FILE` line, by file name."""
    out = {}
    for body in re.findall(rf"```{lang}\n(.*?)```", PAGE.read_text(), re.S):
        first = body.splitlines()[0]
        if first.startswith("# ") and "." in first and " " not in first[2:].strip():
            out[first[2:].strip()] = body
    return out


def commands() -> list[str]:
    block = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)[-1]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def run_script(lines: list[str], cwd: Path, timeout: int = 300) -> str:
    """The lines as one shell script (an `export` carries to the next line), stopping at the first failure."""
    script = "set -e\n" + "\n".join(f"{ln} {TINY} -q" if ln.startswith("curator ingest") else
                                    f"{ln} {TINY} {SERVE}" if ln.startswith("curator serve") else ln
                                    for ln in lines)
    r = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=env(), timeout=timeout)
    assert r.returncode == 0, f"{script}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r.stdout


#: What the test puts among the photos for each filter to catch, and the reason it must give.
ODD_ONES = {
    "boats/small.jpg": "filter image_resolution: 32 < min 64",
    "cats/panorama.jpg": "filter aspect_ratio: 3.125 > max 2",
    "trees/grey.png": "filter colourful: 0 < min 15",
    "trees/short.jpg": "filter caption_words: 1 < min 3",
}


def make_photos(root: Path) -> int:
    n = write_photo_folder(root, per_class=4, copies=1)
    (root / "boats/small.jpg").write_bytes(encode(photo(71, "boats", (40, 32)), "JPEG"))
    (root / "cats/panorama.jpg").write_bytes(encode(photo(72, "cats", (200, 64)), "JPEG"))
    (root / "trees/grey.png").write_bytes(encode(photo(73, "trees").convert("L").convert("RGB"), "PNG"))
    (root / "trees/short.jpg").write_bytes(encode(photo(74, "trees"), "JPEG"))
    (root / "trees/short.txt").write_text("trees")
    return n + len(ODD_ONES)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """The page's module and config in a folder of photos; the shell block's commands up to `curator serve`."""
    work = tmp_path_factory.mktemp("extending")
    files = {**blocks("python"), **blocks("toml")}
    for name in ("myfilters.py", "curator.toml"):
        (work / name).write_text(files[name])
    n = make_photos(work / "photos")
    cmds = commands()
    assert [c.split()[1] if c.startswith("curator") else c.split()[0] for c in cmds] == [
        "export", "ingest", "query", "query", "query", "serve"]
    out = run_script([c for c in cmds if not c.startswith("curator serve")], work)
    return work, n, out


def decisions(run: Path) -> list[dict]:
    from curator.store import read_table

    t = read_table(run, "decisions").sort_by("id")
    return t.select(["id", "decision", "reason", "filters", "max_sim", "gain", "dup_of"]).to_pylist()


def test_the_worked_example_filters_what_it_says_in_process(ingested: tuple[Path, int, str]) -> None:
    work, n, out = ingested
    rows = decisions(work / "runs/photos")
    assert len(rows) == n and len({r["id"] for r in rows}) == n  # one decision per item
    filtered = {r["id"]: r["reason"] for r in rows if r["decision"] == "dropped-filtered"}
    assert {k.split("/")[1]: v for k, v in filtered.items()} == {k.split("/")[1]: v for k, v in ODD_ONES.items()}
    for r in rows:  # every filter's score for every item, kept ones included; NaN (null) where it does not apply
        scores = dict(r["filters"])
        assert set(scores) == {"image_resolution", "aspect_ratio", "caption_words", "colourful"}
        assert scores["image_resolution"] is not None and scores["colourful"] is not None
    kept = [r for r in rows if r["decision"] == "kept"]
    assert kept and all(dict(r["filters"])["colourful"] >= 15 for r in kept)
    assert any(dict(r["filters"])["caption_words"] is None for r in kept)  # no caption: kept
    assert "dropped-filtered" in out and "filter colourful: 0 < min 15" in out  # the page's queries print them


def test_the_page_index_kind_is_trained_and_searched(tmp_path: Path) -> None:
    (tmp_path / "mykinds.py").write_text(blocks("python")["mykinds.py"])
    sys.path.insert(0, str(tmp_path))
    try:
        import numpy as np

        from curator.config import IndexConfig, load_config
        from curator.index import VectorIndex

        assert load_config(None, {"index": {"kind": "mykinds:IVFHNSW"}}).index.kind == "mykinds:IVFHNSW"
        cfg = IndexConfig(kind="mykinds:IVFHNSW", ivf_train_size=1024, ivf_nlist=16)
        idx = VectorIndex(16, cfg)
        x = np.random.default_rng(0).normal(size=(1200, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        idx.add(x, [str(i) for i in range(len(x))])
        idx.settle()  # trained and built from the first 1024 items, as the page says
        import faiss

        assert idx.kind == "mykinds:IVFHNSW" and idx.built_at == 1024
        assert isinstance(faiss.downcast_index(idx.index.quantizer), faiss.IndexHNSW)
        sims, rows = idx.search(x[:5], 1)
        assert np.allclose(sims[:, 0], 1.0, atol=1e-4) and rows[:, 0].tolist() == [0, 1, 2, 3, 4]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mykinds", None)


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_the_worked_example_serves_with_the_same_decisions(ingested: tuple[Path, int, str]) -> None:
    """`curator serve` (the user's filter in two embedder actors) decides what `curator ingest` decided."""
    work, n, _ = ingested
    run_script([c for c in commands() if c.startswith(("export", "curator serve"))], work, timeout=540)
    a, b = decisions(work / "runs/photos"), decisions(work / "runs/photos-ray")
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == n
    mask = re.compile(r"-?\d+\.\d+")
    for x, y in zip(a, b, strict=True):
        assert (x["decision"], x["dup_of"], x["filters"]) == (y["decision"], y["dup_of"], y["filters"]), x["id"]
        assert mask.sub("#", x["reason"]) == mask.sub("#", y["reason"]), x["id"]
        for c in ("max_sim", "gain"):
            assert (x[c] is None) == (y[c] is None) and (x[c] is None or math.isclose(x[c], y[c], abs_tol=1e-4))
    assert sum(r["decision"] == "dropped-filtered" for r in b) == len(ODD_ONES)
