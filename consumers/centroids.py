"""The online k-means model of every hierarchy facet, kept the same on every worker.

Replicas never move centroids on their own: each ships (sum, count) deltas of
what it assigned, and every replica applies every delta (its own included)
with ``OnlineKMeans.apply_deltas``, which is order-independent and skips a
batch id it has seen. The clustering itself (centroids, version) comes from the
store: the batch job or ``bootstrap-clusters`` writes centroids, then flips the
facet's version pointer; workers notice the flip and load the new version.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from clio_stream.online import CentroidDeltas, OnlineKMeans

log = logging.getLogger(__name__)


class CentroidSource(Protocol):
    """The two store calls this needs (``QdrantStore`` fits)."""

    def current_version(self, facet: str) -> int | None: ...

    def get_centroids(self, facet: str, version: int | None = None) -> dict[str, Any] | None: ...


class SharedCentroids:
    """Current ``OnlineKMeans`` per facet name; facets with no published clustering are absent."""

    def __init__(self, facets: Sequence[str], dim: int) -> None:
        self.facets = list(facets)
        self.dim = int(dim)
        self.models: dict[str, OnlineKMeans] = {}

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
            self.models[name] = model
            reloaded.append(name)
            log.info("facet %s: loaded clustering v%d (k=%d)", name, version, model.n_clusters)
        return reloaded

    def apply(self, deltas: Iterable[CentroidDeltas]) -> int:
        """Merge deltas into the matching facet's model; returns how many batches were new."""
        applied = 0
        for d in deltas:
            model = self.models.get(d.facet or "")
            if model is None:
                continue
            try:
                applied += int(model.apply_deltas(d))
            except ValueError as exc:
                log.warning("skipping delta batch %s: %s", d.batch_id, exc)
        return applied

    def versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self.models.items()}

    def outlier_rates(self) -> dict[str, float]:
        """Outlier fraction of this worker's recent assignments, per facet."""
        return {name: m.outlier_rate for name, m in self.models.items()}
