"""Crash test: `curator serve` on a 3-partition topic, SIGKILLed at random points and restarted,
ends with exactly the kept set and decisions of an uninterrupted run with the same seed.

Kill points are drawn from a seeded RNG: some during startup (joining Ray, creating actors, the
bootstrap, joining the group), most once the committed manifest has passed a random point spread
over what is left of the stream, plus a random delay (mid-batch, mid-commit, between manifest and
offset commit). Half the kills also SIGKILL the
selector/writer actor, so a commit can be cut anywhere, not only the driver. 5 points in the default
suite, 20 under `make test-long`.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from curator.store import read_manifest, read_table
from tests.conftest import KafkaTestBroker
from tests.test_service import (  # noqa: F401 - fixtures
    Digits,
    ServiceProcess,
    assert_same_decisions,
    digits,
    group_committed,
    produce_digits,
    ray_cluster,
    run_config,
    run_service,
    serve_config,
    write_config,
)

pytestmark = [pytest.mark.ray, pytest.mark.kafka]


@pytest.fixture(scope="module")
def crash_topic(kafka_broker: KafkaTestBroker, digits: Digits) -> str:  # noqa: F811
    topic = kafka_broker.new_topic(3, "crash")
    produce_digits(kafka_broker, topic, digits.records)
    return topic


def crash_config(out: Path, digits: Digits, broker: KafkaTestBroker, topic: str, ray: str,  # noqa: F811
                 group: str, bounded: bool, shards: int = 1):
    # small batches and commits, one batch in flight: many commits, so kills land in all states
    run = run_config(out, digits, commit_every=96)
    run.source.batch_size = 32
    run.selector.shards, run.selector.probe = shards, 1  # with shards, items compare within their own only
    return serve_config(run, broker, topic, ray, kafka={"group_id": group, "end_after_idle_s": 1.0 if bounded else 0.0},
                        service={"max_inflight_batches": 2, "commit_interval_s": 0.5})


def _uninterrupted(ray: str, broker: KafkaTestBroker, topic: str, digits: Digits, tmp: Path,  # noqa: F811
                   shards: int) -> Path:
    out = tmp / "run"
    run_service(crash_config(out, digits, broker, topic, ray, f"g-base{shards}-{topic}", True, shards), tmp, "base")
    return out


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster: str, kafka_broker: KafkaTestBroker, crash_topic: str, digits: Digits,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _uninterrupted(ray_cluster, kafka_broker, crash_topic, digits, tmp_path_factory.mktemp("base1"), 1)


@pytest.fixture(scope="module")
def uninterrupted_sharded(ray_cluster: str, kafka_broker: KafkaTestBroker, crash_topic: str,  # noqa: F811
                          digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    return _uninterrupted(ray_cluster, kafka_broker, crash_topic, digits, tmp_path_factory.mktemp("base2"), 2)


def _decided(out: Path) -> int:
    try:
        m = read_manifest(out)
    except Exception:  # noqa: BLE001 - mid-rename is atomic, but be safe
        return 0
    return sum((m or {}).get("counts", {}).values())


def _kill_selector(sp: ServiceProcess, rng: random.Random) -> bool:
    """SIGKILL the selector/writer actor, or (with shards) one of the shard actors."""
    pids = [int(p) for p in re.findall(r"selector/writer actor pid (\d+)", sp.log())]
    for group in re.findall(r"selector shard actor pids \[([\d, ]+)\]", sp.log()):
        pids += [int(p) for p in group.split(",")]
    if not pids:
        return False
    try:
        os.kill(rng.choice(pids), signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def crash_and_recover(kills: int, seed: int, ray: str, broker: KafkaTestBroker, topic: str, digits: Digits,  # noqa: F811
                      tmp: Path, shards: int = 1) -> tuple[Path, list[str]]:
    rng = random.Random(seed)
    out = tmp / "run"
    group = f"g-crash{seed}-{topic}"
    total = len(digits.records) + 100
    cfg_path = write_config(crash_config(out, digits, broker, topic, ray, group, False, shards), tmp / "crash.toml")
    story = []
    for i in range(kills):
        # spread the kill points over what is left, so most runs die mid-stream (mean step: left / kills left)
        done = _decided(out)
        step = max(1, (total - done) // (kills - i + 1))
        target = min(total - 10, done + rng.randint(1, 2 * step))
        sp = ServiceProcess(cfg_path, tmp / f"crash-{i}.log")
        t0 = time.monotonic()
        if rng.random() < 0.25:  # during startup: Ray, actors, lock wait, bootstrap, group join
            time.sleep(rng.uniform(0.5, 5.0))
            where = f"startup+{time.monotonic() - t0:.1f}s"
        else:
            deadline = t0 + 60
            while _decided(out) < target and time.monotonic() < deadline and sp.proc.poll() is None:
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.15))
            where = f"after {target} decided+{time.monotonic() - t0:.1f}s"
        assert sp.proc.poll() is None, f"service exited before the kill:\n{sp.log()[-3000:]}"
        also = rng.random() < 0.5 and _kill_selector(sp, rng)
        sp.kill()
        story.append(f"kill {i}: {where}, {'driver + an actor' if also else 'driver'}; manifest at "
                     f"{_decided(out)} decided")
    final = write_config(crash_config(out, digits, broker, topic, ray, group, True, shards), tmp / "final.toml")
    sp = ServiceProcess(final, tmp / "final.log")
    assert sp.wait(240) == 0, sp.log()[-4000:]
    return out, story


def check_exactly_once(out: Path, baseline: Path, broker: KafkaTestBroker, topic: str, digits: Digits,  # noqa: F811
                       group: str) -> None:
    d = read_table(out, "decisions")
    ids = d.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == len(digits.records) + 100, "an item was lost or decided twice"
    kept = read_table(out, "kept").column("id").to_pylist()
    assert len(kept) == len(set(kept))
    assert_same_decisions(out, baseline)  # same kept ids, same decisions, same seq (= same order)
    m = read_manifest(out)
    assert m is not None
    assert group_committed(broker, topic, group) == {int(p): o for p, o in m["positions"][topic].items()}


def kills_then_restart_equal_uninterrupted(kills: int, seed: int, baseline: Path, ray: str, broker: KafkaTestBroker,
                                           topic: str, digits: Digits, tmp: Path,  # noqa: F811
                                           shards: int = 1) -> None:
    t0 = time.monotonic()
    out, story = crash_and_recover(kills, seed, ray, broker, topic, digits, tmp, shards)
    check_exactly_once(out, baseline, broker, topic, digits, f"g-crash{seed}-{topic}")
    if shards > 1:  # every shard wrote its own parts
        kept = (read_manifest(out) or {})["parts"]["kept"]
        assert {p.split("/")[1] for p in kept} == {f"shard={k}" for k in range(shards)}
    print(f"\n{shards} shard(s): {kills} kills + final run in {time.monotonic() - t0:.0f}s:\n  " + "\n  ".join(story))


@pytest.mark.timeout(600)
def test_sigkill_at_5_points_then_restart_equals_uninterrupted(
    ray_cluster: str, kafka_broker: KafkaTestBroker, crash_topic: str, digits: Digits,  # noqa: F811
    uninterrupted: Path, tmp_path: Path,
) -> None:
    kills_then_restart_equal_uninterrupted(5, 1234, uninterrupted, ray_cluster, kafka_broker, crash_topic, digits,
                                           tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_at_20_points_then_restart_equals_uninterrupted(
    ray_cluster: str, kafka_broker: KafkaTestBroker, crash_topic: str, digits: Digits,  # noqa: F811
    uninterrupted: Path, tmp_path: Path,
) -> None:
    kills_then_restart_equal_uninterrupted(20, 20, uninterrupted, ray_cluster, kafka_broker, crash_topic, digits,
                                           tmp_path)


@pytest.mark.timeout(600)
def test_two_shards_sigkill_at_5_points_then_restart_equals_uninterrupted(
    ray_cluster: str, kafka_broker: KafkaTestBroker, crash_topic: str, digits: Digits,  # noqa: F811
    uninterrupted_sharded: Path, tmp_path: Path,
) -> None:
    kills_then_restart_equal_uninterrupted(5, 77, uninterrupted_sharded, ray_cluster, kafka_broker, crash_topic,
                                           digits, tmp_path, shards=2)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_shards_sigkill_at_20_points_then_restart_equals_uninterrupted(
    ray_cluster: str, kafka_broker: KafkaTestBroker, crash_topic: str, digits: Digits,  # noqa: F811
    uninterrupted_sharded: Path, tmp_path: Path,
) -> None:
    kills_then_restart_equal_uninterrupted(20, 2020, uninterrupted_sharded, ray_cluster, kafka_broker, crash_topic,
                                           digits, tmp_path, shards=2)
