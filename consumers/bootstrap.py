"""The first clustering of what the workers stored: k-means per hierarchy facet, written as a new version.

A one-shot for a fresh deployment (``clio-stream bootstrap-clusters``): until a
clustering exists, workers store facet values unassigned. It writes through the
same path, under the same lock and lease, as the re-clustering job
(``clio_stream.living.versions``): version number reserved under the lock, centroids,
version-scoped labels, a fenced commit, the version pointers, then a catch-up
of the points stored meanwhile. It publishes no site (the re-clustering job
names clusters and publishes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from clio_stream.stages.base_clusters import kmeans
from clio_stream.domain.facets import Facet
from clio_stream.domain.vectors import normalise_rows
from clio_stream.online import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.store import QdrantStore
from clio_stream.living.versions import (
    CLUSTERING_LOCK,
    FacetLabels,
    VersionWrite,
    clustering_lease,
    job_owner,
    recover,
    reserve_version,
    write_version,
)

log = logging.getLogger(__name__)


def stored_vectors(store: QdrantStore, facet: str) -> tuple[list[str], np.ndarray]:
    """Point ids and vectors of ``facet`` that have an embedded value (zero vectors mean "not embedded")."""
    ids: list[str] = []
    rows: list[np.ndarray] = []
    for batch_ids, vectors, payloads in store.scroll_vectors(facet):
        norms = np.linalg.norm(vectors, axis=1)
        for pid, vec, norm, payload in zip(batch_ids, vectors, norms, payloads):
            if payload.get("value") and norm > 0:
                ids.append(pid)
                rows.append(vec)
    dim = rows[0].shape[0] if rows else 0
    return ids, np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)


def cluster_facet(x: np.ndarray, facet: str, version: int, settings: ClioSettings) -> tuple[OnlineKMeans, np.ndarray]:
    """Batch k-means of one facet's vectors as an online model (member means, calibrated outliers) and labels."""
    x = normalise_rows(x)
    k = max(1, min(len(x), int(settings.n_base_clusters(len(x)))))
    labels, centres = kmeans(x, k, seed=settings.seed, args=settings.kmeans_args)
    model = OnlineKMeans.from_batch(x, labels, centroids=centres, version=version, facet=facet)
    return model, labels


def bootstrap_clustering(store: QdrantStore, facets: Sequence[Facet], settings: ClioSettings) -> int:
    """Cluster every hierarchy facet's stored vectors as a new version and make it current; returns it.

    Raises ``ValueError`` when no hierarchy facet has stored values, and
    ``RuntimeError`` when another clustering job holds the lock.
    """
    tree = [f for f in facets if f.has_hierarchy]
    if not tree:
        raise ValueError("no facet with summary criteria: nothing to cluster")
    lease = clustering_lease(store, job_owner("bootstrap"), settings.recluster_lock_ttl_s)
    if lease is None:
        raise RuntimeError(f"another clustering job holds the {CLUSTERING_LOCK!r} lock: "
                           f"{store.lock_holder(CLUSTERING_LOCK)}")
    with lease:
        recover(store, lease, None)
        scrolled = {f.name: stored_vectors(store, f.name) for f in tree}
        for name in [n for n, (ids, _) in scrolled.items() if not ids]:
            log.warning("facet %s: no stored values to cluster; skipped", name)
            del scrolled[name]
        if not scrolled:
            raise ValueError("no stored facet values to cluster yet: stream some conversations first")
        version = reserve_version(store, lease, list(scrolled), None)
        parts = []
        for name, (ids, x) in scrolled.items():
            model, labels = cluster_facet(x, name, version, settings)
            parts.append(FacetLabels(name, model, ids, normalise_rows(x), labels))
            log.info("facet %s: %d points in %d clusters (v%d)", name, len(ids), model.n_clusters, version)
        write_version(store, lease, VersionWrite(version=version, facets=parts), None)
        return version
