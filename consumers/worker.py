"""``ConsumerWorker``: one member of the consumer group, from poll to commit, with batches in flight.

One batch, in this order (at-least-once, and a replay is harmless):

1. sync the shared centroids (version pointers in Qdrant, deltas from Kafka);
2. poll up to ``max_poll_records`` records;
3. drop deleted users' conversations (the deny-list), mark the rest ``pending`` in Qdrant;
4. ``process_batch`` on a thread of its own (decode, reuse by content hash, the LLM, embed, assign), while
   this thread polls and launches the next batches, up to ``max_in_flight_batches`` (``consumers.in_flight``);
5. when the batch is the oldest in flight and done: drop deleted users' points again (the deny-list may
   have grown), upsert the facet points, mark the conversations ``processed``;
6. send the dead letters and flush;
7. publish the centroid deltas and flush;
8. commit the offsets.

Steps 5-8 run on this thread in poll order, so a batch is committed only after it and every batch polled
before it were stored. A crash anywhere before 8 redelivers the batch (and every later one), which overwrites
the same point ids (uuid5 of conversation and facet) and publishes deltas naming the same source offsets,
which every replica adds once whatever range the redelivery polls, so nothing is stored or counted twice. If
Qdrant, the LLM or Kafka fails, the worker gives up that batch and every later one in flight, seeks back to
the earliest one's offsets, reports ``degraded`` and retries with exponential back-off; it never crashes its
loop. A rebalance first writes and commits the batches already done, then gives up the rest (their records
go to the partitions' next owner, from the committed offsets).
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
from clio_stream.domain.facets import Facet, warm_computed_facets
from clio_stream.embedding import CachedEmbedder, EmbeddingBackend
from clio_stream.llm.base import LLMBackend
from clio_stream.online.drift import DriftMonitor
from clio_stream.ops.faults import reach
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.kafka_io import (
    DeadLetterWriter,
    committed_lags,
    ensure_topics,
    make_consumer,
    make_producer,
    poll_without_fetching,
)
from consumers.batch_writes import write_batch
from consumers.centroids import SharedCentroids
from consumers.decoding import DecodedBatch, RecordLike, decode_records
from consumers.delta_dead_letters import DeltaDeadLetters
from consumers.deltas_io import DeltaReader
from consumers.denied import DenyFilter
from consumers.health import WorkerHealth
from consumers.in_flight import InFlight, InFlightBatch, RevokeListener, seek_back, start_offsets
from consumers.metrics import MetricsWriter, WorkerMetrics
from consumers.poison import RETRYABLE, llm_answers_health_check, process_isolating_poison
from consumers.processing import BatchOutcome, process_batch
from consumers.status_records import pending_records

log = logging.getLogger(__name__)

# The steps of one batch in write order, each announced to clio_stream.ops.faults before it runs, so the fault
# suite can kill a worker at every one of them (tests/reliability/test_consumer_kills.py).
# The in-flight stages: ``consume.in_flight`` (a batch launched while an earlier one is not committed yet),
# ``consume.embed`` (the LLM has answered) and ``consume.queued`` (processed, waiting for its turn to be written).
WRITE_STEPS = ("consume.mark_pending", "consume.in_flight", "consume.process", "consume.embed", "consume.queued",
               "consume.upsert_facets", "consume.mark_processed", "consume.send_dead_letters", "consume.send_deltas",
               "consume.commit")
# How long one turn of the loop waits for a batch in flight to finish before polling again.
IN_FLIGHT_WAIT_S = 0.05
# How often the loop reads the clustering version pointers from the store (deltas are drained every turn).
VERSION_CHECK_S = 1.0

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
        self._metrics_writer = MetricsWriter(self.metrics, self.settings.metrics_interval_s)
        self._health = WorkerHealth(self.metrics, backoff_initial_s=self.settings.backoff_initial_s,
                                    backoff_max_s=self.settings.backoff_max_s,
                                    broker_unreachable_s=self.settings.broker_unreachable_s)
        self._failing_batch: tuple[tuple[str, int, int], ...] | None = None  # start offsets of the failing batch
        self._delta_dead_letters = DeltaDeadLetters()
        self._in_flight = InFlight(self.settings.max_in_flight_batches)
        self._last_commit_at = 0.0
        self._committed: dict[TopicPartition, int | None] = {}  # the group's committed offsets (lag's base)
        self._versions_checked_at = float("-inf")
        self._stop = threading.Event()
        self._started = False
        self._warmed = False
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
        if s.embedding_cache_size and not isinstance(self._embedder, CachedEmbedder):
            self._embedder = CachedEmbedder(self._embedder, s.embedding_cache_size)
        if self._store is None:
            self._store = QdrantStore.from_settings(s)
        if self.denylist is None:
            self.denylist = DenyList(self._store.deletions, s.user_id_hash_key, s.deletion_denylist_refresh_s)
        self._deny = DenyFilter(self.denylist, self.metrics)
        if not self._warmed:
            # Before the group consumer exists: the language models' seconds of loading would otherwise land
            # in the first batch, past the poll interval of a slow machine.
            t0 = time.perf_counter()
            warm_computed_facets(self.facets)
            self._warmed = True
            log.info("computed facets ready in %.1f s", time.perf_counter() - t0)

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
        self._consumer = make_consumer(kafka, s.consumer_group, [s.topic], listener=RevokeListener(self.revoked),
                                       max_poll_records=s.max_poll_records, client_id=f"clio-{self.worker_id}")
        self._started = True
        self._health.set("ok")
        log.info("worker %s consuming %s as group %s", self.worker_id, s.topic, s.consumer_group)

    def run(self, stop_event: threading.Event) -> None:
        """Process batches until ``stop_event`` is set, then finish the oldest batch in hand and leave the group."""
        self._stop = stop_event
        try:
            self.build()  # configuration errors raise here, before the loop
            while not stop_event.is_set():
                try:
                    self.run_once(self.settings.poll_timeout_ms)
                except Exception as exc:  # noqa: BLE001 - the loop must survive anything
                    log.exception("unexpected error in the worker loop")
                    self._abandon_in_flight()
                    self._fail(f"{type(exc).__name__}: {exc}")
            self._finish_oldest()
        finally:
            self.close()

    def close(self) -> None:
        """Leave the group (no commit: batches still in flight are given up and redelivered), flush, close."""
        if self._closed:
            return
        self._closed = True
        if len(self._in_flight):
            self.metrics.add(abandoned_batches=len(self._in_flight.abandon_all()))
        self._health.set("stopped")
        for name, closer in (("consumer", lambda: self._consumer and self._consumer.close(autocommit=False)),
                             ("deltas reader", lambda: self._deltas and self._deltas.close()),
                             ("producer", lambda: self._producer and self._producer.close(timeout=10))):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing is best effort
                log.warning("closing the %s failed", name, exc_info=True)
        self._maybe_write_metrics(force=True)
        if self._owns_store and self._store is not None:
            self._store.close()
        if self._owns_llm and self._llm is not None:
            self._llm.close()
        log.info("worker %s stopped: %s", self.worker_id, self.metrics_snapshot())

    # ------------------------------------------------------------------ batches

    def run_once(self, timeout_ms: int | None = None) -> int:
        """One turn: write and commit the batches that finished (in poll order), launch another if there is room.

        Returns the number of conversations stored by the batches committed in this turn (0 on failure or no
        data). With nothing in flight it polls for up to ``timeout_ms``; with batches in flight it polls
        briefly, then waits a moment for one to finish.
        """
        if not self._started:
            try:
                self.start()
            except (*RETRYABLE, OSError, TimeoutError) as exc:
                self._fail(f"start: {type(exc).__name__}: {exc}")
                return 0
        assert self._consumer is not None
        self._sync_centroids()
        stored = self._commit_finished()
        if self._in_flight.has_room() and not self._stop.is_set():
            waiting = len(self._in_flight) > 0
            timeout = self.settings.poll_timeout_ms if timeout_ms is None else timeout_ms
            polled = self._consumer.poll(timeout_ms=0 if waiting else timeout,
                                         max_records=self.settings.max_poll_records)
            records = sorted((r for rs in polled.values() for r in rs), key=lambda r: (r.topic, r.partition, r.offset))
            self.metrics.set_lag(self._lag())
            if records:
                self._health.broker.reset()
                self._launch(records)
            elif not waiting:
                self._health.watch_broker(self._consumer, time.monotonic())
                self._maybe_write_metrics()
        elif not self._stop.is_set():
            # A rebalance completes only inside poll: keep taking part without fetching, so a worker whose
            # batches all wait for a slow LLM does not hold up the whole group until they finish.
            poll_without_fetching(self._consumer, self.settings.max_poll_records)
        if len(self._in_flight) and not stored:
            self._in_flight.wait(IN_FLIGHT_WAIT_S)
            stored += self._commit_finished()
        return stored

    def _launch(self, records: Sequence[RecordLike]) -> None:
        """Mark the batch pending (here, in poll order), then process it on its own thread."""
        assert self._store is not None
        s = self.settings
        start = start_offsets(records)
        isolate = start == self._failing_batch and self._health.failures >= s.poison_after_failures
        self._sync_centroids(check_versions=True)  # the batch is assigned with the clustering current now
        try:
            decoded = self._deny.conversations(decode_records(records, max_bytes=s.max_message_bytes))
            reach("consume.mark_pending")
            self._store.points.mark_conversations(pending_records(decoded, s))
        except Exception as exc:  # noqa: BLE001 - handled in order, like a batch that failed in flight
            self._in_flight.failed(records, exc)
            return
        if len(self._in_flight):
            reach("consume.in_flight")
        self._in_flight.launch(records, lambda: self._process(records, decoded, isolate=isolate))

    def _commit_finished(self, limit: int | None = None, *, back_off: bool = True) -> int:
        """Write and commit the finished batches at the head of the queue (at most ``limit``); returns conversations stored."""
        stored = 0
        while (limit is None or limit > 0) and (batch := self._in_flight.take_done()) is not None:
            limit = None if limit is None else limit - 1
            outcome = batch.outcome
            if batch.error is not None or outcome is None:
                self._batch_failed(batch, batch.error, back_off=back_off)
                return stored
            try:
                outcome = self._deny.writes(outcome)
                assert self._store is not None and self._dlq is not None and self._producer is not None
                write_batch(outcome, store=self._store, dlq=self._dlq, producer=self._producer,
                            deltas_topic=self.settings.deltas_topic, metrics=self.metrics)
            except Exception as exc:  # noqa: BLE001 - whatever failed, the batch must be redelivered
                self._batch_failed(batch, exc, back_off=back_off)
                return stored
            self._failing_batch = None
            committed = self._commit(outcome)
            self._health.recovered()
            now = time.monotonic()
            busy = now - max(batch.launched_at, self._last_commit_at)  # overlapping batches count once
            self._last_commit_at = now
            self.metrics.record_batch(outcome, len(batch.records), now - batch.launched_at, busy_seconds=busy)
            if self.centroids is not None:
                self.metrics.set_clusters(self.centroids.outlier_rates(), self.centroids.versions())
            self._watch_drift(outcome)
            self._maybe_write_metrics(force=self.metrics.batches % self.settings.metrics_every_batches == 0)
            stored += outcome.processed
            if not committed:
                # The group may have moved on: give up what is in flight and poll again from where we are.
                self._abandon_in_flight()
                return stored
        return stored

    def _batch_failed(self, batch: InFlightBatch, exc: BaseException | None, *, back_off: bool = True) -> None:
        """Give up ``batch`` and everything after it, seek back to the earliest of them, back off."""
        if exc is not None and not isinstance(exc, RETRYABLE):
            log.error("batch of %d records failed", len(batch.records), exc_info=exc)
        self._abandon_in_flight(also=[batch])
        self._failing_batch = batch.start
        self._fail(f"{type(exc).__name__}: {exc}" if exc is not None else "batch produced no outcome",
                   back_off=back_off)
        self._maybe_write_metrics()

    def _abandon_in_flight(self, also: Sequence[InFlightBatch] = ()) -> None:
        """Drop every batch in flight (and ``also``) uncommitted; seek back so they are polled again."""
        dropped = [*also, *self._in_flight.abandon_all()]
        later = len(dropped) - len(also)
        if later:
            self.metrics.add(abandoned_batches=later)
            log.info("gave up %d batch(es) in flight; they will be polled again", later)
        self._rewind(dropped)

    def _finish_oldest(self) -> None:
        """On stop: wait for the oldest batch in flight, write and commit it; give up the others."""
        batch = self._in_flight.oldest()
        if batch is not None and self._consumer is not None:
            batch.done.wait()
            self._commit_finished(limit=1, back_off=False)
        if len(self._in_flight):
            self._abandon_in_flight()

    def revoked(self) -> None:
        """Partitions are being taken (a rebalance, on this thread inside ``poll``): commit what is done, give up the rest.

        Nothing in flight is waited for; the records of the batches given up go to the partitions' next owner
        from the committed offsets (possibly this worker again).
        """
        self._commit_finished(back_off=False)
        if len(self._in_flight):
            n = len(self._in_flight.abandon_all())
            self.metrics.add(abandoned_batches=n)
            log.info("rebalance: gave up %d batch(es) in flight; their records will be redelivered", n)

    def _watch_drift(self, outcome: BatchOutcome) -> None:
        """Feed each assigned point's distance to its facet's ADWIN (see clio_stream.online.drift)."""
        assigned = ((p.facet, p.cluster_version, p.similarity) for p in outcome.facet_points if p.similarity is not None)
        for facet in self.drift.watch(assigned):
            log.info("drift detected on %s: mean assignment distance rose", facet)
        self.metrics.set_drift(self.drift.snapshot())

    def _process(self, records: Sequence[RecordLike], decoded: DecodedBatch, *, isolate: bool = False) -> BatchOutcome:
        """Process a batch already marked pending (its own thread); a poison record is isolated (``consumers.poison``)."""
        assert self._llm is not None and self._embedder is not None and self._store is not None
        s = self.settings
        reach("consume.process")
        centroids = self.centroids
        models = centroids.models if centroids is not None else {}
        lock = centroids.lock if centroids is not None else None
        llm, embedder, store = self._llm, self._embedder, self._store.points

        def process(batch: Sequence[RecordLike], decoded_batch: DecodedBatch | None) -> BatchOutcome:
            return process_batch(batch, decoded=decoded_batch, facets=self.facets, llm=llm, embedder=embedder,
                                 store=store, models=models, models_lock=lock, settings=s)

        return process_isolating_poison(records, decoded, process, isolate=isolate, failures=self._health.failures,
                                        llm_healthy=lambda: llm_answers_health_check(llm), settings=s)

    def _commit(self, outcome: BatchOutcome) -> bool:
        """Commit past the batch; False (a harmless redelivery later) when the group refused it."""
        assert self._consumer is not None
        offsets = {TopicPartition(t, p): OffsetAndMetadata(last + 1, "", -1)
                   for (t, p), (_, last) in outcome.offsets.items()}
        try:
            reach("consume.commit")
            self._consumer.commit(offsets)
            self._committed.update({tp: meta.offset for tp, meta in offsets.items()})
            return True
        except (CommitFailedError, KafkaError) as exc:
            # A rebalance took the partitions: the new owner redelivers, and the writes are idempotent.
            self.metrics.add(commit_failures=1)
            log.warning("commit failed (%s); the batch will be redelivered and overwrite itself", exc)
            return False

    def _rewind(self, batches: Sequence[InFlightBatch]) -> None:
        """Seek back to the batches' first offsets on the partitions still ours, so they are polled again."""
        if self._consumer is not None and batches:
            seek_back(self._consumer, batches)

    # ------------------------------------------------------------------ shared state

    def _sync_centroids(self, strict: bool = False, *, check_versions: bool = False) -> None:
        """Load moved version pointers, then apply every new delta; failures only delay this (unless strict).

        The pointers are read before each launched batch (``check_versions``) and at most every
        ``VERSION_CHECK_S`` otherwise: the loop turns every ~50 ms while batches are in flight.
        """
        if self.centroids is None or self._deltas is None or self._store is None:
            return
        now = time.monotonic()
        check = strict or check_versions or now - self._versions_checked_at >= VERSION_CHECK_S
        if check:
            self._versions_checked_at = now
        report = self.centroids.sync(self._store.versions, self._deltas, self.metrics, strict=strict,
                                     check_versions=check)
        if report.rejected and self._dlq is not None:
            self._delta_dead_letters.send(self._dlq, report)

    # ------------------------------------------------------------------ health and metrics

    @property
    def health(self) -> str:
        """starting, ok, degraded or stopped."""
        return self._health.state

    @property
    def health_reason(self) -> str | None:
        return self._health.reason

    def _fail(self, reason: str, *, back_off: bool = True) -> None:
        self._health.fail(reason, self._stop, back_off=back_off)

    def _lag(self) -> dict[TopicPartition, int | None]:
        """The backlog per owned partition: high-water mark minus committed offset (fetched records count)."""
        try:
            return committed_lags(self._consumer, self._committed) if self._consumer is not None else {}
        except Exception:  # noqa: BLE001 - a metric must not break the loop
            return {}

    def metrics_snapshot(self) -> dict[str, Any]:
        """The worker's counters (processed, dead-lettered, reused, LLM calls, lag, health, ...)."""
        return self.metrics.snapshot()

    def _maybe_write_metrics(self, force: bool = False) -> None:
        """Write the metrics doc every ``metrics_interval_s`` (and when forced), so readers see fresh health."""
        if self._store is not None:
            self._metrics_writer.maybe_write(self._store.states, force=force)
