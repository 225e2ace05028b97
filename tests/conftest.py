"""Shared test fixtures: environment, the Kafka-protocol test broker, a small local Ray.

The environment variables are set at import, before anything imports ray or huggingface_hub:
- HF_HUB_OFFLINE: hub lookups fail in 0.1 s instead of ~47 s of DNS retries on offline machines;
- RAY_AUTH_MODE=disabled: ray.init() would otherwise write ~/.ray/auth_token, after which
  `ray job submit` fails with AuthenticationError;
- RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray binds and talks on 127.0.0.1 only.

Kafka tests run against librdkafka's mock cluster started in a subprocess (tests/kafka_broker.py),
or against a real broker when CURATOR_KAFKA_BOOTSTRAP is set (CURATOR_KAFKA_API_VERSION optional).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Before any test module (or plugin) imports ray / huggingface_hub: these modules import neither.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

BROKER_SCRIPT = Path(__file__).with_name("kafka_broker.py")
_topic_ids = itertools.count()


@dataclass
class KafkaTestBroker:
    """Where the test broker is and how to talk to it."""

    bootstrap: str
    api_version: str  # "2.3" for the mock cluster; "" (auto-detect) for a real broker
    create_topic: Callable[[str, int], None]
    is_mock: bool = True
    client: dict[str, Any] = field(default_factory=dict)

    def new_topic(self, partitions: int = 3, prefix: str = "t") -> str:
        """A fresh topic with `partitions` partitions (unique per call, so tests never share data)."""
        name = f"curator-test-{prefix}-{os.getpid()}-{next(_topic_ids)}-{int(time.time() * 1000) % 10**8}"
        self.create_topic(name, partitions)
        return name


class _MockBrokerProcess:
    """tests/kafka_broker.py in a subprocess, driven over its stdin control channel."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, str(BROKER_SCRIPT), "--control-stdin"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        line = self._readline(timeout_s)
        if not line.startswith("BOOTSTRAP="):
            self.close()
            raise RuntimeError(f"test broker did not start (got {line!r}); stderr: {self._stderr_text()}")
        self.bootstrap = line.strip().split("=", 1)[1]

    def _readline(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout_s):
                return ""
        finally:
            sel.close()
        return self.proc.stdout.readline()

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-2000:]

    def create_topic(self, name: str, partitions: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"create {name} {partitions}\n")
        self.proc.stdin.flush()
        reply = self._readline(10.0).strip()
        if reply != f"OK {name}":
            raise RuntimeError(f"test broker could not create topic {name!r}: {reply!r} {self._stderr_text()}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the broker exits when its stdin closes
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def real_broker_topic_creator(bootstrap: str, api_version: str) -> Callable[[str, int], None]:
    def create(name: str, partitions: int) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer
        from kafka.admin import NewTopic

        kw: dict[str, Any] = {"bootstrap_servers": bootstrap.split(",")}
        if api_version:
            kw["api_version"] = tuple(int(x) for x in api_version.split("."))
        admin = KafkaAdminClient(**kw)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        probe = KafkaConsumer(**kw)
        try:
            deadline = time.monotonic() + 30
            while len(probe.partitions_for_topic(name) or ()) < partitions:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"topic {name!r} did not appear with {partitions} partitions")
                time.sleep(0.2)
        finally:
            probe.close()

    return create


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaTestBroker]:
    """The session's Kafka-protocol broker: CURATOR_KAFKA_BOOTSTRAP, or a mock cluster subprocess."""
    real = os.environ.get("CURATOR_KAFKA_BOOTSTRAP", "").strip()
    if real:
        api = os.environ.get("CURATOR_KAFKA_API_VERSION", "").strip()
        yield KafkaTestBroker(real, api, real_broker_topic_creator(real, api), is_mock=False)
        return
    try:
        import confluent_kafka  # noqa: F401 - only its bundled librdkafka is used
    except ImportError:
        pytest.skip("no Kafka test broker: install the test extra (confluent-kafka) or set CURATOR_KAFKA_BOOTSTRAP")
    broker = _MockBrokerProcess()
    try:
        yield KafkaTestBroker(broker.bootstrap, "2.3", broker.create_topic, is_mock=True)
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaTestBroker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_topic(kafka_broker: KafkaTestBroker) -> Callable[..., str]:
    """Factory: ``kafka_topic(partitions=3)`` -> the name of a fresh topic."""
    return kafka_broker.new_topic


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A small local Ray runtime for one test module (2 CPUs, 200 MB object store, no dashboard)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
