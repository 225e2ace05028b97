"""benchmarks/cpu_cost.py, the cost model the throughput benchmarks report: CPU seconds read from /proc
for a real child process, and the per-item table built from per-process CPU (pool shares of the
forward pass, the critical process, the projections)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cpu_cost import CpuWindow, ProcCost, cost_table, costs, median_tables  # noqa: E402

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(0.5)\n"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_window_reads_a_child_process_cpu_time() -> None:
    win = CpuWindow([], every_s=0.05).open()
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    win.extra += [busy.pid, idle.pid]
    win.follow_threads([busy.pid])
    busy.wait()
    idle.wait()
    win.close()  # both exited: their last readings stand
    got = {p.role: p for p in costs(win, {busy.pid: "busy", idle.pid: "idle"})}
    assert 0.4 <= got["busy"].cpu_s <= 0.9  # its loop, plus the interpreter's start
    assert got["idle"].cpu_s < 0.3
    assert got["busy"].threads["main"] >= 0.4
    table = cost_table(list(got.values()), items=1000)
    rows = {r["role"]: r for r in table["rows"]}
    assert rows["busy"]["us_per_item"] == pytest.approx(got["busy"].cpu_s * 1000, abs=0.1)
    assert table["summary"]["critical"] == "busy"


def test_table_splits_the_forward_pass_over_the_pool_and_caps_by_the_busiest_single_process() -> None:
    procs = [ProcCost("driver", "graph", 1.0), ProcCost("selector/writer", "graph", 0.5),
             ProcCost("embedder-0", "graph", 2.0), ProcCost("embedder-1", "graph", 2.0),
             ProcCost("raylet", "ray", 0.1)]
    t = cost_table(procs, items=1000, forward_us=3000.0, items_per_s=400.0, embed_only_items_per_s=500.0)
    rows = {r["role"]: r for r in t["rows"]}
    s = t["summary"]
    assert rows["embedder-0"]["non_embed_us_per_item"] == 500.0  # 2000 less half of the 3000 us forward pass
    assert rows["driver"]["non_embed_us_per_item"] == 1000.0
    assert s["graph_us_per_item"] == 5500.0 and s["non_embed_us_per_item"] == 2500.0
    assert s["max_single_non_embed_us_per_item"] == 1000.0 and s["ray_system_us_per_item"] == 100.0
    assert s["critical"] == "driver" and s["critical_cap_items_per_s"] == 1000  # the pool is not a critical path
    assert s["projected_items_per_s_4"] == round(4e6 / 5600)  # the cores, before the cap
    assert s["projected_gpu_items_per_s_4"] == 1000  # forward off the CPU: the driver caps it
    assert s["ratio_to_embed_only"] == 0.8
    med = median_tables([t, cost_table([ProcCost("driver", "graph", 3.0)], items=1000)])
    assert {r["role"]: r["us_per_item"] for r in med["rows"]}["driver"] == 2000.0


def test_the_service_steady_rate_runs_from_its_first_commit_to_its_last_by_count() -> None:
    """pipeline_speed's rate beside the window: between the first and the last commit by count, the final
    drain's commit left out; and the wait from consuming to the first commit (lines as the service logs
    them: `pipelines.cli`'s format)."""
    from benchmarks.pipeline_speed import first_commit_s, steady_rate

    lines = ["2026-12-07 16:35:20,216 INFO curator.service: consuming t from 127.0.0.1:1 as group 'g'",
             "2026-12-07 16:35:21,000 INFO curator.service: commit 1 durable (1232 items decided by this run)",
             "2026-12-07 16:35:21,500 INFO curator.other: commit 9 durable (99999 items decided by this run)",
             "2026-12-07 16:35:22,000 INFO curator.service: commit 2 durable (2256 items decided by this run)",
             "2026-12-07 16:35:23,000 INFO curator.service: commit 3 durable (3280 items decided by this run)",
             "2026-12-07 16:35:26,000 INFO curator.service: commit 4 durable (3300 items decided by this run)"]
    assert steady_rate("\n".join(lines)) == pytest.approx((3280 - 1232) / 2.0)
    assert steady_rate("\n".join(lines[:-2])) is None  # two commits: no span without the drain's
    assert first_commit_s("\n".join(lines)) == pytest.approx(21.000 - 20.216)  # consuming to commit 1
    assert first_commit_s("\n".join(lines[1:])) is None


def test_wire_cost_decodes_the_same_records_in_either_place(tmp_path: Path) -> None:
    """benchmarks/wire_cost.py: both placements turn the same messages into every record (`one_pass`
    raises otherwise), and its table has every row and column it documents."""
    from benchmarks.pipeline_speed import dataset
    from benchmarks.wire_cost import COLS, messages, one_pass

    values = messages(dataset(40, 16), "arrow", 8)
    assert len(values) == 5
    for in_driver in (True, False):
        driver_us, actor_us, nbytes = one_pass(values, 16, in_driver)
        assert driver_us >= 0 and actor_us >= 0 and nbytes > 100
    out = tmp_path / "wire.json"
    r = subprocess.run([sys.executable, "benchmarks/wire_cost.py", "--items", "32", "--repeats", "1", "--json", str(out)],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(x["wire"], x["decoded_in"]) for x in rows] == [("json", "driver"), ("json", "embedder"),
                                                          ("arrow", "driver"), ("arrow", "embedder")]
    assert all(set(x) == set(COLS) for x in rows) and rows[1]["driver_ratio"] is not None


def test_the_indexed_projection_counts_the_rebuilds_of_an_approximate_index(capsys: pytest.CaptureFixture) -> None:
    from benchmarks.pipeline_cost import indexed_cost, print_indexed

    ix = indexed_cost(9000, 1000, 256, 256, n_queries=256, warm=256)  # past auto_exact_max: IVF-PQ at 9,000
    small, big = ix["at_small"], ix["at_n"]
    assert (small["kind"], big["kind"]) == ("flat", "ivf-pq")
    assert small["rebuild_cpu_us_per_accepted_item"] == 0.0  # a flat index is never rebuilt
    assert big["rebuild_cpu_s"] > 0
    # the rebuild's CPU over the rows accepted since the last one (growth 4: three quarters of them)
    assert big["rebuild_cpu_us_per_accepted_item"] == pytest.approx(big["rebuild_cpu_s"] * 1e6 / (9000 * 0.75), rel=0.05)
    print_indexed(ix, {"rows": [{"role": "selector/writer", "us_per_item": 90.0}]})
    assert f"the index's rebuilds: {big['rebuild_cpu_us_per_accepted_item']} us per accepted item" in capsys.readouterr().out
