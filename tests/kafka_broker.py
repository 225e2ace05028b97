"""A localhost Kafka-protocol test broker: librdkafka's mock cluster, driven through ctypes.

The librdkafka copy bundled in the confluent-kafka wheel (a test-only dependency) contains a mock
cluster that speaks the Kafka protocol: no JVM, no download, no extra binary. The tests start it in
a *subprocess* (so a crash or hang in native code cannot take pytest with it) and talk to it over
stdin for the one thing the protocol cannot do against it: create topics.

    python tests/kafka_broker.py [--brokers N] [--topic NAME:PARTITIONS ...] [--control-stdin]

Prints ``BOOTSTRAP=host:port,...`` once ready and serves until SIGTERM/SIGINT. With
``--control-stdin`` it reads commands, one per line, and answers each with one line:

    create NAME PARTITIONS   ->  OK NAME   |  ERR reason
    ping                     ->  OK pong

and exits when stdin closes, so a killed test run never leaves a broker behind.

Limits of the mock (librdkafka 2.16): ApiVersions only up to v2, so kafka-python needs
``api_version=(2, 3)`` (auto-detection fails); CreateTopics/DeleteTopics are not served (create
topics here); group rebalances are slow unless ``session_timeout_ms`` is short (3000 works).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import signal
import sys
import threading
from typing import Any


def _load_librdkafka() -> Any:
    """The librdkafka shared object bundled with confluent-kafka (in the sibling `confluent_kafka.libs`)."""
    try:
        import confluent_kafka
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the test broker needs confluent-kafka (pip install -e '.[test]'), or set "
            "CURATOR_KAFKA_BOOTSTRAP to a real broker"
        ) from exc
    pkg_parent = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    candidates = sorted(glob.glob(os.path.join(pkg_parent, "confluent_kafka.libs", "librdkafka*.so*")))
    if not candidates:
        raise RuntimeError(f"bundled librdkafka not found under {pkg_parent}/confluent_kafka.libs")
    lib = ctypes.CDLL(candidates[0])
    vp, i32, cp = ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_conf_new": (vp, []),
        "rd_kafka_conf_set": (ctypes.c_int, [vp, cp, cp, cp, ctypes.c_size_t]),
        "rd_kafka_new": (vp, [ctypes.c_int, vp, cp, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [vp]),
        "rd_kafka_mock_cluster_new": (vp, [vp, ctypes.c_int]),
        "rd_kafka_mock_cluster_destroy": (None, [vp]),
        "rd_kafka_mock_cluster_bootstraps": (cp, [vp]),
        "rd_kafka_mock_topic_create": (ctypes.c_int, [vp, cp, ctypes.c_int, ctypes.c_int]),
        "rd_kafka_mock_group_initial_rebalance_delay_ms": (None, [vp, i32]),
        "rd_kafka_version_str": (cp, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


class MockKafka:
    """One in-process mock cluster. Use as a context manager; `bootstrap` is the address to give clients."""

    def __init__(self, brokers: int = 1, topics: dict[str, int] | None = None, rebalance_delay_ms: int = 0):
        self._lib = _load_librdkafka()
        self._lock = threading.Lock()
        err = ctypes.create_string_buffer(512)
        conf = self._lib.rd_kafka_conf_new()
        # The owner instance has no real bootstrap servers of its own: keep it quiet.
        self._lib.rd_kafka_conf_set(conf, b"log_level", b"3", err, 512)
        self._rk = self._lib.rd_kafka_new(0, conf, err, 512)  # 0 = RD_KAFKA_PRODUCER
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {err.value.decode()}")
        self._mc = self._lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mc:
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self._lib.rd_kafka_mock_group_initial_rebalance_delay_ms(self._mc, rebalance_delay_ms)
        self.bootstrap: str = self._lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()
        self.librdkafka_version: str = self._lib.rd_kafka_version_str().decode()
        for name, parts in (topics or {}).items():
            self.create_topic(name, parts)

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1) -> None:
        with self._lock:
            rc = self._lib.rd_kafka_mock_topic_create(self._mc, name.encode(), partitions, replication_factor)
        if rc != 0:
            raise RuntimeError(f"rd_kafka_mock_topic_create({name!r}, {partitions}) -> error {rc}")

    def close(self) -> None:
        if self._mc:
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None

    def __enter__(self) -> MockKafka:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_stdin(mk: MockKafka, stop: threading.Event) -> None:
    """Answer control commands until stdin closes (the parent went away), then ask to stop."""
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "create" and len(parts) == 3:
                mk.create_topic(parts[1], int(parts[2]))
                reply = f"OK {parts[1]}"
            elif parts[0] == "ping":
                reply = "OK pong"
            else:
                reply = f"ERR unknown command {line.strip()!r}; use 'create NAME PARTITIONS' or 'ping'"
        except (RuntimeError, ValueError) as exc:
            reply = f"ERR {exc}"
        print(reply, flush=True)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--topic", action="append", default=[], help="NAME:PARTITIONS (repeatable)")
    ap.add_argument("--rebalance-delay-ms", type=int, default=0)
    ap.add_argument("--control-stdin", action="store_true", help="read commands on stdin; exit when it closes")
    args = ap.parse_args(argv)
    topics = {}
    for spec in args.topic:
        name, _, parts = spec.partition(":")
        topics[name] = int(parts) if parts else 1
    mk = MockKafka(args.brokers, topics, args.rebalance_delay_ms)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"BOOTSTRAP={mk.bootstrap}", flush=True)
    print(f"librdkafka {mk.librdkafka_version} mock cluster, {args.brokers} broker(s), topics={topics}",
          file=sys.stderr, flush=True)
    if args.control_stdin:
        threading.Thread(target=_serve_stdin, args=(mk, stop), daemon=True).start()
    while not stop.wait(0.5):
        pass
    mk.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
