"""The centroid-deltas topic: publish a worker's deltas, read everyone's.

Values are JSON (``CentroidDeltas.to_dict``), keyed by facet. The reader is a
group-less consumer assigned every partition from the beginning, so every
worker sees every delta; a record already applied is skipped (its source
partition and offset are in the delta). Every record is decoded and validated
on its own: a malformed or hostile one comes out as a :class:`ReceivedDelta`
with a reason (for the dead-letter topic) and never stops the rest. It polls
on its own thread and hands decoded deltas over through a queue, so the batch
loop never waits on the deltas topic (a fetch on an idle topic is held by the
broker for ``fetch_max_wait_ms``). The topic should have a time-based
retention: a worker replays it from the start when a new clustering version
appears, and deltas of older versions are skipped.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass

from kafka import KafkaProducer, TopicPartition
from kafka.producer.future import FutureRecordMetadata

from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.kafka_io import make_consumer
from clio_stream.online.deltas import CentroidDeltas, DeltaRejected
from consumers.decoding import Record, RecordLike

log = logging.getLogger(__name__)


def encode_deltas(d: CentroidDeltas) -> bytes:
    return json.dumps(d.to_dict(), separators=(",", ":")).encode("utf-8")


def decode_deltas(value: bytes | None) -> CentroidDeltas:
    """The delta in a record value; :class:`DeltaRejected` with the reason for anything else."""
    if value is None:
        raise DeltaRejected("empty record value")
    try:
        doc = json.loads(value)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DeltaRejected(f"not JSON: {exc}"[:200]) from exc
    return CentroidDeltas.from_dict(doc)


@dataclass(frozen=True)
class ReceivedDelta:
    """One record of the deltas topic: its delta, or why it has none (``reason``)."""

    record: Record  # raw bytes and coordinates, for the dead-letter topic
    deltas: CentroidDeltas | None
    reason: str | None = None


def receive(rec: RecordLike) -> ReceivedDelta:
    """Decode one deltas-topic record; never raises (a bug in decoding is a rejection, not a dead thread)."""
    record = Record(rec.topic, int(rec.partition), int(rec.offset), rec.key, rec.value)
    try:
        return ReceivedDelta(record, decode_deltas(rec.value))
    except DeltaRejected as exc:
        return ReceivedDelta(record, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - hostile input must not reach the reader loop
        return ReceivedDelta(record, None, f"undecodable: {type(exc).__name__}: {exc}"[:200])


def publish_deltas(producer: KafkaProducer, topic: str, deltas: list[CentroidDeltas]) -> list[FutureRecordMetadata]:
    """Queue the deltas (asynchronous: flush the producer, then check the futures)."""
    return [producer.send(topic, key=(d.facet or "").encode("utf-8"), value=encode_deltas(d)) for d in deltas]


class DeltaReader:
    """Reads the deltas topic from the beginning on a background thread; ``drain()`` takes what arrived."""

    def __init__(self, bootstrap: KafkaConnection | str, topic: str, *, client_id: str = "clio-deltas", poll_ms: int = 200) -> None:
        self.topic = topic
        self._poll_ms = poll_ms
        self._consumer = make_consumer(bootstrap, None, None, max_poll_records=1000, client_id=client_id,
                                       fetch_max_wait_ms=100)
        partitions = self._consumer.partitions_for_topic(topic) or set()
        if not partitions:
            self._consumer.close(autocommit=False)
            raise RuntimeError(f"deltas topic {topic!r} has no partitions (create it first)")
        self._tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._tps)
        self._consumer.seek_to_beginning(*self._tps)
        self._queue: queue.SimpleQueue[ReceivedDelta] = queue.SimpleQueue()
        self._rewind = threading.Event()
        self._stop = threading.Event()
        self.caught_up = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"deltas-{topic}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        """The only code that touches the consumer after construction (KafkaConsumer is not thread-safe)."""
        while not self._stop.is_set():
            try:
                if self._rewind.is_set():
                    self._rewind.clear()
                    self.caught_up.clear()
                    self._consumer.seek_to_beginning(*self._tps)
                polled = self._consumer.poll(timeout_ms=self._poll_ms)
                for records in polled.values():
                    for rec in records:
                        self._queue.put(receive(rec))
                if not polled and self._at_end():
                    self.caught_up.set()
            except Exception:  # noqa: BLE001 - keep reading; the broker may come back
                log.warning("reading centroid deltas failed; retrying", exc_info=True)
                self._stop.wait(1.0)

    def _at_end(self) -> bool:
        for tp in self._tps:
            hw = self._consumer.highwater(tp)
            if hw is None or self._consumer.position(tp) < hw:
                return False
        return True

    def drain(self) -> list[ReceivedDelta]:
        """Every record read since the last call (never blocks)."""
        out: list[ReceivedDelta] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def rewind(self) -> None:
        """Read everything again from the start (after loading a new clustering version)."""
        self.caught_up.clear()
        self._rewind.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close(autocommit=False)
