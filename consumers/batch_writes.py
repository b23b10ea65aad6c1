"""Everything durable about one processed batch, before its offsets are committed: Qdrant, then the DLQ, then deltas.

Each step is announced to ``clio_stream.ops.faults`` (the names are in
``consumers.worker.WRITE_STEPS``), so the fault suite can kill a worker at every
one of them. Every write is idempotent, so a redelivered batch overwrites itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata

from clio_stream.ops.faults import reach
from clio_stream.storage.store import QdrantStore
from clio_stream.streaming.kafka_io import DeadLetterWriter
from consumers.deltas_io import publish_deltas
from consumers.metrics import WorkerMetrics
from consumers.processing import BatchOutcome

log = logging.getLogger(__name__)


class DeliveryFailed(KafkaError):
    """A produced record (dead letter or delta) was not acknowledged."""


def check_delivered(futures: Sequence[FutureRecordMetadata], what: str) -> None:
    """Raise :class:`DeliveryFailed` unless every produced record was acknowledged (after a flush)."""
    for fut in futures:
        if not fut.is_done or fut.failed():
            raise DeliveryFailed(f"{what} not acknowledged: {fut.exception!r}")


def write_batch(outcome: BatchOutcome, *, store: QdrantStore, dlq: DeadLetterWriter, producer: KafkaProducer,
                deltas_topic: str, metrics: WorkerMetrics) -> None:
    """Upsert the facet points, mark the conversations processed, send the dead letters, publish the deltas."""
    t0 = time.perf_counter()
    reach("consume.upsert_facets")
    store.points.upsert_facets(outcome.facet_points)
    reach("consume.mark_processed")
    store.points.mark_conversations([*outcome.conversations, *outcome.dead_lettered])
    metrics.add_seconds(store_write_seconds=time.perf_counter() - t0)
    if outcome.dead_letters:
        reach("consume.send_dead_letters")
        futures = [dlq.send(key=d.record.key, value=d.record.value, reason=d.reason,
                            topic=d.record.topic, partition=d.record.partition, offset=d.record.offset)
                   for d in outcome.dead_letters]
        dlq.flush(timeout=30)
        check_delivered(futures, "dead letter")
    if outcome.deltas:
        reach("consume.send_deltas")
        futures = publish_deltas(producer, deltas_topic, outcome.deltas)
        producer.flush(timeout=30)
        check_delivered(futures, "centroid delta")
