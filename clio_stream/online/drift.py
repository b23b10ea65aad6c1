"""Drift in the stream: river's ADWIN watching how far new points land from their clusters.

Online assignment always puts a new point into some existing cluster; when a
topic appears that none of them covers, the points still get assigned, only
further away. Each worker feeds the distance (1 - cosine similarity to the
assigned centroid) of every point it assigns into one ADWIN detector per facet.
ADWIN keeps an adaptive window and reports when its recent part has a
significantly different mean from the older part; only a *rise* in distance
counts as drift (a fall means the clusters fit better). The scheduler reads the
detections from the workers' metrics documents and re-clusters.

A new clustering version changes every distance, so the detector of a facet
starts afresh when the version it sees changes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from river.drift import ADWIN


@dataclass
class FacetDrift:
    """One facet's detector and what it has found."""

    version: int | None
    detector: ADWIN
    seen: int = 0
    detections: int = 0
    detected_at: float | None = None
    mean_before: float | None = None
    mean_after: float | None = None


@dataclass
class DriftMonitor:
    """Per-facet ADWIN on assignment distances; ``update`` per batch, ``snapshot`` for the metrics doc."""

    delta: float = 0.002
    min_increase: float = 0.02
    facets: dict[str, FacetDrift] = field(default_factory=dict)

    def _facet(self, facet: str, version: int | None) -> FacetDrift:
        state = self.facets.get(facet)
        if state is None or state.version != version:
            state = FacetDrift(version=version, detector=ADWIN(delta=self.delta))
            self.facets[facet] = state
        return state

    def update(self, facet: str, version: int | None, distances: Iterable[float], *, now: float | None = None) -> bool:
        """Feed distances in arrival order; True when a rise was detected in this call."""
        state = self._facet(facet, version)
        fired = False
        for d in distances:
            before = state.detector.estimation
            state.detector.update(float(d))
            state.seen += 1
            if state.detector.drift_detected:
                after = state.detector.estimation  # mean of the window ADWIN kept: the recent part
                if after - before >= self.min_increase:
                    state.detections += 1
                    state.detected_at = time.time() if now is None else now
                    state.mean_before, state.mean_after = float(before), float(after)
                    fired = True
        return fired

    def watch(self, assigned: Iterable[tuple[str, int | None, float]], *, now: float | None = None) -> list[str]:
        """Feed ``(facet, version, similarity)`` of assigned points, in arrival order; the facets that drifted."""
        by_facet: dict[tuple[str, int | None], list[float]] = {}
        for facet, version, similarity in assigned:
            by_facet.setdefault((facet, version), []).append(1.0 - float(similarity))
        return [facet for (facet, version), distances in by_facet.items()
                if self.update(facet, version, distances, now=now)]

    def snapshot(self) -> dict[str, dict[str, float | int | None]]:
        """JSON-safe per-facet state for the worker's metrics document."""
        return {name: {"version": s.version, "seen": s.seen, "detections": s.detections,
                       "detected_at": s.detected_at, "mean_before": s.mean_before, "mean_after": s.mean_after,
                       "mean_now": float(s.detector.estimation) if s.seen else None}
                for name, s in self.facets.items()}


def drift_since(worker_docs: Iterable[dict], facet: str, since: float | None) -> bool:
    """Whether any worker's detector for ``facet`` fired after ``since`` (a run's finish time)."""
    for doc in worker_docs:
        entry = (doc.get("drift") or {}).get(facet) or {}
        at = entry.get("detected_at")
        if isinstance(at, (int, float)) and (since is None or at > since):
            return True
    return False
