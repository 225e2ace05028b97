"""CPU microseconds per item, per process and per stage, read from the OS: the cost model behind the
throughput benchmarks (`pipeline_speed`, `gpu_check`).

Wall-clock items/s depends on what else the machine runs; the CPU seconds a process spends per item
hardly do. So the benchmarks read each process's CPU time (user + system, all its threads) from
/proc before and after the measured window and divide by the items decided in it. From those
figures, per run:

- ``graph_us_per_item``: the driver and every actor, summed -- the CPU an item costs the graph;
- ``forward_us_per_item``: the model's forward pass (measured on its own), and
  ``non_embed_us_per_item``: the graph's figure without it -- what stays on the CPU when the model
  runs on a GPU;
- ``critical``: the busiest process that does not grow with the cores (the driver, the
  selector/writer, each selector shard -- not the embedder pool). Its Python runs on one core, so
  ``critical_cap_items_per_s`` = 1e6 / its us per item bounds the service whatever the machine;
- ``projected_items_per_s_C``: a projection, not a measurement, for C cores: min(C * 1e6 / total us
  per item, the cap) with the model on the CPU, and (``projected_gpu_items_per_s_C``) with its
  forward pass moved off the CPU. The total counts Ray's own processes (raylet, GCS) too.

Linux only (/proc). Clock ticks are 10 ms: windows of seconds give figures to about 1%.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CORES = (4, 8, 16)
#: roles whose processes grow with the cores (the pool); every other graph process is one of its kind
POOL_PREFIXES = ("embedder", "embed worker")


@dataclass
class Reading:
    """One process at one moment: its CPU seconds, name and title (Ray workers retitle themselves)."""

    pid: int
    start: int  # start time in ticks since boot: (pid, start) names a process even when pids are reused
    ppid: int
    comm: str
    title: str
    cpu_s: float


def _stat(path: str) -> tuple[str, list[str]]:
    with open(path) as fh:
        st = fh.read()
    return st[st.index("(") + 1:st.rindex(")")], st[st.rindex(")") + 2:].split()


def read(pid: int) -> Reading | None:
    """The process's CPU seconds now (user + system, every thread), or None once it is gone."""
    try:
        comm, f = _stat(f"/proc/{pid}/stat")
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            title = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, ValueError, IndexError):
        return None
    return Reading(pid, int(f[19]), int(f[1]), comm, title, (int(f[11]) + int(f[12])) / TICK)


def threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread group of a process: 'main', then native threads by name (digits
    dropped), and 'python threads' (Python's other threads carry the process's name)."""
    out: dict[str, float] = {}
    try:
        comm, _ = _stat(f"/proc/{pid}/stat")
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            name, f = _stat(f"/proc/{pid}/task/{tid}/stat")
        except (OSError, ValueError, IndexError):
            continue
        if int(tid) == pid:
            key = "main"
        elif name == comm or name.startswith(("ray::", "python")):  # named after the process at their start
            key = "python threads"
        else:
            key = re.sub(r"[\d_.:-]+$", "", name)
        out[key] = out.get(key, 0.0) + (int(f[11]) + int(f[12])) / TICK
    return out


def tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                _, f = _stat(f"/proc/{d}/stat")
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


class CpuWindow:
    """CPU seconds of every process under `roots` (and of `extra` pids) over a window.

    A thread reads them every `every_s` seconds, so a process that exits inside the window keeps its
    last reading, and one that starts inside it counts from zero. `open()` and `close()` take a
    reading of everything at once (threads included); `seconds()` is then each process's CPU in
    between, with the titles it was seen under."""

    def __init__(self, roots: Iterable[int], extra: Iterable[int] = (), every_s: float = 0.1) -> None:
        self.roots, self.extra, self.every_s = list(roots), list(extra), every_s
        self.base: dict[tuple[int, int], Reading] = {}
        self.last: dict[tuple[int, int], Reading] = {}
        self.titles: dict[tuple[int, int], set[str]] = {}
        self.threads0: dict[tuple[int, int], dict[str, float]] = {}
        self.threads1: dict[tuple[int, int], dict[str, float]] = {}
        self.followed: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = self.t1 = 0.0

    def _sample(self, with_threads: bool = False) -> dict[tuple[int, int], Reading]:
        got = {}
        for pid in dict.fromkeys(tree(self.roots) + self.extra):
            r = read(pid)
            if r is None:
                continue
            key = (r.pid, r.start)
            got[key] = r
            self.last[key] = r
            self.titles.setdefault(key, set()).add(r.title)
            if with_threads or (self._thread and pid in self.followed):
                got_threads = threads(pid)
                if got_threads:  # not gone meanwhile
                    (self.threads1 if self._thread else self.threads0)[key] = got_threads
        return got

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def follow_threads(self, pids: Iterable[int]) -> None:
        """Also read these processes' threads at every sample (so one that exits keeps its breakdown)."""
        self.followed.update(pids)

    def open(self) -> CpuWindow:
        self.base = self._sample(with_threads=True)
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="cpu-window", daemon=True)
        self._thread.start()
        return self

    def close(self) -> CpuWindow:
        self.t1 = time.perf_counter()
        self._sample(with_threads=True)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self

    def seconds(self) -> list[tuple[Reading, float, set[str], dict[str, float]]]:
        """(last reading, CPU seconds in the window, titles seen, CPU seconds per thread group)."""
        out = []
        for key, r in self.last.items():
            b = self.base.get(key)
            cpu = r.cpu_s - (b.cpu_s if b else 0.0)
            t0, t1 = self.threads0.get(key, {}), self.threads1.get(key, {})
            per_thread = {k: v - t0.get(k, 0.0) for k, v in t1.items()}
            out.append((r, cpu, self.titles[key], per_thread))
        return out


def ray_role(comm: str, titles: set[str]) -> tuple[str, str] | None:
    """(role, group) of a process of the local Ray instance from its name and the titles Ray gave it
    (``ray::<actor class>`` or ``ray::<task>``, ``ray::IDLE`` between tasks), else None."""
    t = " ".join(sorted(titles))
    if comm in ("raylet", "gcs_server"):
        return comm, "ray"
    if "Agent" in t or "/ray/" in t and "ray::" not in t:  # the dashboard and runtime-env agents, monitors
        return "ray other", "ray"
    for key, role in (("SelectWriteActor", "selector/writer"), ("ShardActor", "selector shards"),
                      ("EmbedWorker", "embed worker"), ("MapWorker", "embed worker"),
                      ("StageActor", "embedder (StageActor)")):
        if key in t:
            return role, "graph"
    if titles <= {"ray::IDLE"}:  # never seen running anything: Ray's pool of idle workers
        return "ray idle workers", "ray"
    if "ray::" in t:  # task workers seen running a task: Ray Data's read tasks
        return "task workers (reads)", "graph"
    return None


@dataclass
class ProcCost:
    """One process's (or one role's, summed) CPU over a window."""

    role: str
    group: str  # 'graph' (the driver, the actors), 'ray' (Ray's own processes), 'outside' (not the service's)
    cpu_s: float
    pids: list[int] = field(default_factory=list)
    threads: dict[str, float] = field(default_factory=dict)


def costs(window: CpuWindow, known: dict[int, str], outside: dict[int, str] | None = None,
          min_cpu_s: float = 0.0) -> list[ProcCost]:
    """The window's processes by role: `known` pids (role by pid: the driver, the actors the graph
    reports), then Ray's processes by name and title, summed per role; processes of neither kind
    are dropped unless named in `outside` (reported, never counted)."""
    outside = outside or {}
    by: dict[str, ProcCost] = {}
    for r, cpu, titles, per_thread in window.seconds():
        if r.pid in known:
            role, group = known[r.pid], "graph"
        elif r.pid in outside:
            role, group = outside[r.pid], "outside"
        else:
            rg = ray_role(r.comm, titles)
            if rg is None:
                continue
            role, group = rg
        c = by.setdefault(role, ProcCost(role, group, 0.0))
        c.cpu_s += cpu
        c.pids.append(r.pid)
        for k, v in per_thread.items():
            c.threads[k] = c.threads.get(k, 0.0) + v
    return [c for c in by.values() if c.cpu_s >= min_cpu_s or c.role in known.values()]


def is_pool(role: str) -> bool:
    return role.startswith(POOL_PREFIXES)


def cost_table(procs: list[ProcCost], items: int, forward_us: float | None = None,
               items_per_s: float | None = None, embed_only_items_per_s: float | None = None) -> dict[str, Any]:
    """Rows (per process: ``role``, ``pids``, ``group``, ``cpu_s``, ``us_per_item``,
    ``non_embed_us_per_item``, ``top_threads``) and the summary the module docstring names.

    A pool process's non-embedding figure is its own minus its share of the forward pass (shares in
    proportion to the pool's CPU: the pool shares the items)."""
    n = max(items, 1)
    pool_us = sum(p.cpu_s for p in procs if p.group == "graph" and is_pool(p.role)) * 1e6 / n
    fwd = min(forward_us or 0.0, pool_us) if pool_us else 0.0
    rows: list[dict[str, Any]] = []
    for p in sorted(procs, key=lambda p: ({"graph": 0, "ray": 1}.get(p.group, 2), -p.cpu_s)):
        us = p.cpu_s * 1e6 / n
        non = us * (1 - fwd / pool_us) if is_pool(p.role) and p.group == "graph" else us
        top = sorted(p.threads.items(), key=lambda kv: -kv[1])[:3]
        rows.append({"role": p.role, "pids": p.pids, "group": p.group, "cpu_s": round(p.cpu_s, 3),
                     "us_per_item": round(us, 1), "non_embed_us_per_item": round(non, 1),
                     "top_threads": ", ".join(f"{k} {v * 1e6 / n:.0f}" for k, v in top if v > 0)})
    graph = [r for r in rows if r["group"] == "graph"]
    graph_us = sum(r["us_per_item"] for r in graph)
    ray_us = sum(r["us_per_item"] for r in rows if r["group"] == "ray")
    single = [r for r in graph if not is_pool(r["role"])]
    crit = max(single, key=lambda r: r["us_per_item"]) if single else None
    s: dict[str, Any] = {"items": items, "graph_us_per_item": round(graph_us, 1),
                         "forward_us_per_item": round(fwd, 1) if forward_us is not None else None,
                         "non_embed_us_per_item": round(graph_us - fwd, 1),
                         "max_single_non_embed_us_per_item": round(max((r["non_embed_us_per_item"] for r in graph),
                                                                       default=0.0), 1),
                         "ray_system_us_per_item": round(ray_us, 1)}
    if crit is not None:
        cap = 1e6 / max(crit["us_per_item"], 1e-9)
        s.update({"critical": crit["role"], "critical_us_per_item": crit["us_per_item"],
                  "critical_cap_items_per_s": round(cap)})
        for c in CORES:
            s[f"projected_items_per_s_{c}"] = round(min(c * 1e6 / max(graph_us + ray_us, 1e-9), cap))
            s[f"projected_gpu_items_per_s_{c}"] = round(min(c * 1e6 / max(graph_us - fwd + ray_us, 1e-9), cap))
    if items_per_s is not None:
        s["items_per_s"] = round(items_per_s, 1)
        if embed_only_items_per_s:
            s["ratio_to_embed_only"] = round(items_per_s / embed_only_items_per_s, 3)
    return {"rows": rows, "summary": s}


def median_tables(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs: per role (us per item), and per summary key (numbers; the critical role is
    the most frequent one). Each row keeps the runs' values in ``us_per_item_runs``."""
    roles = list(dict.fromkeys(r["role"] for t in tables for r in t["rows"]))
    rows: list[dict[str, Any]] = []
    for role in roles:
        got = [r for t in tables for r in t["rows"] if r["role"] == role]
        med = {k: round(statistics.median(r[k] for r in got), 3 if k == "cpu_s" else 1)
               for k in ("cpu_s", "us_per_item", "non_embed_us_per_item")}
        mid = sorted(got, key=lambda r: r["us_per_item"])[len(got) // 2]
        rows.append({"role": role, "group": got[0]["group"], **med, "top_threads": mid["top_threads"],
                     "us_per_item_runs": [r["us_per_item"] for r in got]})
    rows.sort(key=lambda r: ({"graph": 0, "ray": 1}.get(r["group"], 2), -r["us_per_item"]))
    summary: dict[str, Any] = {"runs": len(tables)}
    for k in dict.fromkeys(k for t in tables for k in t["summary"]):
        vals = [t["summary"][k] for t in tables if t["summary"].get(k) is not None]
        if not vals:
            summary[k] = None
        elif all(isinstance(v, (int, float)) for v in vals):
            summary[k] = round(statistics.median(vals), 3)
        else:
            summary[k] = max(set(vals), key=vals.count)
    return {"rows": rows, "summary": summary}


TARGETS = (("non_embed_us_per_item", 150.0, "<="), ("max_single_non_embed_us_per_item", 50.0, "<="),
           ("ratio_to_embed_only", 0.9, ">="))


def print_table(title: str, table: dict[str, Any], stages: dict[str, float] | None = None) -> None:
    """The per-process table, the summary with projections, the targets, and (given) the stages'
    own seconds per item."""
    rows, s = table["rows"], table["summary"]
    print(f"\n{title}")
    w = max(24, *(len(r["role"]) for r in rows))
    print(f"{'process (role)':<{w}} | {'group':>7} | {'cpu_s':>8} | {'us/item':>8} | {'non-embed':>9} | top threads (us/item)")
    print(f"{'-' * w}-|---------|----------|----------|-----------|----------------------")
    for r in rows:
        print(f"{r['role']:<{w}} | {r['group']:>7} | {r['cpu_s']:>8.2f} | {r['us_per_item']:>8.1f} | "
              f"{r['non_embed_us_per_item']:>9.1f} | {r['top_threads']}")
    for k, v in s.items():
        if v is None or k == "runs":
            continue
        label = k + (" (projection)" if k.startswith("projected") else "")
        print(f"  {label:<44} {v}")
    for k, bound, op in TARGETS:
        v = s.get(k)
        if v is None:
            continue
        ok = v <= bound if op == "<=" else v >= bound
        miss = "" if ok else f" (missed by {abs(v - bound):.{3 if bound < 10 else 0}f})"
        print(f"  target {k} {op} {bound:g}: {'met' if ok else 'MISSED'}{miss}")
    if stages:
        print("  stage seconds the batches carry (wall, in their process), us/item: "
              + ", ".join(f"{k} {v:.0f}" for k, v in stages.items()))
    print(flush=True)
