"""A worker's counters, readable from any thread and small enough to store as a state document.

The worker updates them after each batch; ``document()`` returns them as the typed state document
(``storage.documents.WorkerMetricsDoc``) the API and the scheduler read, ``snapshot()`` the same as a
JSON-safe dict for logs, tests and Prometheus.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from kafka import TopicPartition
from pydantic import Field, PrivateAttr

from clio_stream.storage.documents import WORKER_METRICS, WorkerMetricsDoc
from consumers.processing import BatchOutcome

log = logging.getLogger(__name__)


class WorkerMetrics(WorkerMetricsDoc):
    """Running totals of one worker since it started: its state document, kept current under a lock."""

    started_at: float = Field(default_factory=time.time)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, worker_id: str, **counts: Any) -> None:
        super().__init__(worker_id=worker_id, **counts)

    def record_batch(self, outcome: BatchOutcome, records: int, seconds: float,
                     busy_seconds: float | None = None) -> None:
        """Add one committed batch (``seconds``: poll-to-commit wall time; ``busy_seconds``: of that, the time no
        earlier batch's commit already counted, so batches in flight together count their overlap once)."""
        with self._lock:
            self.batches += 1
            self.processed += outcome.processed
            self.dead_lettered += len(outcome.dead_letters)
            for d in outcome.dead_letters:
                self.dead_lettered_by_code[d.code] = self.dead_lettered_by_code.get(d.code, 0) + 1
            self.reused_by_hash += outcome.reused_by_hash
            self.duplicates += outcome.duplicates
            self.llm_calls += outcome.llm_calls
            self.llm_prompts += outcome.llm_prompts
            self.unparseable += outcome.unparseable
            for facet, n in outcome.assigned.items():
                self.assigned[facet] = self.assigned.get(facet, 0) + n
            for facet, n in outcome.outliers.items():
                self.outliers[facet] = self.outliers.get(facet, 0) + n
            self.deltas_published += len(outcome.deltas)
            self.busy_seconds += seconds if busy_seconds is None else busy_seconds
            self.llm_seconds += outcome.llm_seconds
            self.embed_seconds += outcome.embed_seconds
            self.last_batch_seconds = seconds
            self.last_batch_records = records

    def set_clusters(self, outlier_rate: Mapping[str, float], versions: Mapping[str, int]) -> None:
        with self._lock:
            self.outlier_rate = {k: float(v) for k, v in outlier_rate.items()}
            self.cluster_versions = {k: int(v) for k, v in versions.items()}

    def set_drift(self, drift: Mapping[str, dict[str, Any]]) -> None:
        with self._lock:
            self.drift = {k: dict(v) for k, v in drift.items()}

    def set_health(self, health: str, reason: str | None = None) -> None:
        with self._lock:
            self.health = health
            self.health_reason = reason

    def add(self, **counts: int) -> None:
        """Increment named counters (``failed_batches=1``, ``deltas_applied=3``, ...)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def add_seconds(self, **seconds: float) -> None:
        """Add to named time totals (``store_write_seconds=0.02``)."""
        with self._lock:
            for name, v in seconds.items():
                setattr(self, name, getattr(self, name) + float(v))

    def set_lag(self, lags: Mapping[TopicPartition, int | None]) -> None:
        """Each owned partition's backlog (committed offset to high-water mark); the total where all are known."""
        with self._lock:
            self.partition_lag = {f"{tp.topic}/{tp.partition}": n for tp, n in lags.items() if n is not None}
            self.consumer_lag = sum(self.partition_lag.values()) if lags and len(self.partition_lag) == len(lags) \
                else None

    def document(self) -> WorkerMetricsDoc:
        """A copy of every counter, with derived rates, as the worker's state document."""
        with self._lock:
            doc = WorkerMetricsDoc.model_validate(self.model_dump())
        doc.conversations_per_s = doc.processed / doc.busy_seconds if doc.busy_seconds > 0 else None
        doc.updated_at = time.time()
        return doc

    def snapshot(self) -> dict[str, Any]:
        """``document()`` as a JSON-safe dict."""
        return self.document().model_dump(mode="json")


class MetricsWriter:
    """Stores a worker's metrics as its state document (the API and the scheduler read it), at most every
    ``interval_s`` unless forced; skipped while Qdrant is down (metrics are best effort)."""

    def __init__(self, metrics: WorkerMetrics, interval_s: float) -> None:
        self.metrics, self.interval_s = metrics, interval_s
        self._written_at = float("-inf")

    def maybe_write(self, states: Any, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._written_at < self.interval_s:
            return
        self._written_at = time.monotonic()
        try:
            states.write(WORKER_METRICS.of(self.metrics.worker_id), self.metrics.document())
        except Exception as exc:  # noqa: BLE001 - metrics are best effort
            log.debug("writing worker metrics failed: %s", exc)
