"""The real backlog of the conversation topic: records after the consumer group's *committed* offsets.

A worker's own lag (high-water mark minus its fetch position) undercounts: records it prefetched or is
processing are already behind its position, the high-water mark only moves when it fetches, and partitions
no worker holds are not counted at all. What waits is what the group has not committed, on every partition.

``measure`` asks the group coordinator for the committed offsets (OffsetFetch, no group join, nothing
committed) and reads each partition's high-water mark from a fetch (Tansu answers ListOffsets(latest) too
low, see ``kafka_io``). ``BacklogProbe`` measures in a background thread so a status request never waits on Kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from kafka import TopicPartition

from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.kafka_io import make_consumer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backlog:
    """Records of the topic not yet committed by the group (``waiting``) and those it has (``committed``)."""

    waiting: int
    committed: int
    partitions: int
    measured_at: float


def measure(connection: KafkaConnection, topic: str, group: str, *, timeout_s: float = 5.0) -> Backlog | None:
    """One measurement; None when the topic does not exist yet."""
    consumer = make_consumer(connection, group, max_poll_records=1, max_partition_fetch_bytes=1024,
                             fetch_max_wait_ms=50, request_timeout_ms=max(10_000, int(timeout_s * 1000) + 1000))
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        committed = {tp: consumer.committed(tp) for tp in tps}
        for tp, offset in committed.items():
            if offset is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        start = {tp: committed[tp] if committed[tp] is not None else consumer.position(tp) for tp in tps}
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        high = {tp: consumer.highwater(tp) for tp in tps}
        waiting = sum(max(0, (high[tp] or 0) - (start[tp] or 0)) for tp in tps)
        done = sum(committed[tp] or 0 for tp in tps)
        return Backlog(waiting=int(waiting), committed=int(done), partitions=len(tps), measured_at=time.time())
    finally:
        consumer.close(autocommit=False)


class BacklogProbe:
    """``measure`` every ``interval_s`` in a daemon thread; ``latest`` is the last good measurement (or None)."""

    def __init__(self, connection: KafkaConnection, topic: str, group: str, *, interval_s: float = 5.0) -> None:
        self.connection, self.topic, self.group, self.interval_s = connection, topic, group, interval_s
        self._latest: Backlog | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog-probe", daemon=True)
        self._thread.start()

    def latest(self) -> Backlog | None:
        found = self._latest
        return found if found is not None and time.time() - found.measured_at < 6 * self.interval_s else None

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._latest = measure(self.connection, self.topic, self.group)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the broker may be down: the status shows no backlog then
                failures += 1
                log.debug("backlog measurement failed (%d in a row): %s", failures, exc)
            # Back off while the broker is away (up to a minute), so a missing broker costs next to nothing.
            self._stop.wait(min(60.0, self.interval_s * 2 ** min(failures, 6)))

    def stop(self) -> None:
        self._stop.set()
