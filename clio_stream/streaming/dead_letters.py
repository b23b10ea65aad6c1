"""Inspect and replay the dead-letter topic: what an operator does after fixing whatever refused the records.

A dead letter (``kafka_io.encode_dead_letter``) keeps the original key and value bytes and where they came
from. Reading the DLQ uses no consumer group (partitions are assigned and read from the start up to the
high-water mark seen at the start), so inspecting never moves anyone's offsets. Replay produces the original
bytes back to their source topic (or another one) with the original key, so a record lands in the same
partition order as before; a dead letter whose key or value was cut on the way in cannot be replayed and is
reported, never sent half.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from pydantic import BaseModel, ConfigDict

from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.kafka_io import decode_dead_letter, make_producer

log = logging.getLogger(__name__)


class DeadLetter(BaseModel):
    """One DLQ record's map, typed (the fields ``encode_dead_letter`` writes)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    key: bytes | None = None
    value: bytes | None = None
    reason: str
    topic: str
    partition: int
    offset: int
    time: float
    key_size: int | None = None  # set when the key was cut to fit the dead letter
    value_size: int | None = None  # set when the value was cut

    @property
    def truncated(self) -> bool:
        return self.key_size is not None or self.value_size is not None

    @property
    def source(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class DeadLetterEntry:
    """A dead letter and where it sits in the DLQ topic; ``letter`` is None when the record is not a dead letter."""

    partition: int
    offset: int
    letter: DeadLetter | None
    error: str | None = None

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.offset}"


def read_dead_letters(connection: KafkaConnection, dlq_topic: str, *, idle_s: float = 2.0,
                      timeout_s: float = 60.0) -> Iterator[DeadLetterEntry]:
    """Every record of ``dlq_topic`` from the start, in partition order, up to the end seen while reading.

    Stops when every partition has reached its high-water mark, or after ``idle_s`` without records once
    at least one fetch has answered (the broker's "latest offset" answer is not trusted; see ``kafka_io``).
    """
    consumer = KafkaConsumer(**connection.client_config(), group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=int(idle_s * 1000),
                             request_timeout_ms=30_000)
    try:
        partitions = consumer.partitions_for_topic(dlq_topic)
        if not partitions:
            raise ValueError(f"dead-letter topic {dlq_topic!r} does not exist (or has no partitions)")
        tps = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        idle_since = time.monotonic()
        while len(done) < len(tps) and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            if not batch:
                if time.monotonic() - idle_since > idle_s:
                    break
                continue
            idle_since = time.monotonic()
            for tp, records in sorted(batch.items(), key=lambda kv: kv[0].partition):
                for rec in records:
                    yield _entry(rec.partition, rec.offset, rec.value)
                hw = consumer.highwater(tp)
                if hw is not None and consumer.position(tp) >= hw:
                    done.add(tp.partition)
    finally:
        consumer.close()


def _entry(partition: int, offset: int, value: bytes | None) -> DeadLetterEntry:
    try:
        return DeadLetterEntry(partition, offset, DeadLetter.model_validate(decode_dead_letter(value or b"")))
    except Exception as exc:  # noqa: BLE001 - a foreign record in the DLQ is reported, not fatal
        return DeadLetterEntry(partition, offset, None, error=f"not a dead letter: {type(exc).__name__}: {exc}")


@dataclass
class ReplayReport:
    """What a replay did, by count and by DLQ position (never the records' content)."""

    dry_run: bool = False
    replayed: int = 0
    skipped_truncated: list[str] = field(default_factory=list)  # DLQ positions "partition:offset"
    skipped_unreadable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"replayed": self.replayed, "dry_run": self.dry_run, "skipped_truncated": self.skipped_truncated,
                "skipped_unreadable": self.skipped_unreadable}


def replay(connection: KafkaConnection, entries: Iterator[DeadLetterEntry] | list[DeadLetterEntry], *,
           select: Callable[[DeadLetter], bool] = lambda _: True, to_topic: str | None = None,
           dry_run: bool = False) -> ReplayReport:
    """Produce the selected dead letters' original key and value to their source topic (or ``to_topic``).

    Waits for every send to be acknowledged (acks=all) before returning, so the report's count is what
    the broker holds. The DLQ itself is left as it is: it is the audit trail.
    """
    report = ReplayReport(dry_run=dry_run)
    producer = None if dry_run else make_producer(connection)
    try:
        for entry in entries:
            letter = entry.letter
            if letter is None:
                report.skipped_unreadable.append(entry.position)
                continue
            if not select(letter):
                continue
            if letter.truncated:
                report.skipped_truncated.append(entry.position)
                continue
            if producer is not None:
                producer.send(to_topic or letter.topic, key=letter.key, value=letter.value)
            report.replayed += 1
        if producer is not None:
            producer.flush()
    finally:
        if producer is not None:
            producer.close()
    log.info("replayed %d dead letter(s)%s; %d cut (not replayable), %d unreadable", report.replayed,
             " (dry run)" if dry_run else "", len(report.skipped_truncated),
             len(report.skipped_unreadable))
    return report
