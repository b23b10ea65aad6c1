"""The online k-means model of every hierarchy facet, kept the same on every worker.

Replicas never move centroids on their own: each ships deltas of what it
assigned (one vector per source record), and every replica applies every delta
(its own included) with ``OnlineKMeans.merge_deltas`` (a drained batch at
once), which is order-independent and adds each source record once. A delta
that is malformed or does not fit the model is rejected with a reason and the
rest still apply. The clustering itself (centroids, version) comes from the
store: the batch job or ``bootstrap-clusters`` writes centroids, then flips the
facet's version pointer; workers notice the flip and load the new version.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from clio_stream.online.deltas import CentroidDeltas, DeltaRejected
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.storage.errors import StoreError
from consumers.deltas_io import DeltaReader, ReceivedDelta
from consumers.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class CentroidSource(Protocol):
    """The two store calls this needs (``QdrantStore.versions`` fits)."""

    def current_version(self, facet: str) -> int | None: ...

    def get_centroids(self, facet: str, version: int | None = None) -> dict[str, Any] | None: ...


@dataclass
class DeltaReport:
    """What one ``SharedCentroids.apply`` did with a drained list of deltas."""

    applied: int = 0  # deltas that added at least one record
    records: int = 0  # source records added
    rejected: list[ReceivedDelta] = field(default_factory=list)  # each with its ``reason``


class SharedCentroids:
    """Current ``OnlineKMeans`` per facet name; facets with no published clustering are absent."""

    def __init__(self, facets: Sequence[str], dim: int) -> None:
        self.facets = list(facets)
        self.dim = int(dim)
        self.models: dict[str, OnlineKMeans] = {}
        # Batches in flight assign on their own threads while the worker's thread merges deltas: both hold this.
        self.lock = threading.Lock()

    def refresh(self, store: CentroidSource) -> list[str]:
        """Load the clustering of each facet whose version pointer moved; returns the facets reloaded.

        A few small reads per call, so it is cheap enough to run before every batch.
        """
        reloaded: list[str] = []
        for name in self.facets:
            version = store.current_version(name)
            current = self.models.get(name)
            if version is None or (current is not None and current.version == version):
                continue
            doc = store.get_centroids(name, version)
            if doc is None:
                log.warning("facet %s: version pointer says v%d but no centroids are stored", name, version)
                continue
            model = OnlineKMeans.from_state(doc)
            if model.dim != self.dim:
                log.error("facet %s: clustering v%d is %d-d, the embedder %d-d; ignoring it",
                          name, version, model.dim, self.dim)
                continue
            model.facet = name
            with self.lock:
                self.models[name] = model
            reloaded.append(name)
            log.info("facet %s: loaded clustering v%d (k=%d)", name, version, model.n_clusters)
        return reloaded

    def apply(self, received: Iterable[ReceivedDelta]) -> DeltaReport:
        """Merge each delta into its facet's model; a bad one is rejected (with its reason), never raised.

        A delta for a known facet with no clustering loaded yet is skipped: it
        is not hostile, and the reader replays the topic when a version loads.
        """
        with self.lock:
            return self._apply(received)

    def _apply(self, received: Iterable[ReceivedDelta]) -> DeltaReport:
        """Check each delta on its own (a bad one gets its own reason), then merge each facet's good ones at once."""
        report = DeltaReport()
        accepted: dict[str, list[ReceivedDelta]] = {}
        for item in received:
            reason = item.reason
            d = item.deltas
            if d is not None and reason is None:
                if d.facet not in self.facets:
                    reason = f"unknown facet {d.facet!r}"
                elif (model := self.models.get(d.facet)) is not None:
                    try:
                        model.check_delta(d)
                    except DeltaRejected as exc:
                        reason = str(exc)
                    except Exception as exc:  # noqa: BLE001 - one delta must never stop the others
                        reason = _failure(d, exc)
                    else:
                        accepted.setdefault(d.facet, []).append(item)
            if reason is not None:
                _reject(report, item, reason)
        for facet, items in accepted.items():
            batch = [item.deltas for item in items if item.deltas is not None]
            try:
                added = self.models[facet].merge_deltas(batch)
            except Exception as exc:  # noqa: BLE001 - checked above, so this is a bug: say so per delta
                reason = _failure(batch[0], exc)
                for item in items:
                    _reject(report, item, reason)
                continue
            report.applied += sum(n > 0 for n in added)
            report.records += sum(added)
        return report

    def sync(self, store: CentroidSource, deltas: DeltaReader, metrics: WorkerMetrics, *,
             strict: bool = False, check_versions: bool = True) -> DeltaReport:
        """Load moved version pointers (when ``check_versions``), then apply every delta read since the last
        call (counted in ``metrics``).

        A store failure only delays the version check (unless ``strict``: a starting worker must load them).
        """
        try:
            if check_versions and self.refresh(store):
                deltas.rewind()  # deltas of the new version may predate our noticing it
                metrics.set_clusters(self.outlier_rates(), self.versions())
        except StoreError as exc:
            if strict:
                raise
            log.debug("centroid version check skipped: %s", exc)
        report = self.apply(deltas.drain())
        if report.applied:
            metrics.add(deltas_applied=report.applied)
        if report.rejected:
            metrics.add(deltas_rejected=len(report.rejected))
        return report

    def versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self.models.items()}

    def outlier_rates(self) -> dict[str, float]:
        """Outlier fraction of this worker's recent assignments, per facet."""
        return {name: m.outlier_rate for name, m in self.models.items()}


def _failure(d: CentroidDeltas, exc: Exception) -> str:
    log.exception("applying centroid delta %s failed", d.name)
    return f"apply failed: {type(exc).__name__}: {exc}"[:200]


def _reject(report: DeltaReport, item: ReceivedDelta, reason: str) -> None:
    rec = item.record
    log.warning("rejecting centroid delta %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, reason)
    report.rejected.append(ReceivedDelta(rec, item.deltas, reason))
