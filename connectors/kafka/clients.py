"""Kafka clients with curator's settings: parsing, checking and passing through user settings.

Users give client settings in three tables: ``[kafka.client]`` for what both clients accept (TLS,
SASL, client id, timeouts), ``[kafka.consumer]`` for the source's consumer only (fetch sizes,
session timeouts) and ``[kafka.producer]`` for the dead-letter producer only (acks, compression).
`client_settings_problems` finds every key that a client would refuse, before anything starts,
instead of a kafka-python traceback once the service is running. kafka-python is imported inside functions.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kafka import KafkaProducer

#: Consumer settings that curator owns: overriding them would break the delivery guarantees.
RESERVED = ("enable_auto_commit", "bootstrap_servers", "group_id", "key_deserializer", "value_deserializer")


class KafkaSourceError(RuntimeError):
    """A Kafka connector cannot go on (unreachable broker, bad settings, missing topic, persistent errors)."""


def parse_api_version(text: str) -> tuple[int, ...] | None:
    """'2.3' -> (2, 3); '' -> None (ask the broker). The librdkafka mock cluster needs '2.3'."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        parts = tuple(int(x) for x in text.split("."))
    except ValueError:
        raise ValueError(f"api_version must look like '2.3' (or '' to detect), got {text!r}") from None
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"api_version must look like '2.3' (or '' to detect), got {text!r}")
    return parts


def client_settings_problems(shared: dict[str, Any], consumer: dict[str, Any], producer: dict[str, Any]) -> list[str]:
    """Every key no client of its table accepts (shared keys: both clients; the others their own), each
    saying where it belongs; empty when all are fine."""
    from kafka import KafkaConsumer, KafkaProducer

    accepted = {"consumer": set(KafkaConsumer.DEFAULT_CONFIG), "producer": set(KafkaProducer.DEFAULT_CONFIG)}
    out: list[str] = []
    for kind, other, values in (("consumer", "producer", consumer), ("producer", "consumer", producer)):
        for k in values:
            if k not in accepted[kind]:
                where = f"; it is a {other} setting: put it under [kafka.{other}]" if k in accepted[other] else ""
                out.append(f"[kafka.{kind}] {k}: not a kafka-python {kind} setting{where}")
    c_keys, p_keys = accepted["consumer"], accepted["producer"]
    for k in shared:
        if k in c_keys and k in p_keys:
            continue
        if k in c_keys:
            out.append(f"[kafka.client] {k} is a consumer-only setting: put it under [kafka.consumer]")
        elif k in p_keys:
            out.append(f"[kafka.client] {k} is a producer-only setting: put it under [kafka.producer]")
        else:
            out.append(f"[kafka.client] {k}: not a kafka-python client setting (TLS: ssl_*, SASL: sasl_*, "
                       "security_protocol, client_id, ...)")
    out += [f"Kafka client setting {k} is set by curator itself; use the [kafka] fields"
            for k in RESERVED if k in shared or k in consumer]
    return out


def preflight(settings: dict[str, Any], timeout_s: float) -> None:
    """Fail fast (KafkaSourceError) when no bootstrap server accepts a TCP connection in `timeout_s`."""
    servers = settings["bootstrap_servers"]
    servers = servers.split(",") if isinstance(servers, str) else list(servers)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        for server in servers:
            host, _, port = server.strip().rpartition(":")
            try:
                with socket.create_connection((host.strip("[]") or "localhost", int(port or 9092)),
                                              timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                    return
            except (OSError, ValueError) as exc:
                last = exc
        if time.monotonic() >= deadline:
            raise KafkaSourceError(unreachable(settings, last or TimeoutError("timed out")))
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def unreachable(settings: dict[str, Any], exc: Exception) -> str:
    servers = settings["bootstrap_servers"]
    hint = "" if "api_version" in settings else "; against librdkafka's mock cluster set api_version='2.3'"
    return (
        f"cannot reach Kafka at {','.join(servers) if isinstance(servers, list) else servers} ({exc}); "
        f"check bootstrap_servers and the security settings{hint}"
    )


def server_list(bootstrap_servers: str | list[str]) -> list[str]:
    if isinstance(bootstrap_servers, str):
        return [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    return list(bootstrap_servers)


#: kafka-python's batch of 16 KB holds a few small images: a request per handful of messages (3,000
#: 64 px PNGs as JSON: 0.61 s to send, 0.36 s with these), and brokers that hand out a stored batch
#: at a time (librdkafka's mock cluster) then give consumers 5 messages a fetch instead of 84. 256 KB
#: batches, filled for up to 5 ms; a message larger than a batch is still sent alone.
PRODUCER_DEFAULTS: dict[str, Any] = {"max_request_size": 16 * 1024 * 1024, "batch_size": 256 * 1024, "linger_ms": 5}


def kafka_producer(
    bootstrap_servers: str | list[str],
    api_version: str = "",
    client: dict[str, Any] | None = None,
    **defaults: Any,
) -> KafkaProducer:
    """A KafkaProducer with curator's defaults (`PRODUCER_DEFAULTS`), then the client passthrough
    (security, sizes, ...)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaConfigurationError, KafkaConnectionError, KafkaTimeoutError

    settings: dict[str, Any] = {"bootstrap_servers": server_list(bootstrap_servers), **PRODUCER_DEFAULTS, **defaults}
    api = parse_api_version(api_version)
    if api is not None:
        settings["api_version"] = api
    settings.update(client or {})
    if api is not None and not settings.get("proxy_url"):
        preflight(settings, settings.get("bootstrap_timeout_ms", 30_000) / 1000)  # else it retries forever
    try:
        return KafkaProducer(**settings)
    except KafkaConfigurationError as exc:
        raise KafkaSourceError(f"bad Kafka client settings: {exc}") from None
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise KafkaSourceError(unreachable(settings, exc)) from None
