"""The service on real Ray and the Kafka-protocol broker: stream order, config, a 3-partition topic
through `curator serve` into the same curated set as `curator ingest` on the file, SIGTERM drain and
resume, /healthz /readyz /metrics, files through the same graph; `ray job submit` (slow).

Also the helpers the crash and bad-input tests share (one Ray cluster per module, service
subprocesses that join it, decision tables to compare).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.kafka.ordering import OrderedMerge
from curator.batch import RawBatch
from curator.config import RunConfig
from curator.demo_data import demo_config, write_demo_inputs
from curator.records import KEPT_DECISIONS, Position, Rejection
from curator.store import read_manifest, read_table
from pipelines.config import ServeConfig, load_serve_config
from tests.conftest import KafkaTestBroker

REPO = Path(__file__).resolve().parents[1]
#: Columns of a decision that must agree between two runs of the same items (positions differ
#: between a file and a topic; the model id and fingerprint name the run, not the decision).
DECISION_COLS = ["id", "seq", "decision", "label_in", "label_out", "label_noisy", "dup_of",
                 "label_agreement", "gain", "gain_norm", "max_sim", "keep_prob"]
#: Scores agree to float rounding only: the selector scores a neighbour found in the index with
#: FAISS and one from the same batch with numpy, and batch boundaries follow the source's timing.
#: (Reasons quote the scores, so they are compared with their numbers masked.)
SCORE_COLS = {"label_agreement", "gain", "gain_norm", "max_sim", "keep_prob"}


# =====================================================================================
# Shared helpers
# =====================================================================================


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real local Ray for the module (the test process is its first driver); yields its address,
    which service subprocesses join with --service.ray-address."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=256 * 1024**2,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@dataclass
class Digits:
    stream: Path
    bootstrap: Path
    records: list[dict[str, Any]]


def digits_inputs(root: Path, seed: int = 0) -> Digits:
    ds = write_demo_inputs(root, seed)
    return Digits(root / "inputs" / "stream.parquet", root / "inputs" / "bootstrap.parquet", ds.stream)


def run_config(out: Path, digits: Digits, **store: Any) -> RunConfig:
    cfg = demo_config(out, 0, {"source": {"batch_size": 64}, "store": {"commit_every": 256, **store}})
    cfg.store.out = str(out)
    cfg.source.paths = [str(digits.stream)]
    cfg.source.bootstrap = [str(digits.bootstrap)]
    return cfg


def serve_config(run: RunConfig, broker: KafkaTestBroker | None, topic: str, ray_address: str,
                 kafka: dict[str, Any] | None = None, service: dict[str, Any] | None = None) -> ServeConfig:
    scfg = ServeConfig(run=run)
    if broker is not None:
        k = scfg.kafka
        k.bootstrap_servers, k.topic, k.group_id, k.api_version = broker.bootstrap, topic, f"g-{topic}", broker.api_version
        k.session_timeout_ms = 3000 if broker.is_mock else 10_000
        k.client = dict(broker.client)
        k.poll_timeout_ms = 100
        k.end_after_idle_s = 1.0
        for key, v in (kafka or {}).items():
            setattr(k, key, v)
    s = scfg.service
    s.ray_address, s.port, s.embed_actors = ray_address, 0, 2
    s.embed_num_cpus, s.selector_num_cpus, s.commit_interval_s = 0.5, 0.5, 2.0
    for key, v in (service or {}).items():
        setattr(s, key, v)
    return scfg


def write_config(scfg: ServeConfig, path: Path) -> Path:
    path.write_text(scfg.to_toml())
    assert load_serve_config(path).to_toml() == scfg.to_toml()  # round trip
    return path


def service_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    env.pop("RAY_ADDRESS", None)
    # the venv's scripts (curator, ray) on PATH, as in an activated environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class ServiceProcess:
    """`curator serve --config FILE` as a subprocess, its log in a file."""

    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait/kill
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "serve", "--config", str(config), *extra],
            cwd=REPO, env=service_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def port(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        while self._port is None:
            m = re.search(r"/metrics on http://127\.0\.0\.1:(\d+)", self.log())
            if m:
                self._port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"service did not start HTTP (rc={self.proc.poll()}):\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self._port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port()}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait(self, timeout_s: float = 180) -> int:
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"service did not finish in {timeout_s}s:\n{self.log()[-3000:]}") from None
        self._log.close()
        return rc

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()


def run_service(scfg: ServeConfig, tmp: Path, name: str, timeout_s: float = 180) -> ServiceProcess:
    sp = ServiceProcess(write_config(scfg, tmp / f"{name}.toml"), tmp / f"{name}.log")
    rc = sp.wait(timeout_s)
    assert rc == 0, sp.log()[-4000:]
    return sp


def produce_digits(broker: KafkaTestBroker, topic: str, records: list[dict[str, Any]], fmt: str = "json") -> None:
    from connectors.kafka.produce import produce_records

    assert produce_records(broker.bootstrap, topic, records, fmt=fmt, api_version=broker.api_version,
                           client=broker.client) == len(records)


def decisions(run_dir: Path | str, cols: list[str] | None = None) -> pa.Table:
    t = read_table(run_dir, "decisions")
    return t.select(cols or DECISION_COLS).sort_by([("id", "ascending")])


def kept_ids(run_dir: Path | str) -> list[str]:
    return sorted(read_table(run_dir, "kept").column("id").to_pylist())


def assert_same_decisions(a: Path | str, b: Path | str) -> None:
    da, db = decisions(a), decisions(b)
    assert da.num_rows == db.num_rows, (da.num_rows, db.num_rows)
    assert da.column("id").to_pylist() == db.column("id").to_pylist()
    ids = da.column("id").to_pylist()
    for c in DECISION_COLS:
        x, y = da.column(c).to_pylist(), db.column(c).to_pylist()
        if c in SCORE_COLS:
            diff = [(ids[i], x[i], y[i]) for i in range(len(x)) if (x[i] is None) != (y[i] is None)
                    or (x[i] is not None and not math.isclose(x[i], y[i], rel_tol=1e-5, abs_tol=1e-5))]
        else:
            diff = [(ids[i], x[i], y[i]) for i in range(len(x)) if x[i] != y[i]]
        assert not diff, f"column {c} differs in {len(diff)} rows, e.g. {diff[:5]}"
    ra, rb = (read_table(r, "decisions").select(["id", "reason"]).sort_by("id").column("reason").to_pylist()
              for r in (a, b))
    mask = re.compile(r"-?\d+\.\d+")
    assert [mask.sub("#", r) for r in ra] == [mask.sub("#", r) for r in rb]
    assert kept_ids(a) == kept_ids(b)


def group_committed(broker: KafkaTestBroker, topic: str, group: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    kw: dict[str, Any] = {"bootstrap_servers": broker.bootstrap.split(","), "group_id": group,
                          "enable_auto_commit": False}
    if broker.api_version:
        kw["api_version"] = tuple(int(x) for x in broker.api_version.split("."))
    c = KafkaConsumer(**kw)
    try:
        parts = sorted(c.partitions_for_topic(topic) or ())
        out = {}
        for p in parts:
            off = c.committed(TopicPartition(topic, p))
            if off is not None:
                out[p] = int(off)
        return out
    finally:
        c.close()


def ingest_files(run: RunConfig) -> dict[str, Any]:
    from pipelines.ingest import run_ingest

    return run_ingest(run, progress=False)


# =====================================================================================
# Stream order (no Ray)
# =====================================================================================


def _msgs(partition: int, n: int, rows: int = 1, first: int = 0) -> list[tuple[Position, dict[str, Any]]]:
    return [(Position("t", partition, o), {"id": f"p{partition}o{o}r{r}"}) for o in range(first, first + n)
            for r in range(rows)]


def _batch(items: list[tuple[Position, Any]]) -> RawBatch:
    b = RawBatch()
    for pos, rec in items:
        if isinstance(rec, Rejection):
            b.errors.append(rec)
        else:
            b.records.append(rec)
            b.positions.append(pos)
    return b


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 12), min_size=1, max_size=4), rows=st.integers(1, 3),
       polls=st.lists(st.integers(1, 9), min_size=1, max_size=30), pop_size=st.integers(1, 7))
def test_merge_order_is_offset_then_partition_whatever_the_polls(sizes: list[int], rows: int, polls: list[int],
                                                                  pop_size: int) -> None:
    """However the partitions' messages arrive (interleaving, poll sizes), the merge emits them in
    (offset, partition) order, never splitting a message, once every partition has ended."""
    per_part = {p: _msgs(p, n, rows) for p, n in enumerate(sizes)}
    expect = sorted((pos.offset, pos.partition, rec["id"]) for items in per_part.values() for pos, rec in items)
    m = OrderedMerge("t")
    m.assign(list(per_part), {p: 0 for p in per_part})
    queues = {p: list(items) for p, items in per_part.items()}
    got: list[tuple[int, int, str]] = []
    k = 0
    while any(queues.values()):
        p = sorted(q for q in queues if queues[q])[k % len([q for q in queues if queues[q]])]
        take = polls[k % len(polls)] * rows
        chunk, queues[p] = queues[p][:take], queues[p][take:]
        m.add(_batch(chunk))
        k += 1
        while True:
            can = m.available(pop_size)
            b = m.pop(pop_size)
            assert can == (0 if b is None else len(b))  # available() predicts pop() exactly
            if b is None:
                break
            offs = [pos.offset for pos in b.positions]
            assert all(offs.count(o) % rows == 0 for o in offs)  # whole messages only
            got += [(pos.offset, pos.partition, r["id"]) for pos, r in zip(b.positions, b.records, strict=True)]
        for q in queues:
            if not queues[q]:
                m.mark_position(q, sizes[q], caught_up=True)  # the partition is at its end offset
    m.end()
    while (b := m.pop(pop_size)) is not None:
        got += [(pos.offset, pos.partition, r["id"]) for pos, r in zip(b.positions, b.records, strict=True)]
    assert got == expect


def _rule_pop(m: OrderedMerge, limit: int) -> list[tuple[int, int]]:
    """The order rule stated directly, on a copy of the merge's state: emit the smallest (offset,
    partition) head while no empty partition that is not caught up may still deliver a smaller key
    (one whose next offset is unknown may deliver anything)."""
    queues = {p: [u.offset for u in q] for p, q in m.buf.items()}
    nxt, out, n = dict(m.next), [], 0
    while n < limit:
        heads = [(q[0], p) for p, q in queues.items() if q]
        if not heads:
            break
        head = min(heads)
        if any(not q and not m.caught_up.get(p) and (nxt.get(p) is None or (nxt[p], p) < head)
               for p, q in queues.items()):
            break
        off, p = head
        queues[p].pop(0)
        nxt[p] = off + 1
        out.append((p, off))
        n += 1
    return out


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "mark", "pop", "trim"]), st.integers(0, 4),
                              st.integers(1, 4), st.booleans()), min_size=1, max_size=40),
       known=st.lists(st.booleans(), min_size=5, max_size=5))
def test_merge_pops_what_the_order_rule_says(ops: list[tuple[str, int, int, bool]], known: list[bool]) -> None:
    """Whatever is buffered, marked caught up, trimmed or unknown, `pop` emits exactly the messages the
    rule allows, in its order, and `available` predicts it."""
    m = OrderedMerge("t")
    m.assign(list(range(5)), {p: 0 for p in range(5) if known[p]})
    end = dict.fromkeys(range(5), 0)  # next offset each partition's producer writes
    for op, p, k, flag in ops:
        if op == "add":
            m.add(_batch(_msgs(p, k, first=end[p] + (k if flag else 0))))  # flag: a gap before them
            end[p] += k * (2 if flag else 1)
        elif op == "mark":
            m.mark_position(p, end[p], caught_up=flag)
        elif op == "trim":
            first = m.trim(p, k)
            if first is not None:
                end[p] = first  # the consumer re-reads from there
        else:
            expect = _rule_pop(m, k)
            assert m.available(k) == len(expect)
            b = m.pop(k)
            assert ([] if b is None else [(q.partition, q.offset) for q in b.positions]) == expect
    expect = _rule_pop(m, 10**6)
    assert m.available(10**6) == len(expect) and m.items >= len(expect)


def test_merge_waits_for_a_partition_that_may_deliver_an_earlier_message() -> None:
    def pp(b: RawBatch | None) -> list[tuple[int, int]]:
        assert b is not None
        return [(p.partition, p.offset) for p in b.positions] + [(e.position.partition, e.position.offset)
                                                                  for e in b.errors]

    m = OrderedMerge("t")
    m.assign([0, 1, 2], {0: 0, 1: 0, 2: 5})  # partition 2 resumes at offset 5
    m.add(_batch(_msgs(0, 3)))
    assert pp(m.pop(10)) == [(0, 0)]  # key (0, 0) comes before anything partitions 1 and 2 can bring
    assert m.pop(10) is None and m.blockers() == [1]  # partition 1 may still deliver offset 0 < 1
    m.add(_batch(_msgs(1, 1)))
    assert pp(m.pop(10)) == [(1, 0), (0, 1)]
    assert m.blockers() == [1]  # partition 1 next at offset 1 < 2; partition 2 cannot come before 5
    m.mark_position(1, 1, caught_up=True)  # at its end offset: nothing to wait for
    assert pp(m.pop(10)) == [(0, 2)]
    # a rejected message takes its place in the order like any other; new data un-marks caught up
    m.add(_batch([(Position("t", 1, 1), Rejection(Position("t", 1, 1), "bad"))] + _msgs(2, 1, first=5)))
    m.add(_batch(_msgs(0, 2, first=3)))
    assert pp(m.pop(10)) == [(1, 1)]
    assert m.blockers() == [1]  # (2, 1) < (3, 0)
    m.mark_position(1, 2, caught_up=True)
    assert pp(m.pop(10)) == [(0, 3), (0, 4)]
    assert m.blockers() == [0]  # partition 0 may still bring offset 5, before (5, 2)
    m.end()
    assert pp(m.pop(10)) == [(2, 5)] and m.items == 0


def test_merge_counts_offsets_the_source_skipped() -> None:
    m = OrderedMerge("t")
    m.assign([0], {0: 0})
    m.add(_batch(_msgs(0, 2)))
    m.add(_batch(_msgs(0, 3, first=5)))  # 2..4 deleted by retention before they were read
    assert dict(m.gaps) == {0: 3}
    assert m.trim(0, 2) == 5  # keep offsets 0 and 1; the consumer seeks back to 5
    m.add(_batch(_msgs(0, 3, first=5)))  # re-read: no new gap
    assert dict(m.gaps) == {0: 3} and m.items == 5


def test_merge_arrival_order_never_waits() -> None:
    m = OrderedMerge("t", order="arrival")
    m.assign([0, 1])
    m.add(_batch(_msgs(1, 2)))
    m.add(_batch(_msgs(0, 1)))
    b = m.pop(10)
    assert b is not None and [(p.partition, p.offset) for p in b.positions] == [(1, 0), (1, 1), (0, 0)]


# =====================================================================================
# Configuration (no Ray)
# =====================================================================================


def test_serve_config_toml_and_flags(tmp_path: Path) -> None:
    from curator.config import ConfigError
    from curator.config_text import overrides_from_args
    from pipelines.cli import build_parser

    p = tmp_path / "serve.toml"
    p.write_text('[store]\nout = "x"\n[source]\npaths = ["a.parquet"]\n[kafka]\nbootstrap_servers = "h:9092"\n'
                 'topic = "t"\ndead_letter_topic = "dlq"\n[kafka.client]\nsecurity_protocol = "SSL"\n'
                 '[service]\nembed_actors = 3\nembed_num_gpus = 0.25\n')
    cfg = load_serve_config(p)
    assert cfg.kafka.client == {"security_protocol": "SSL"} and cfg.service.embed_actors == 3
    assert cfg.service.host == "127.0.0.1"  # loopback unless configured
    assert load_serve_config(p, {"service": {"port": "0"}, "kafka": {"client": '{"client_id": "a"}'}}).kafka.client == {"client_id": "a"}
    assert cfg.run.fingerprint() == load_serve_config(p, {"service": {"embed_actors": 1}}).run.fingerprint()
    args = build_parser().parse_args(["serve", "--config", str(p), "--service.embed-actors", "5",
                                      "--kafka.order", "arrival", "--selector.k-gain", "2"])
    ov = overrides_from_args(args)
    c2 = load_serve_config(args.config, ov)
    assert (c2.service.embed_actors, c2.kafka.order, c2.run.selector.k_gain) == (5, "arrival", 2)
    for bad, msg in [({"service": {"embed_actors": 0}}, "embed_actors"), ({"kafka": {"order": "x"}}, "order"),
                     ({"service": {"nope": 1}}, "unknown setting service.nope"), ({"kafka": {"client": "[1]"}}, "JSON"),
                     ({"service": {"port": "x"}}, "expected int")]:
        with pytest.raises(ConfigError, match=msg):
            load_serve_config(p, bad)
    with pytest.raises(ConfigError, match="no input"):
        load_serve_config(None, {})
    ex = load_serve_config(REPO / "deploy" / "curator.example.toml")  # the users' starting point loads
    assert ex.uses_kafka and ex.service.host == "127.0.0.1" and ex.kafka.dead_letter_topic


def test_serve_help_does_not_import_ray() -> None:
    code = ("import sys, argparse; import pipelines.cli as s; s.add_serve_command(argparse.ArgumentParser()"
            ".add_subparsers()); assert not [m for m in sys.modules if m.startswith(('ray', 'kafka'))]; "
            "from pipelines.cli import build_parser; build_parser(); assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=service_env())


# =====================================================================================
# On Ray and the broker
# =====================================================================================

@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return digits_inputs(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def ingest_baseline(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`curator ingest`'s loop (in-process, no Ray) over the stream file."""
    out = tmp_path_factory.mktemp("ingest") / "run"
    ingest_files(run_config(out, digits))
    return out


@pytest.fixture(scope="module")
def topic3(kafka_broker: KafkaTestBroker, digits: Digits) -> str:
    topic = kafka_broker.new_topic(3, "svc")
    produce_digits(kafka_broker, topic, digits.records)
    return topic


@pytest.mark.ray
@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_three_partition_topic_through_the_service_equals_ingest_on_files(
    ray_cluster: str, kafka_broker: KafkaTestBroker, topic3: str, digits: Digits, ingest_baseline: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "svc"
    scfg = serve_config(run_config(out, digits), kafka_broker, topic3, ray_cluster)
    t0 = time.monotonic()
    sp = run_service(scfg, tmp_path, "svc")
    elapsed = time.monotonic() - t0
    log = sp.log()
    assert f"curated set: {out.resolve()}" in log and "new run" in log
    assert_same_decisions(out, ingest_baseline)
    d = read_table(out, "decisions")
    topic_rows = d.filter(pc.equal(d.column("source"), topic3))  # the bootstrap file's rows have its identity tag
    assert set(topic_rows.column("partition").to_pylist()) == {0, 1, 2}
    n = len(digits.records)
    m = read_manifest(out)
    assert m is not None
    ends = {p: len(range(p, n, 3)) for p in range(3)}  # round robin
    assert {int(p): o for p, o in m["positions"][topic3].items()} == ends
    assert group_committed(kafka_broker, topic3, scfg.kafka.group_id) == ends  # committed after the manifest
    print(f"\n3-partition topic, {n} items through the service in {elapsed:.1f}s (process start included)")


@pytest.mark.ray
@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_sigterm_drains_commits_and_a_restart_resumes(
    ray_cluster: str, kafka_broker: KafkaTestBroker, topic3: str, digits: Digits, ingest_baseline: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "svc"
    # unbounded (runs until stopped), slowed by small commits so the SIGTERM lands mid-stream
    scfg = serve_config(run_config(out, digits, commit_every=64), kafka_broker, topic3, ray_cluster,
                        kafka={"end_after_idle_s": 0.0, "group_id": f"g-term-{topic3}"},
                        service={"max_inflight_batches": 1})
    sp = ServiceProcess(write_config(scfg, tmp_path / "a.toml"), tmp_path / "a.log")
    assert sp.get("/healthz")[0] == 200
    deadline = time.monotonic() + 90
    while sp.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline and sp.proc.poll() is None, sp.log()[-3000:]
        time.sleep(0.1)
    while (read_manifest(out) or {}).get("commit", 0) < 3:  # bootstrap + 2 stream commits
        assert time.monotonic() < deadline and sp.proc.poll() is None, sp.log()[-3000:]
        time.sleep(0.05)
    names = ("curator_items_in_total", "curator_items_out_total{decision=", "curator_kafka_lag{partition=",
             "curator_queue_items{stage=\"embed\"}", "curator_batch_seconds_bucket{le=",
             "curator_index_size", "curator_resident_memory_bytes{process=\"total\"}", "curator_commits_total",
             "curator_source_polls_total{result=\"data\"}")
    while True:  # the lag gauge is refreshed every 2 s: a fast stream can commit before its first refresh
        code, text = sp.get("/metrics")
        assert code == 200
        missing = [name for name in names if name not in text]
        if not missing:
            break
        assert time.monotonic() < deadline and sp.proc.poll() is None, (missing, sp.log()[-3000:])
        time.sleep(0.1)
    value = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("curator_")}
    assert value['curator_source_polls_total{result="data"}'] > 0  # counted as they happen, not only at the end
    sp.signal(signal.SIGTERM)
    assert sp.wait(60) == 0, sp.log()[-3000:]
    assert "SIGTERM: draining" in sp.log()
    m = read_manifest(out)
    assert m is not None
    positions = {int(p): o for p, o in m["positions"][topic3].items()}
    decided = read_table(out, "decisions").num_rows - 100  # minus the bootstrap
    assert sum(positions.values()) == decided
    assert group_committed(kafka_broker, topic3, scfg.kafka.group_id) == positions  # the drain committed both
    # a restart resumes from there and ends where an uninterrupted run ends
    # The actors' own INFO lines reach the service's log too (what a restart removed, and why, is there).
    # They come through Ray's log monitor (it polls every 0.5 s), so the restart stays unbounded and runs
    # until its line has come and the whole stream is committed.
    sp2 = ServiceProcess(write_config(scfg, tmp_path / "b.toml"), tmp_path / "b.log")
    total = read_table(ingest_baseline, "decisions").num_rows - 100
    actor_line = re.compile(rf"\(SelectWriteActor pid=\d+\).*curator\.stages: resuming \S+ from commit {m['commit']} ")
    deadline = time.monotonic() + 120
    while not (actor_line.search(sp2.log())
               and sum((read_manifest(out) or {}).get("positions", {}).get(topic3, {}).values()) == total):
        assert time.monotonic() < deadline and sp2.proc.poll() is None, sp2.log()[-3000:]
        time.sleep(0.1)
    sp2.signal(signal.SIGTERM)
    assert sp2.wait(60) == 0, sp2.log()[-3000:]
    assert f"resuming after commit {m['commit']}" in sp2.log()
    assert_same_decisions(out, ingest_baseline)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_files_through_the_graph_equal_ingest(ray_cluster: str, digits: Digits, ingest_baseline: Path,
                                              tmp_path: Path) -> None:
    """The same graph over files (in this process: the service joins the running Ray), resumable."""
    from pipelines.service import serve

    out = tmp_path / "files"
    scfg = serve_config(run_config(out, digits), None, "", ray_cluster)
    scfg.run.source.limit = 700  # stop part-way (at a batch boundary) ...
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert serve(scfg) == 0
        m = read_manifest(out)
        assert m is not None
        (row,) = next(iter(m["positions"].values())).values()  # one file: its one position (keyed by identity)
        assert 700 <= row < 700 + 64
        scfg.run.source.limit = 0  # ... and resume to the end
        assert serve(scfg) == 0
    finally:
        signal.signal(signal.SIGTERM, old)
    assert_same_decisions(out, ingest_baseline)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_ray_job_submit_runs_the_service(digits: Digits, tmp_path: Path) -> None:
    """`ray job submit --working-dir . -- curator serve ...` against `ray start --head`."""
    ray_bin = Path(sys.executable).with_name("ray")
    env = service_env()
    port, dash = 6390 + os.getpid() % 200, 8300 + os.getpid() % 200
    with socket.socket() as sock:  # the job agent's own port: the module's Ray holds the default (52365)
        sock.bind(("127.0.0.1", 0))
        agent = sock.getsockname()[1]
    head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=4",
                             f"--dashboard-port={dash}", "--include-dashboard=true",
                             f"--dashboard-agent-listen-port={agent}",
                             "--object-store-memory=268435456"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "job-run"
        scfg = serve_config(run_config(out, digits), None, "", "")
        cfgp = write_config(scfg, tmp_path / "job.toml")
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and head.poll() is None, "ray head did not start"
                time.sleep(1)
        while True:  # the dashboard answers before its job agent is up: Ray says to try again later
            r = subprocess.run([str(ray_bin), "job", "submit", f"--address=http://127.0.0.1:{dash}",
                                "--working-dir", ".", "--", "curator", "serve", "--config", str(cfgp)], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=400)
            if "No available agent" not in r.stderr or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert f"curated set: {out.resolve()}" in r.stdout, r.stdout[-3000:]
        assert "succeeded" in r.stdout
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started ...
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        current = Path("/tmp/ray/ray_current_cluster")  # ... but leaves this, which ray.init() would follow
        with contextlib.suppress(OSError):
            if current.read_text().strip() == f"127.0.0.1:{port}":
                current.unlink()
    ingest = tmp_path / "ingest"
    ingest_files(run_config(ingest, digits))
    assert_same_decisions(out, ingest)


def test_decision_tables_are_comparable_by_id(tmp_path: Path) -> None:
    """Sanity for the helpers: a run directory written twice by ingest agrees with itself."""
    d = digits_inputs(tmp_path / "d")
    a, b = tmp_path / "a", tmp_path / "b"
    ingest_files(run_config(a, d))
    ingest_files(run_config(b, d, commit_every=100))  # commit boundaries do not change decisions
    assert_same_decisions(a, b)
    dec = read_table(a, "decisions").to_pylist()
    assert {r["id"] for r in dec if r["decision"] in KEPT_DECISIONS} == set(kept_ids(a))
