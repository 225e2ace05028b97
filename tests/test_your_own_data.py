"""The README's "Your own data" commands, run as written on a folder of photos and a JSONL of pairs.

The one change: `curator ingest` gets the tiny offline CLIP (random weights), since tests cannot
download ViT-B-32's. Everything else -- report, query, export, a re-run after adding files -- is the
README's text, run by the `curator` command in a shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.photos import encode, photo, write_photo_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = "--embedder.model curator-tiny --embedder.pretrained '' --embedder.device cpu --selector.align-mode off"


def readme_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("### Your own data", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def run(cmd: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if cmd.startswith("curator ingest"):
        cmd = f"{cmd} {TINY} -q"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r


def make_inputs(tmp: Path) -> int:
    n = write_photo_folder(tmp / "photos", per_class=6, copies=2)
    imgs = tmp / "images"
    imgs.mkdir()
    rows = []
    for i in range(30):  # a JSONL that names its images relative to itself, as img2dataset-style metadata does
        (imgs / f"{i:04d}.jpg").write_bytes(encode(photo(500 + i, "boats" if i % 2 else "trees"), "JPEG"))
        rows.append({"key": f"{i:04d}", "url": f"images/{i:04d}.jpg", "caption": f"picture number {i}"})
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return n


def count(cwd: Path, run_dir: str, sql: str) -> int:
    out = run(f"curator query {run_dir} {shlex.quote(sql)} --format json", cwd).stdout
    return int(json.loads(out)[0]["n"])


def test_your_own_data_as_the_readme_says(tmp_path: Path) -> None:
    n_photos = make_inputs(tmp_path)
    cmds = readme_commands()
    assert [c.split()[1] for c in cmds] == ["ingest", "ingest", "report", "query", "export"]
    for cmd in cmds:
        out = run(cmd, tmp_path)
        if cmd.startswith("curator query"):
            assert "kept" in out.stdout
    assert (tmp_path / "runs/photos/report/index.html").stat().st_size > 10_000
    assert count(tmp_path, "runs/photos", "SELECT count(*) AS n FROM decisions") == n_photos
    assert count(tmp_path, "runs/pairs", "SELECT count(*) AS n FROM decisions") == 30
    assert count(tmp_path, "runs/pairs", "SELECT count(*) AS n FROM quarantine") == 0
    kept = count(tmp_path, "runs/photos", "SELECT count(*) AS n FROM kept")
    exported = [p for p in (tmp_path / "exported/photos").rglob("*") if p.suffix in (".jpg", ".png")]
    assert len(exported) == kept > 0
    # the re-run the README promises: after adding files, only the new items are decided
    (tmp_path / "photos" / "boats" / "zzz_new.jpg").write_bytes(encode(photo(9999, "boats"), "JPEG"))
    (tmp_path / "photos" / "boats" / "aaa_new.jpg").write_bytes(encode(photo(9998, "boats"), "JPEG"))
    run(cmds[0], tmp_path)
    assert count(tmp_path, "runs/photos", "SELECT count(*) AS n FROM decisions") == n_photos + 2
    assert count(tmp_path, "runs/photos", "SELECT count(DISTINCT source) AS n FROM decisions") == n_photos + 2
