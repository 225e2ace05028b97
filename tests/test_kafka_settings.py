"""Kafka client settings: [kafka.client] (both clients), [kafka.consumer], [kafka.producer].

A setting only one client accepts used to reach both and kill the service with kafka-python's
`Unrecognized configs` right after the bootstrap commit; now each client gets what it accepts and
a misplaced or unknown key is a one-line error before anything starts.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from curator.config import ConfigError
from curator.store import read_table
from pipelines.config import load_serve_config
from tests.conftest import KafkaTestBroker
from tests.test_service import (  # noqa: F401 - fixtures
    REPO,
    digits,
    produce_digits,
    ray_cluster,
    run_config,
    run_service,
    serve_config,
    service_env,
)

BASE = {"source": {"paths": ["x.parquet"]}, "kafka": {"bootstrap_servers": "h:9092", "topic": "t"}}


def _with(**kafka: object) -> dict:
    return {**BASE, "kafka": {**BASE["kafka"], **kafka}}


@pytest.mark.parametrize(("kafka", "message"), [
    ({"client": {"session_timeout_ms": 3000}}, r"\[kafka.client\] session_timeout_ms is a consumer-only setting: "
                                                r"put it under \[kafka.consumer\]"),
    ({"client": {"acks": "all"}}, r"producer-only setting: put it under \[kafka.producer\]"),
    ({"client": {"fetch_sizes": 1}}, r"\[kafka.client\] fetch_sizes: not a kafka-python client setting"),
    ({"consumer": {"acks": "all"}}, r"\[kafka.consumer\] acks: not a kafka-python consumer setting; it is a "
                                    r"producer setting: put it under \[kafka.producer\]"),
    ({"producer": {"fetch_max_bytes": 1}}, r"\[kafka.producer\] fetch_max_bytes: not a kafka-python producer"),
    ({"consumer": {"group_id": "x"}}, "set by curator itself"),
])
def test_misplaced_or_unknown_client_settings_are_config_errors(kafka: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_serve_config(None, _with(**kafka))


def test_each_client_table_accepts_its_own_settings() -> None:
    cfg = load_serve_config(None, _with(client={"security_protocol": "PLAINTEXT", "client_id": "c"},
                                        consumer={"fetch_max_bytes": 1 << 20, "session_timeout_ms": 6000},
                                        producer={"acks": "all", "linger_ms": 5}))
    assert cfg.kafka.consumer["fetch_max_bytes"] == 1 << 20 and cfg.kafka.producer["acks"] == "all"
    toml = cfg.to_toml()
    assert "[kafka.consumer]" in toml and "[kafka.producer]" in toml and "[kafka.client]" in toml


def test_serve_refuses_a_consumer_setting_for_both_clients_in_one_line(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "serve", "x.parquet", "--kafka.bootstrap-servers",
                        "127.0.0.1:1", "--kafka.topic", "t", "--kafka.client", '{"session_timeout_ms": 3000}'],
                       capture_output=True, text=True, cwd=REPO, env=service_env(), timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "put it under [kafka.consumer]" in r.stderr
    assert time.monotonic() - t0 < 60  # before Ray or Kafka are touched


@pytest.mark.ray
@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_consumer_and_producer_settings_reach_their_clients(ray_cluster: str, kafka_broker: KafkaTestBroker,  # noqa: F811
                                                             digits, tmp_path: Path) -> None:  # noqa: F811
    topic, dlq = kafka_broker.new_topic(2, "set"), kafka_broker.new_topic(1, "setdlq")
    produce_digits(kafka_broker, topic, digits.records[:200] + [{"id": "bad", "text": ""}])
    out = tmp_path / "run"
    scfg = serve_config(run_config(out, digits), kafka_broker, topic, ray_cluster,
                        kafka={"dead_letter_topic": dlq, "consumer": {"fetch_max_bytes": 4 << 20,
                                                                      "max_partition_fetch_bytes": 1 << 20},
                               "producer": {"acks": "all", "linger_ms": 1}})
    sp = run_service(scfg, tmp_path, "settings")
    assert "Unrecognized configs" not in sp.log()
    q = read_table(out, "quarantine").to_pylist()
    assert [r["id"] for r in q] == ["bad"] and "empty caption" in q[0]["reason"]
    assert read_table(out, "decisions").num_rows == 201 + 100  # the stream, plus the bootstrap
