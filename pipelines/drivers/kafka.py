"""A Kafka topic through the Ray executor: poll, feed in stream order, bound, commit after the manifest.

The topic's order, buffering and offset bookkeeping are the connector's (`connectors.kafka.stream`);
this loop only decides when to feed the executor and when to poll.
"""

from __future__ import annotations

import threading
import time

from connectors.kafka.source import KafkaSourceConfig
from connectors.kafka.stream import OrderedStream, StreamBounds
from curator.batch import Positions
from pipelines.config import ServeConfig
from pipelines.drivers.common import Driver
from pipelines.executors.ray import RayExecutor
from pipelines.metrics import Metrics


class KafkaDriver(Driver):
    def __init__(self, scfg: ServeConfig, executor: RayExecutor, metrics: Metrics | None,
                 stop: threading.Event) -> None:
        super().__init__(scfg, executor, metrics, stop)
        k = scfg.kafka
        source = KafkaSourceConfig(
            bootstrap_servers=k.bootstrap_servers, topic=k.topic, group_id=k.group_id,
            client={**k.client, **k.consumer}, api_version=k.api_version, session_timeout_ms=k.session_timeout_ms,
            max_poll_records=k.max_poll_records, poll_timeout_ms=k.poll_timeout_ms,
            max_message_bytes=k.max_message_bytes, auto_offset_reset=k.auto_offset_reset,
            end_after_idle_s=0.0,  # the driver decides the end (`_bounded_end`)
        )
        self.poll_size = min(self.cfg.source.batch_size, k.max_poll_records)
        self.stream = OrderedStream(source, k.order, StreamBounds(scfg.buffered(), scfg.service.max_buffered_mb * 2**20),
                                    self.poll_size, on_revoke=lambda _parts: self.ex.commit_now())
        executor.commit_offsets_to(self.stream)  # step 5 of the commit protocol: the manifest's positions
        self._lag_t = 0.0
        self._seek_backs = 0
        self._gaps = 0
        self._polls = {True: 0, False: 0}

    def _bounded_end(self) -> bool:
        """kafka.end_after_idle_s: the input is exhausted -- nothing buffered or in flight, every
        partition caught up, and no message for that long (joining the group does not count)."""
        idle = self.scfg.kafka.end_after_idle_s
        if idle <= 0 or not self.ex.idle() or time.monotonic() - self.stream.last_data < idle:
            return False
        return self.stream.caught_up()

    def _feed(self) -> None:
        """Full batches in stream order while there is room; a partial one only when the source went
        quiet or the embedders would sit idle."""
        batch, s, ex = self.cfg.source.batch_size, self.stream, self.ex
        while ex.room():
            can = s.available(batch)
            if can == 0 or (can < batch and not s.last_poll_empty and not ex.idle()):
                break  # more is arriving (or a partition we wait on is about to): fill the batch
            b = s.take(batch)
            if b is None:
                break
            if self.metrics is not None:
                self.metrics.items_in.labels("kafka").inc(len(b))
            ex.submit(b)

    def _metrics(self) -> None:
        m, s = self.metrics, self.stream
        if m is None:
            return
        m.queue_items.labels("source").set(s.merge.items)
        m.refetched.inc(s.seek_backs - self._seek_backs)
        m.offset_gaps.inc(s.gaps - self._gaps)
        self._seek_backs, self._gaps = s.seek_backs, s.gaps
        for data, n in s.polls.items():
            m.polls.labels("data" if data else "empty").inc(n - self._polls[data])
            self._polls[data] = n
        now = time.monotonic()
        if now - self._lag_t >= 2.0 and s.merge.partitions:
            # Timed from the first poll that has partitions: one before the group's assignment would
            # otherwise hold the gauge back 2 s, past the first commits of a fast stream.
            self._lag_t = now
            try:
                lag = s.lag()
            except Exception:  # noqa: BLE001 - metrics only; try again in a quarter second
                self._lag_t = now - 1.75
                return
            for p, n in lag.items():
                m.lag.labels(str(p)).set(n)

    def run(self, start: Positions) -> None:
        s, ex = self.stream, self.ex
        s.seek(start)
        try:
            while not self.stop.is_set():
                self.beat()
                self._feed()
                ex.pump()
                ex.maybe_commit_by_time()
                # Poll while the merge has room for a whole poll, or waits on a partition (then what the
                # other partitions bring past their share is dropped and re-read later); else wait on
                # the executor. Never a busy loop: a poll that only refills trimmed partitions waits for
                # the executor first. Without a poll for max_poll_interval_ms the group would drop us.
                room, hold = s.room(), self.hold()
                need = (room or s.blocked()) and not hold
                if need and not room and s.trimmed_last and not ex.room():
                    ex.pump(0.05)
                if self.metrics is not None:
                    self.metrics.backpressure.set(0 if room and not hold else 1)
                if need or time.monotonic() - s.last_poll > 10.0:
                    if s.poll() is None:
                        break
                    self._metrics()
                    if s.last_poll_empty and self._bounded_end():
                        self.ended = True
                        break
                else:
                    ex.pump(0.05)
            self.finish()
        finally:
            if ex.dead_letters is not None:
                ex.dead_letters.flush()
            s.close()
