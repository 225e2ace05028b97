"""The configuration file: the run's sections plus `curator serve`'s [kafka] and [service].

Every command that takes ``--config`` reads it here (`load_serve_config`), so one file works with all
of them; a section a command does not use is checked all the same. The RunConfig sections decide
*what* is curated ([embedder] [index] [selector] [store] [source]); two sections decide *how* the
service runs:

- ``[kafka]``: where the stream comes from (empty ``bootstrap_servers`` = the files in
  ``[source] paths``), the consumer group, the dead-letter topic, client passthrough to
  kafka-python: ``[kafka.client]`` for both clients (TLS, SASL), ``[kafka.consumer]`` for the
  source's consumer only (fetch sizes), ``[kafka.producer]`` for the dead-letter producer only;
- ``[service]``: HTTP endpoints, the Ray graph's sizes (embedder actors, GPUs per actor),
  queue bounds and the memory bound.

Flags are generated the same way as the run's (``--service.embed-actors 4``), so a flag and a
config field are always the same thing. The settings under [kafka] and [service] do not change
decisions, so they are not part of the run's config fingerprint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curator.config import RunConfig, apply_overrides, raise_problems, read_toml, setting, validate_config
from curator.config_text import add_config_flags, add_section_flags, reference_rows


@dataclass
class KafkaConfig:
    bootstrap_servers: str = setting("", "Kafka bootstrap servers, comma-separated ('' = no Kafka: serve the "
                                    "files in [source] paths through the same graph, then exit)")
    topic: str = setting("", "topic to curate")
    group_id: str = setting("curator", "consumer group; offsets are committed only after the manifest covering "
                                  "them is durable ('' = no group: positions live only in the manifest)")
    api_version: str = setting("", "Kafka API version, e.g. '2.3' ('' = detect; librdkafka's mock cluster needs 2.3)")
    session_timeout_ms: int = setting(10_000, "group session timeout")
    max_poll_records: int = setting(500, "records per poll at most")
    poll_timeout_ms: int = setting(100, "how long one poll waits for records")
    max_message_bytes: int = setting(32 * 1024 * 1024, "larger messages go to the dead-letter sink undecoded")
    auto_offset_reset: str = setting("earliest", "where a partition without a committed position starts",
                                choices=("earliest", "latest"))
    end_after_idle_s: float = setting(0.0, "> 0: finish (drain, commit, exit 0) when nothing arrived for this long "
                                      "(bounded runs, tests); 0 = run until stopped")
    dead_letter_topic: str = setting("", "topic for rejected input with its reason and position ('' = only the run's "
                                    "quarantine table)")
    order: str = setting("offset", "stream order of a multi-partition topic: 'offset' (partitions interleaved by "
                              "(offset, partition): deterministic, so a restart replays the same decisions) or "
                              "'arrival' (as polled: no waiting on slow partitions, decisions may differ "
                              "after a restart)", choices=("offset", "arrival"))
    client: dict = setting({}, "kafka-python settings for both the consumer and the dead-letter producer "
                               "(security_protocol, sasl_*, ssl_*, client_id), as a TOML table [kafka.client] or "
                               "a JSON object on the command line")
    consumer: dict = setting({}, "kafka-python settings for the consumer only (fetch_max_bytes, "
                                 "max_partition_fetch_bytes, ...): [kafka.consumer]")
    producer: dict = setting({}, "kafka-python settings for the dead-letter producer only (acks, "
                                 "compression_type, linger_ms, ...): [kafka.producer]")


@dataclass
class ServiceConfig:
    host: str = setting("127.0.0.1", "HTTP address of /healthz, /readyz, /metrics (loopback unless set)")
    port: int = setting(9108, "HTTP port (0 = any free port; the log says which)")
    ray_address: str = setting("", "Ray cluster to join ('' = $RAY_ADDRESS, else start a local one; 'local' = always "
                              "start a local one)")
    object_store_mb: int = setting(512, "object store of a Ray instance this service starts itself")
    embed_actors: int = setting(2, "embedder actors in the pool")
    embed_num_cpus: float = setting(1.0, "CPUs reserved per embedder actor")
    embed_num_gpus: float = setting(0.0, "GPUs per embedder actor: 1 = one each, 0.25 = four share one GPU")
    selector_num_cpus: float = setting(1.0, "CPUs reserved for the selector/writer actor")
    shard_num_cpus: float = setting(1.0, "CPUs reserved per selector shard actor (selector.shards > 1)")
    max_inflight_batches: int = setting(0, "batches being embedded at once (0 = 2 per embedder actor)")
    max_selector_queue: int = setting(4, "batches past the embedders, waiting for the selector")
    max_inflight_mb: int = setting(256, "bound on what the batches in the graph weigh (their records' payloads), "
                                        "besides their count (0 = by count only)")
    max_buffered_mb: int = setting(64, "bound on what the items read from Kafka but not yet in the graph weigh "
                                       "(0 = by count only)")
    max_buffered_items: int = setting(0, "items read from the source but not yet sent to the embedders "
                                    "(0 = 4 x [source] batch_size); past its share, a partition's tail is re-read later")
    memory_limit_mb: int = setting(0, "pause the consumer while the memory the service uses (PSS of the driver and "
                                      "the actors on its node) is above this (0 = no limit)")
    commit_interval_s: float = setting(10.0, "commit at least this often while items arrive, even before "
                                        "[store] commit_every items (0 = only by count)")
    embedding_dim: int = setting(0, "precomputed embeddings: their dimension (0 = from the checkpoint, else the "
                               "first valid vector in stream order)")
    drain_timeout_s: float = setting(120.0, "on SIGTERM, how long to wait for in-flight batches before exiting")


@dataclass
class ServeConfig:
    run: RunConfig = field(default_factory=RunConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    @property
    def uses_kafka(self) -> bool:
        return bool(self.kafka.bootstrap_servers.strip())

    def inflight(self) -> int:
        return self.service.max_inflight_batches or 2 * self.service.embed_actors

    def buffered(self) -> int:
        return max(self.service.max_buffered_items or 4 * self.run.source.batch_size, self.run.source.batch_size)

    def to_toml(self) -> str:
        from curator.config_text import to_toml

        out = [to_toml(self.run)]
        for name in ("kafka", "service"):
            sec = dataclasses.asdict(getattr(self, name))
            tables = {k: sec.pop(k) for k in list(sec) if isinstance(sec[k], dict)}
            out.append(f"[{name}]")
            out += [f"{k} = {json.dumps(v)}" for k, v in sec.items()]
            out.append("")
            for table, values in tables.items():
                if values:
                    out.append(f"[{name}.{table}]")
                    out += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
                    out.append("")
        return "\n".join(out)


SERVICE_SECTIONS = {"kafka": KafkaConfig, "service": ServiceConfig}


def apply_serve_overrides(cfg: ServeConfig, values: dict[str, Any], origin: str,
                          problems: list[str] | None = None) -> ServeConfig:
    """Set every section of `values` (the run's and [kafka] / [service]); problems as `apply_overrides`."""
    apply_overrides(cfg.run, values, origin, problems, {sec: getattr(cfg, sec) for sec in SERVICE_SECTIONS})
    return cfg


def validate_serve_config(cfg: ServeConfig, problems: list[str] | None = None, serving: bool = True) -> None:
    """Every setting's value, and (`serving`) that the service has an input: all problems at once,
    into `problems` when given, else raised together."""
    found: list[str] = []
    validate_config(cfg.run, found)
    s, k = cfg.service, cfg.kafka
    checks = [
        (s.embed_actors >= 1, "service.embed_actors must be >= 1"),
        (s.embed_num_cpus >= 0 and s.embed_num_gpus >= 0 and s.selector_num_cpus >= 0 and s.shard_num_cpus >= 0,
         "service.*_num_cpus / embed_num_gpus must be >= 0"),
        (s.embed_num_gpus <= 1 or float(s.embed_num_gpus).is_integer(),
         "service.embed_num_gpus above 1 must be a whole number of GPUs"),
        (s.max_inflight_batches >= 0, "service.max_inflight_batches must be >= 0 (0 = 2 per actor)"),
        (s.max_selector_queue >= 1, "service.max_selector_queue must be >= 1"),
        (s.max_buffered_items >= 0, "service.max_buffered_items must be >= 0"),
        (s.memory_limit_mb >= 0, "service.memory_limit_mb must be >= 0"),
        (s.embedding_dim >= 0, "service.embedding_dim must be >= 0"),
        (0 <= s.port <= 65535, "service.port must be in 0..65535"),
        (k.poll_timeout_ms >= 1 and k.max_poll_records >= 1, "kafka.poll_timeout_ms and max_poll_records must be >= 1"),
        (s.max_inflight_mb >= 0 and s.max_buffered_mb >= 0, "service.max_inflight_mb / max_buffered_mb must be >= 0"),
    ]
    if serving:
        checks += [
            (not cfg.uses_kafka or bool(k.topic), "kafka.topic is required with kafka.bootstrap_servers"),
            (cfg.uses_kafka or bool(cfg.run.source.paths),
             "no input: set [kafka] bootstrap_servers and topic, or [source] paths"),
        ]
    found += [msg for ok, msg in checks if not ok]
    if k.client or k.consumer or k.producer:
        from connectors.kafka.clients import client_settings_problems

        found += client_settings_problems(k.client, k.consumer, k.producer)
    if problems is None:
        raise_problems(found)
    else:
        problems.extend(found)


def load_serve_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                      serving: bool = True) -> ServeConfig:
    """Defaults, then the TOML file, then explicit overrides (flags), then validation: every problem
    found, in one ConfigError.

    Every command that takes ``--config`` reads the file through here, so one file serves them all:
    a section a command does not use is still checked (its keys, types and values), never ignored.
    `serving=False` (`curator ingest`, `curator config`): no check that [kafka] or [source] gives an input.
    """
    cfg, problems = ServeConfig(), []
    if path:
        apply_serve_overrides(cfg, read_toml(path, "see deploy/curator.example.toml"), str(path), problems)
    if overrides:
        apply_serve_overrides(cfg, overrides, "command line", problems)
    validate_serve_config(cfg, problems, serving)
    raise_problems(problems)
    return cfg


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The run's flags plus one flag per [kafka] / [service] field (--service.embed-actors N)."""
    add_config_flags(parser)
    for sec, cls in SERVICE_SECTIONS.items():
        add_section_flags(parser, sec, cls())


def reference_markdown() -> str:
    """The [kafka] and [service] settings as a table (the run's are in `curator config --reference`)."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for sec, cls in SERVICE_SECTIONS.items():
        lines += reference_rows(sec, cls())
    return "\n".join(lines)
