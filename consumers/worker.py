"""``ConsumerWorker``: one member of the consumer group, from poll to commit.

One batch, in this order (at-least-once, and a replay is harmless):

1. sync the shared centroids (version pointers in Qdrant, deltas from Kafka);
2. poll up to ``max_poll_records`` records;
3. drop deleted users' conversations (the deny-list), mark the rest ``pending`` in Qdrant;
4. ``process_batch`` (decode, reuse by content hash, one LLM call, embed, assign);
5. drop deleted users' points again (the deny-list may have grown), upsert the facet points, mark the
   conversations ``processed``;
6. send the dead letters and flush;
7. publish the centroid deltas and flush;
8. commit the offsets.

A crash anywhere before 8 redelivers the batch, which overwrites the same point
ids (uuid5 of conversation and facet) and publishes deltas naming the same
source offsets, which every replica adds once whatever range the redelivery
polls, so nothing is stored or counted twice. If Qdrant, the LLM or Kafka fails, the worker seeks
back to the batch's first offsets, reports ``degraded`` and retries with
exponential back-off; it never crashes its loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from clio_stream.privacy.denylist import DenyList
from clio_stream.domain.facet_specs import configured_facets
from clio_stream.domain.facets import Facet
from clio_stream.embedding import EmbeddingBackend
from clio_stream.llm.base import LLMBackend
from clio_stream.online.drift import DriftMonitor
from clio_stream.ops.faults import reach
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import WORKER_METRICS
from clio_stream.storage.errors import StoreError
from clio_stream.storage.store import QdrantStore
from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.kafka_io import DeadLetterWriter, consumer_lag, ensure_topics, make_consumer, make_producer
from consumers.batch_writes import write_batch
from consumers.centroids import SharedCentroids
from consumers.decoding import DecodedBatch, RecordLike, decode_records, offset_ranges
from consumers.delta_dead_letters import DeltaDeadLetters
from consumers.deltas_io import DeltaReader
from consumers.denied import drop_denied_conversations, drop_denied_writes
from consumers.health import BrokerWatch, backoff_delay
from consumers.metrics import WorkerMetrics
from consumers.poison import RETRYABLE, llm_answers_health_check, process_isolating_poison
from consumers.processing import BatchOutcome, pending_records, process_batch

log = logging.getLogger(__name__)

# The steps of one batch in write order, each announced to clio_stream.ops.faults before it runs, so the fault
# suite can kill a worker at every one of them (tests/reliability/test_consumer_kills.py).
WRITE_STEPS = ("consume.mark_pending", "consume.process", "consume.upsert_facets", "consume.mark_processed",
               "consume.send_dead_letters", "consume.send_deltas", "consume.commit")

# How long a starting worker waits to have read the deltas topic before taking partitions.
STARTUP_DELTAS_WAIT_S = 10.0


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class ConsumerWorker:
    """Consume conversations, store their facets, share centroid updates; see the module docstring."""

    def __init__(
        self,
        settings: ClioSettings | None = None,
        facets: Sequence[Facet] | None = None,
        llm: LLMBackend | None = None,
        embedder: EmbeddingBackend | None = None,
        store: QdrantStore | None = None,
    ) -> None:
        """Facets default to the settings' (main and custom); LLM, embedder and store to ones built from
        ``settings`` (and closed by ``close``)."""
        self.settings = settings or ClioSettings()
        self.facets = list(facets) if facets is not None else configured_facets(self.settings)
        if len({f.name for f in self.facets}) != len(self.facets):
            raise ValueError("facet names must be unique")
        self.worker_id = self.settings.worker_id or _default_worker_id()
        self._llm, self._embedder, self._store = llm, embedder, store
        self._owns_llm, self._owns_store = llm is None, store is None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._dlq: DeadLetterWriter | None = None
        self._deltas: DeltaReader | None = None
        self.centroids: SharedCentroids | None = None
        self.denylist: DenyList | None = None
        self.metrics = WorkerMetrics(self.worker_id)
        self.drift = DriftMonitor(delta=self.settings.drift_delta, min_increase=self.settings.drift_min_increase)
        self._metrics_written_at = 0.0
        self._broker = BrokerWatch(self.settings.broker_unreachable_s)
        self.health = "starting"
        self.health_reason: str | None = None
        self._failures = 0
        self._failing_batch: tuple[tuple[str, int, int], ...] | None = None  # start offsets of the failing batch
        self._delta_dead_letters = DeltaDeadLetters()
        self._stop = threading.Event()
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def build(self) -> None:
        """Construct the LLM, embedder and store the caller did not pass (no connection needed yet).

        Separate from ``start`` so a configuration error (unknown model, missing
        URL) stops the process at once instead of being retried as an outage.
        """
        s = self.settings
        if self._llm is None:
            from clio_stream.llm import make_llm

            self._llm = make_llm(s)
        if self._embedder is None:
            from clio_stream.embedding import make_embedder

            self._embedder = make_embedder(s)
        if self._store is None:
            self._store = QdrantStore.from_settings(s)
        if self.denylist is None:
            self.denylist = DenyList(self._store.deletions, s.user_id_hash_key, s.deletion_denylist_refresh_s)

    def start(self) -> None:
        """Build what is missing, create topics and collections, load centroids, join the group.

        Idempotent: after a failed start (Qdrant down) the next call continues
        where this one stopped. The group consumer comes last, so the worker
        only takes partitions once it can process them.
        """
        if self._started:
            return
        s = self.settings
        self.build()
        kafka = KafkaConnection.from_settings(s)
        assert self._store is not None and self._embedder is not None
        if self._producer is None:
            ensure_topics(kafka, {s.topic: s.topic_partitions, s.dlq_topic: s.topic_partitions,
                                              s.deltas_topic: s.deltas_partitions})
            self._producer = make_producer(kafka, client_id=f"clio-{self.worker_id}")
            self._dlq = DeadLetterWriter(self._producer, s.dlq_topic)
        self._store.ensure_collections(int(self._embedder.dim))
        if self._deltas is None:
            self._deltas = DeltaReader(kafka, s.deltas_topic, client_id=f"clio-deltas-{self.worker_id}")
        if self.centroids is None:
            self.centroids = SharedCentroids([f.name for f in self.facets if f.has_hierarchy], int(self._embedder.dim))
        self._sync_centroids(strict=True)
        if not self._deltas.caught_up.wait(STARTUP_DELTAS_WAIT_S):
            log.warning("centroid deltas not read to the end after %.0f s; continuing", STARTUP_DELTAS_WAIT_S)
        self._sync_centroids(strict=True)
        self._consumer = make_consumer(kafka, s.consumer_group, [s.topic],
                                       max_poll_records=s.max_poll_records, client_id=f"clio-{self.worker_id}")
        self._started = True
        self._set_health("ok")
        log.info("worker %s consuming %s as group %s", self.worker_id, s.topic, s.consumer_group)

    def run(self, stop_event: threading.Event) -> None:
        """Process batches until ``stop_event`` is set, then finish the batch in hand and leave the group."""
        self._stop = stop_event
        try:
            self.build()  # configuration errors raise here, before the loop
            while not stop_event.is_set():
                try:
                    self.run_once(self.settings.poll_timeout_ms)
                except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                    log.exception("unexpected error in the worker loop")
                    self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self.close()

    def close(self) -> None:
        """Leave the group (no commit: the batch in hand, if any, was not finished), flush, close."""
        if self._closed:
            return
        self._closed = True
        self._set_health("stopped")
        for name, closer in (("consumer", lambda: self._consumer and self._consumer.close(autocommit=False)),
                             ("deltas reader", lambda: self._deltas and self._deltas.close()),
                             ("producer", lambda: self._producer and self._producer.close(timeout=10))):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.warning("closing the %s failed", name, exc_info=True)
        self._write_metrics()
        if self._owns_store and self._store is not None:
            self._store.close()
        if self._owns_llm and self._llm is not None:
            self._llm.close()
        log.info("worker %s stopped: %s", self.worker_id, self.metrics_snapshot())

    # ------------------------------------------------------------------ one batch

    def run_once(self, timeout_ms: int | None = None) -> int:
        """Poll and handle one batch; returns the number of conversations stored (0 on failure or no data)."""
        if not self._started:
            try:
                self.start()
            except (*RETRYABLE, OSError, TimeoutError) as exc:
                self._fail(f"start: {type(exc).__name__}: {exc}")
                return 0
        assert self._consumer is not None
        self._sync_centroids()
        polled = self._consumer.poll(timeout_ms=self.settings.poll_timeout_ms if timeout_ms is None else timeout_ms,
                                     max_records=self.settings.max_poll_records)
        records = sorted((r for rs in polled.values() for r in rs), key=lambda r: (r.topic, r.partition, r.offset))
        self.metrics.set_lag(self._lag())
        if not records:
            self._watch_broker()
            self._maybe_write_metrics()
            return 0
        self._broker.reset()
        t0 = time.perf_counter()
        start = tuple(sorted((t, p, first) for (t, p), (first, _) in offset_ranges(records).items()))
        isolate = start == self._failing_batch and self._failures >= self.settings.poison_after_failures
        try:
            outcome = self._without_denied(self._process(records, isolate=isolate))
            assert self._store is not None and self._dlq is not None and self._producer is not None
            write_batch(outcome, store=self._store, dlq=self._dlq, producer=self._producer,
                        deltas_topic=self.settings.deltas_topic, metrics=self.metrics)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the batch must be redelivered
            if not isinstance(exc, RETRYABLE):
                log.exception("batch of %d records failed", len(records))
            self._rewind(records)
            self._failing_batch = start
            self._fail(f"{type(exc).__name__}: {exc}")
            self._maybe_write_metrics()
            return 0
        self._failing_batch = None
        self._commit(outcome)
        self._recovered()
        self.metrics.record_batch(outcome, len(records), time.perf_counter() - t0)
        if self.centroids is not None:
            self.metrics.set_clusters(self.centroids.outlier_rates(), self.centroids.versions())
        self._watch_drift(outcome)
        self._maybe_write_metrics(force=self.metrics.batches % self.settings.metrics_every_batches == 0)
        return outcome.processed

    def _watch_broker(self) -> None:
        """After an empty poll: show a lost group coordinator as ``degraded`` (kafka-python reconnects by itself)."""
        try:
            lost = bool(self._consumer._coordinator.coordinator_unknown())  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - a private API of kafka-python: never let it break the loop
            return
        now = time.monotonic()
        lost_since = self._broker.lost_at
        change = self._broker.observe(lost, now)
        if change == "back" and self.health == "degraded":
            log.info("broker reachable again")
            self._set_health("ok")
        elif change == "unreachable" and self.health == "ok":
            log.warning("no Kafka group coordinator for %.0f s: broker unreachable", now - (lost_since or now))
            self._set_health("degraded", "Kafka broker unreachable")

    def _watch_drift(self, outcome: BatchOutcome) -> None:
        """Feed each assigned point's distance to its facet's ADWIN (see clio_stream.online.drift)."""
        assigned = ((p.facet, p.cluster_version, p.similarity) for p in outcome.facet_points if p.similarity is not None)
        for facet in self.drift.watch(assigned):
            log.info("drift detected on %s: mean assignment distance rose", facet)
        self.metrics.set_drift(self.drift.snapshot())

    def _process(self, records: Sequence[RecordLike], *, isolate: bool = False) -> BatchOutcome:
        """Mark pending, then process; a poison record is isolated and dead-lettered (``consumers.poison``)."""
        assert self._store is not None and self._llm is not None and self._embedder is not None
        s = self.settings
        decoded = self._without_denied_input(decode_records(records, max_bytes=s.max_message_bytes))
        reach("consume.mark_pending")
        self._store.points.mark_conversations(pending_records(decoded, s))
        reach("consume.process")
        models = self.centroids.models if self.centroids is not None else {}
        llm, embedder, store = self._llm, self._embedder, self._store.points

        def process(batch: Sequence[RecordLike], decoded_batch: DecodedBatch | None) -> BatchOutcome:
            return process_batch(batch, decoded=decoded_batch, facets=self.facets, llm=llm, embedder=embedder,
                                 store=store, models=models, settings=s)

        return process_isolating_poison(records, decoded, process, isolate=isolate, failures=self._failures,
                                        llm_healthy=lambda: llm_answers_health_check(llm), settings=s)

    def _without_denied_input(self, decoded: DecodedBatch) -> DecodedBatch:
        """Deleted users' conversations out before anything is written or asked (consumers.denied)."""
        assert self.denylist is not None
        kept, dropped = drop_denied_conversations(decoded, self.denylist)
        self._count_denied(dropped)
        return kept

    def _without_denied(self, outcome: BatchOutcome) -> BatchOutcome:
        """Deleted users' points out right before the upsert; their offsets are still committed."""
        assert self.denylist is not None
        kept, dropped = drop_denied_writes(outcome, self.denylist)
        self._count_denied(dropped)
        return kept

    def _count_denied(self, dropped: int) -> None:
        if dropped:
            self.metrics.add(denied_dropped=dropped)
            log.info("dropped %d conversation(s) of deleted users; their offsets are committed", dropped)

    def _commit(self, outcome: BatchOutcome) -> None:
        """Commit past the batch; a failure here only means a harmless redelivery later."""
        assert self._consumer is not None
        offsets = {TopicPartition(t, p): OffsetAndMetadata(last + 1, "", -1)
                   for (t, p), (_, last) in outcome.offsets.items()}
        try:
            reach("consume.commit")
            self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner redelivers, and the writes are idempotent.
            self.metrics.add(commit_failures=1)
            log.warning("commit failed (%s); the batch will be redelivered and overwrite itself", exc)

    def _rewind(self, records: Sequence[RecordLike]) -> None:
        """Seek back to the batch's first offsets on the partitions still ours, so it is polled again."""
        if self._consumer is None:
            return
        owned = self._consumer.assignment()
        for (topic, partition), (first, _) in offset_ranges(records).items():
            tp = TopicPartition(topic, partition)
            if tp in owned:
                self._consumer.seek(tp, first)

    # ------------------------------------------------------------------ shared state

    def _sync_centroids(self, strict: bool = False) -> None:
        """Load moved version pointers, then apply every new delta; failures only delay this (unless strict)."""
        if self.centroids is None or self._deltas is None or self._store is None:
            return
        try:
            if self.centroids.refresh(self._store.versions):
                self._deltas.rewind()  # deltas of the new version may predate our noticing it
                self.metrics.set_clusters(self.centroids.outlier_rates(), self.centroids.versions())
        except StoreError as exc:
            if strict:
                raise
            log.debug("centroid version check skipped: %s", exc)
        report = self.centroids.apply(self._deltas.drain())
        if report.applied:
            self.metrics.add(deltas_applied=report.applied)
        if report.rejected:
            self.metrics.add(deltas_rejected=len(report.rejected))
            if self._dlq is not None:
                self._delta_dead_letters.send(self._dlq, report)

    # ------------------------------------------------------------------ health and metrics

    def _set_health(self, health: str, reason: str | None = None) -> None:
        self.health, self.health_reason = health, reason
        self.metrics.set_health(health, reason)

    def _fail(self, reason: str) -> None:
        """Report degraded and wait before the retry (interrupted by the stop event)."""
        self._failures += 1
        self.metrics.add(failed_batches=1)
        self._set_health("degraded", reason[:300])
        delay = backoff_delay(self._failures, self.settings.backoff_initial_s, self.settings.backoff_max_s)
        log.warning("worker degraded (%s); retrying in %.1f s", reason[:300], delay)
        self._stop.wait(delay)

    def _recovered(self) -> None:
        if self._failures:
            log.info("worker recovered after %d failed attempts", self._failures)
        self._failures = 0
        if self.health != "ok":
            self._set_health("ok")

    def _lag(self) -> int | None:
        try:
            return consumer_lag(self._consumer) if self._consumer is not None else None
        except Exception:  # noqa: BLE001 - a metric must not break the loop
            return None

    def metrics_snapshot(self) -> dict[str, Any]:
        """The worker's counters (processed, dead-lettered, reused, LLM calls, lag, health, ...)."""
        return self.metrics.snapshot()

    def _maybe_write_metrics(self, force: bool = False) -> None:
        """Write the metrics doc every ``metrics_interval_s`` (and when forced), so readers see fresh health."""
        if force or time.monotonic() - self._metrics_written_at >= self.settings.metrics_interval_s:
            self._write_metrics()

    def _write_metrics(self) -> None:
        """Store the metrics as this worker's state document (the API and scheduler read it); skipped if Qdrant is down."""
        if self._store is None:
            return
        self._metrics_written_at = time.monotonic()
        try:
            self._store.states.write(WORKER_METRICS.of(self.worker_id), self.metrics.document())
        except Exception as exc:  # noqa: BLE001 - metrics are best effort
            log.debug("writing worker metrics failed: %s", exc)
