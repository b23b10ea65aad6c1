"""The first clustering of what the workers stored: k-means per hierarchy facet, published as a new version.

A one-shot for a fresh deployment (``clio-stream bootstrap-clusters``): until a
clustering exists, workers store facet values unassigned. The order of writes
is what makes it safe while workers run: centroids first, then the stored
points' labels, and the version pointers LAST, so a worker never loads a
version whose centroids are not there yet. Points stored between the scroll
and the flip keep no label of the new version; the periodic re-clustering
(with LLM names) picks them up.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

import numpy as np

from clio_stream.clustering import kmeans
from clio_stream.facets import Facet
from clio_stream.online import OnlineKMeans, normalise_rows
from clio_stream.settings import ClioSettings
from clio_stream.store import QdrantStore

log = logging.getLogger(__name__)

LOCK_NAME = "clustering"
LOCK_TTL_S = 3600.0


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
    """Cluster every hierarchy facet's stored vectors as version N+1 and publish it; returns N+1.

    Raises ``ValueError`` when no hierarchy facet has stored values, and
    ``RuntimeError`` when another clustering job holds the lock.
    """
    tree = [f for f in facets if f.has_hierarchy]
    if not tree:
        raise ValueError("no facet with summary criteria: nothing to cluster")
    owner = f"bootstrap-{socket.gethostname()}-{os.getpid()}"
    if not store.try_lock(LOCK_NAME, owner, LOCK_TTL_S):
        raise RuntimeError(f"another clustering job holds the {LOCK_NAME!r} lock: {store.lock_holder(LOCK_NAME)}")
    try:
        current = [store.current_version(f.name) for f in tree]
        version = max((v for v in current if v is not None), default=0) + 1
        published: list[str] = []
        for f in tree:
            ids, x = stored_vectors(store, f.name)
            if not ids:
                log.warning("facet %s: no stored values to cluster; skipped", f.name)
                continue
            model, labels = cluster_facet(x, f.name, version, settings)
            store.put_centroids(f.name, version, model.to_state())
            unit = model.unit_centroids[labels]
            sims = np.einsum("ij,ij->i", normalise_rows(x), unit)
            store.set_labels(
                f.name, {pid: int(c) for pid, c in zip(ids, labels)}, version,
                similarities={pid: float(s) for pid, s in zip(ids, sims)},
                outliers={pid: bool(s < model.outlier_similarity) for pid, s in zip(ids, sims)},
            )
            published.append(f.name)
            log.info("facet %s: %d points in %d clusters (v%d)", f.name, len(ids), model.n_clusters, version)
        if not published:
            raise ValueError("no stored facet values to cluster yet: stream some conversations first")
        for name in published:  # last: readers switch only once everything above is written
            store.set_current_version(name, version)
        return version
    finally:
        store.release_lock(LOCK_NAME, owner)
