"""A worker's counters, readable from any thread and small enough to store as a state document.

The worker updates them after each batch; ``snapshot()`` returns a JSON-safe
copy for logs, tests, the store (``worker:<id>``) and, later, the API.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumers.processing import BatchOutcome


@dataclass
class WorkerMetrics:
    """Running totals of one worker since it started."""

    worker_id: str
    processed: int = 0
    dead_lettered: int = 0
    reused_by_hash: int = 0
    duplicates: int = 0
    llm_calls: int = 0
    llm_prompts: int = 0
    unparseable: int = 0
    batches: int = 0
    failed_batches: int = 0
    commit_failures: int = 0
    denied_dropped: int = 0  # conversations of deleted users dropped before writing (offsets committed)
    deltas_published: int = 0
    deltas_applied: int = 0
    deltas_rejected: int = 0  # malformed or hostile records on the deltas topic (dead-lettered)
    busy_seconds: float = 0.0
    llm_seconds: float = 0.0
    embed_seconds: float = 0.0
    store_write_seconds: float = 0.0
    last_batch_seconds: float | None = None
    last_batch_records: int = 0
    dead_lettered_by_code: dict[str, int] = field(default_factory=dict)  # DeadLetter.code -> count
    outlier_rate: dict[str, float] = field(default_factory=dict)
    cluster_versions: dict[str, int] = field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # clio_stream.online.drift.DriftMonitor.snapshot()
    consumer_lag: int | None = None
    health: str = "starting"
    health_reason: str | None = None
    started_at: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_batch(self, outcome: BatchOutcome, records: int, seconds: float) -> None:
        """Add one committed batch (``seconds``: poll-to-commit wall time)."""
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
            self.deltas_published += len(outcome.deltas)
            self.busy_seconds += seconds
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

    def set_lag(self, lag: int | None) -> None:
        with self._lock:
            self.consumer_lag = lag

    def snapshot(self) -> dict[str, Any]:
        """A JSON-safe copy of every counter, with derived rates."""
        with self._lock:
            doc = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
            doc["outlier_rate"] = dict(self.outlier_rate)
            doc["dead_lettered_by_code"] = dict(self.dead_lettered_by_code)
            doc["cluster_versions"] = dict(self.cluster_versions)
            doc["drift"] = {k: dict(v) for k, v in self.drift.items()}
        doc["conversations_per_s"] = doc["processed"] / doc["busy_seconds"] if doc["busy_seconds"] > 0 else None
        doc["updated_at"] = time.time()
        return doc
