"""benchmarks/gpu_check.py works before anyone spends GPU time on it: its --smoke mode runs every part
(decode, model, select, e2e) tiny on the CPU, through the same code paths the GPU run takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--json", str(out),
                           "--work", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by = {p: [r for r in rows if r["part"] == p] for p in ("env", "decode", "model", "select", "e2e", "cpu")}
    assert all(by.values()), {p: len(v) for p, v in by.items()}
    assert not [r for r in rows if "skipped" in r]
    assert by["env"][0]["device"] == "cpu"
    assert {r["images"] for r in by["decode"][1:]} == {64} and all(r["images_per_s"] > 0 for r in by["decode"])
    assert by["decode"][1]["out_shape"] == [32, 3, 32, 32]  # curator-tiny's input, from its preprocess config
    assert by["model"][0]["model"] == "curator-tiny" and by["model"][0]["images_per_s"] > 0
    sel = by["select"][0]
    assert sel["backend"] == "TorchFlatIndex" and sel["n_indexed"] == 3000 and sel["items_per_s"] > 0
    assert sel["decision_agreement"] >= 0.99 and sel["recall_at_4"] == 1.0  # fp32 torch search vs brute force
    assert [r["store_images"] for r in by["e2e"]] == [True, False]
    for r in by["e2e"]:
        assert r["images"] == r["decoded_on_device"] == 192  # every JPEG on the device path
        assert r["kept"] >= 0.9 * 192  # eps_dup 0: all kept but the crops' perceptual near-copies (hash rules)
        assert r["commits"] >= 2 and r["images_per_s"] > 0
        shares = [v for k, v in r.items() if k.endswith("_pct")]
        assert abs(sum(shares) - 100) < 1.0 and min(shares) >= -1.0
    for e in by["e2e"]:  # the cost model: the process's CPU per item, and each stage's, add up
        run = f"e2e store_images={e['store_images']}"
        process = [r for r in by["cpu"] if r["run"] == run and "process" in r]
        stages = {r["stage"]: r for r in by["cpu"] if r["run"] == run and "stage" in r}
        assert len(process) == 1 and process[0]["us_per_item"] > 0
        assert process[0]["cap_items_per_s"] == round(1e6 / process[0]["us_per_item"])
        assert set(stages) == {"read+other", "validate", "decode", "embed", "select", "write", "commit"}
        assert all(s["us_per_item"] >= 0 and s["wall_us_per_item"] >= 0 for k, s in stages.items() if k != "read+other")
        assert stages["embed"]["us_per_item"] > 0 and stages["select"]["us_per_item"] > 0
        total = sum(s["us_per_item"] for s in stages.values())
        assert abs(total - process[0]["us_per_item"]) <= 0.01 * process[0]["us_per_item"] + 1
    assert "[e2e]" in proc.stdout and "[cpu]" in proc.stdout and "gpu_check done" in proc.stdout
