"""Thin kafka-python helpers with settings that work against Tansu and Kafka.

Why these defaults (measured against Tansu 0.6 with kafka-python 2.3.3):

* A group join takes about half the session timeout on Tansu, so consumers use
  ``session_timeout_ms=6000, heartbeat_interval_ms=1000`` (~3 s per join instead
  of ~5 s with the 10 s default, ~23 s with kafka-python 3's 45 s).
* Tansu answers ListOffsets(latest) wrongly (too low), so lag comes from the
  high-water mark carried by every fetch response (``consumer.highwater``), not
  from ``end_offsets``; and ``auto_offset_reset="latest"`` is unsafe there.
* Offsets are committed by the application after its work is durable
  (``enable_auto_commit=False``): at-least-once delivery.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgpack
from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import TopicAlreadyExistsError
from kafka.producer.future import FutureRecordMetadata

from clio_stream.streaming.connection import KafkaConnection

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "clio.conversations"
DEFAULT_DLQ_TOPIC = "clio.conversations.dlq"

# Keys of the dead-letter map (a msgpack map; the contract other tools read).
DLQ_FIELDS = ("key", "value", "reason", "topic", "partition", "offset", "time")


def _to_bytes(v: bytes | str | None) -> bytes | None:
    if v is None or isinstance(v, bytes):
        return v
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return str(v).encode("utf-8")


def make_producer(
    bootstrap: KafkaConnection | str | list[str], *, idempotent: bool = False, **overrides: Any
) -> KafkaProducer:
    """A producer for durable keyed writes: acks=all, in-order retries, small linger.

    Keys and values may be ``bytes`` or ``str`` (UTF-8 encoded).

    ``idempotent`` is off by default because kafka-python 2.3.3 sends
    InitProducerId v0/v1, which Tansu answers with UNKNOWN_SERVER_ERROR (it
    needs v3's producer id/epoch fields), and every batch is then aborted. Turn
    it on against Apache Kafka. Without it, ``max_in_flight_requests_per_connection=1``
    keeps per-partition order across retries; a retry after a lost ack can still
    duplicate a record, which downstream handles by upserting by conversation id.
    """
    config: dict[str, Any] = {
        **KafkaConnection.of(bootstrap).client_config(),
        "acks": "all",
        "enable_idempotence": idempotent,
        "linger_ms": 5,
        "key_serializer": _to_bytes,
        "value_serializer": _to_bytes,
        "request_timeout_ms": 30_000,
    }
    if not idempotent:
        config["max_in_flight_requests_per_connection"] = 1
    config.update(overrides)
    return KafkaProducer(**config)


def make_consumer(
    bootstrap: KafkaConnection | str | list[str],
    group_id: str | None,
    topics: Iterable[str] | None = None,
    *,
    max_poll_records: int = 500,
    listener: ConsumerRebalanceListener | None = None,
    **overrides: Any,
) -> KafkaConsumer:
    """A group consumer tuned for fast joins and manual commits (``listener`` hears of rebalances).

    ``topics`` may be empty to ``assign()`` partitions manually later.
    ``max_poll_interval_ms`` stays generous (30 min) because a batch may wait on
    the LLM; heartbeats run in a background thread, so slow batches do not lose
    the assignment (verified with 2 s of work between polls).
    """
    config: dict[str, Any] = {
        **KafkaConnection.of(bootstrap).client_config(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "max_poll_interval_ms": 1_800_000,
        "max_poll_records": max_poll_records,
        "request_timeout_ms": 30_000,
    }
    config.update(overrides)
    consumer = KafkaConsumer(**config)
    topics = list(topics or [])
    if topics:
        consumer.subscribe(topics, listener=listener)
    return consumer


def ensure_topics(
    bootstrap: KafkaConnection | str | list[str],
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the missing topics (name -> partitions); return the names created.

    Idempotent and safe to race with another process creating the same topic.
    Existing topics are left alone even if their partition count differs (a
    warning is logged): changing partitions reshuffles keys and is a deliberate
    operator action. Returns once the broker's metadata lists every topic.

    Metadata comes from a group-less consumer, not the admin client: kafka-python
    2.3.3's ``KafkaAdminClient.list_topics``/``describe_topics`` crash decoding
    Tansu's authorized-operations bits (``ValueError: 14 is not a valid ACLOperation``).
    """
    connection = KafkaConnection.of(bootstrap).client_config()
    meta = KafkaConsumer(**connection, group_id=None, enable_auto_commit=False, client_id="clio-admin-meta")
    admin = KafkaAdminClient(**connection, client_id="clio-admin")
    try:
        existing = meta.topics()
        created: list[str] = []
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:  # one at a time: a race on one must not hide errors on others
                admin.create_topics(
                    [NewTopic(name=name, num_partitions=partitions,
                              replication_factor=replication_factor)],
                    timeout_ms=int(timeout_s * 1000),
                )
                created.append(name)
                log.info("created topic %s (%d partitions)", name, partitions)
            except TopicAlreadyExistsError:
                log.debug("topic %s created concurrently", name)
        _wait_for_topics(meta, topics, timeout_s)
        return created
    finally:
        admin.close()
        meta.close()


def _wait_for_topics(meta: KafkaConsumer, topics: Mapping[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        known = meta.topics()  # a fresh metadata request each call
        parts = {n: meta.partitions_for_topic(n) or set() for n in topics if n in known}
        if all(parts.get(n) for n in topics):
            for n, want in topics.items():
                if len(parts[n]) != want:
                    log.warning("topic %s has %d partitions, wanted %d (left as is)",
                                n, len(parts[n]), want)
            return
        if time.monotonic() > deadline:
            missing = sorted(n for n in topics if not parts.get(n))
            raise TimeoutError(f"topics not visible after {timeout_s}s: {missing}")
        time.sleep(0.1)


def partition_lags(consumer: KafkaConsumer) -> dict[TopicPartition, int | None]:
    """Per assigned partition: high-water mark minus position (None before the first fetch).

    ``position`` is the next offset the application will see, so records already
    fetched but not yet returned by ``poll()`` still count as lag.
    """
    lags: dict[TopicPartition, int | None] = {}
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is None:
            lags[tp] = None
            continue
        pos = consumer.position(tp)
        lags[tp] = max(0, hw - pos) if pos is not None else None
    return lags


def committed_lags(consumer: KafkaConsumer, committed: dict[TopicPartition, int | None]
                   ) -> dict[TopicPartition, int | None]:
    """Per assigned partition: high-water mark minus the group's committed offset: the real backlog.

    Unlike ``partition_lags`` this counts records fetched but not yet stored as waiting, which they are.
    ``committed`` is the caller's cache of committed offsets (kept current after its own commits); a partition
    missing from it is asked of the group coordinator once (None: nothing committed yet, lag unknown).
    """
    owned = consumer.assignment()
    for tp in list(committed):
        if tp not in owned:
            del committed[tp]  # revoked: another member owns its lag now
    lags: dict[TopicPartition, int | None] = {}
    for tp in owned:
        if tp not in committed:
            committed[tp] = consumer.committed(tp)
        hw, done = consumer.highwater(tp), committed[tp]
        lags[tp] = None if hw is None or done is None else max(0, hw - done)
    return lags


def consumer_lag(consumer: KafkaConsumer) -> int:
    """Records not yet consumed on this consumer's partitions (as of the last fetch).

    Uses the fetch high-water mark because Tansu's ListOffsets(latest) is wrong.
    Partitions not fetched yet count as 0; call after at least one ``poll()``.
    """
    return sum(v for v in partition_lags(consumer).values() if v)


MAX_DEAD_LETTER_VALUE = 256 * 1024  # bytes of an oversized record kept in its dead letter
MAX_DEAD_LETTER_KEY = 1024  # bytes of an oversized key kept in its dead letter (and used as its Kafka key)
MAX_DEAD_LETTER_REASON = 2000  # characters of the reason


def dead_letter_key(key: bytes | None, max_key_bytes: int = MAX_DEAD_LETTER_KEY) -> bytes | None:
    """The Kafka key of a dead letter: the original key, or its SHA-256 when it is too large to send.

    The same oversized key always maps to the same digest, so its dead letters still share a partition;
    the map inside keeps the key's first bytes and its size.
    """
    if key is None or len(key) <= max_key_bytes:
        return key
    return hashlib.sha256(key).digest()


def encode_dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    topic: str,
    partition: int,
    offset: int,
    when: float | None = None,
    max_value_bytes: int = MAX_DEAD_LETTER_VALUE,
    max_key_bytes: int = MAX_DEAD_LETTER_KEY,
) -> bytes:
    """The DLQ record value: a msgpack map with the original bytes and where they came from.

    A key over ``max_key_bytes`` or a value over ``max_value_bytes`` keeps only its
    first bytes (``key_size`` / ``value_size`` say how long it was), and the reason is
    capped: an oversized record must not make its dead letter too large to produce,
    or the batch would be retried forever (a poison pill).
    """
    doc: dict[str, Any] = {
        "key": key,
        "value": value,
        "reason": reason[:MAX_DEAD_LETTER_REASON],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "time": time.time() if when is None else when,
    }
    if value is not None and len(value) > max_value_bytes:
        doc["value"], doc["value_size"] = bytes(value[:max_value_bytes]), len(value)
    if key is not None and len(key) > max_key_bytes:
        doc["key"], doc["key_size"] = bytes(key[:max_key_bytes]), len(key)
    return msgpack.packb(doc, use_bin_type=True)


def decode_dead_letter(value: bytes) -> dict[str, Any]:
    """Inverse of ``encode_dead_letter`` (for tools that replay or inspect the DLQ)."""
    out = msgpack.unpackb(value, raw=False)
    if not isinstance(out, dict):
        raise ValueError("dead letter is not a msgpack map")
    return out


class DeadLetterWriter:
    """Write records that cannot be processed to the dead-letter topic.

    The DLQ record keeps the original key (same partitioning as the source) and
    a msgpack map ``{key, value, reason, topic, partition, offset, time}`` where
    ``key``/``value`` are the original bytes, ``time`` is epoch seconds. Call
    ``flush()`` before committing the source offsets, so a crash never loses a
    record that was neither processed nor dead-lettered.
    """

    def __init__(
        self,
        producer_or_bootstrap: KafkaProducer | KafkaConnection | str | list[str],
        topic: str = DEFAULT_DLQ_TOPIC,
    ) -> None:
        if isinstance(producer_or_bootstrap, KafkaProducer):
            self._producer = producer_or_bootstrap
            self._owns_producer = False
        else:
            self._producer = make_producer(producer_or_bootstrap)
            self._owns_producer = True
        self.topic = topic
        self.sent = 0

    def send(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        reason: str,
        topic: str,
        partition: int,
        offset: int,
    ) -> FutureRecordMetadata:
        """Queue one dead letter (asynchronous; see ``flush``)."""
        payload = encode_dead_letter(
            key=key, value=value, reason=reason, topic=topic, partition=partition, offset=offset
        )
        self.sent += 1
        log.debug("dead-lettering %s[%d]@%d: %s", topic, partition, offset, reason)
        return self._producer.send(self.topic, key=dead_letter_key(key), value=payload)

    def send_record(self, record: ConsumerRecord, reason: str) -> FutureRecordMetadata:
        """Dead-letter a consumed record as it arrived (raw bytes: no deserializers)."""
        return self.send(
            key=record.key,
            value=record.value,
            reason=reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued dead letter is acknowledged (acks=all)."""
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush, and close the producer if this writer created it."""
        self.flush(timeout)
        if self._owns_producer:
            self._producer.close(timeout=timeout)

    def __enter__(self) -> DeadLetterWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def poll_without_fetching(consumer: KafkaConsumer, max_records: int) -> None:
    """One ``poll`` with every assigned partition paused: heartbeats and rebalances proceed, no record is taken.

    Partitions assigned during this very poll are not paused; anything it returns for them is sought back to,
    so it is polled again later and nothing is skipped.
    """
    consumer.pause(*consumer.assignment())
    try:
        polled = consumer.poll(timeout_ms=0, max_records=max_records)
    finally:
        consumer.resume(*consumer.paused())
    for tp, records in polled.items():
        if records:
            consumer.seek(tp, min(r.offset for r in records))
