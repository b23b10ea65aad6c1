"""The first clustering of what the workers stored: k-means per hierarchy facet, written as a new version.

A one-shot for a fresh deployment (``clio-stream bootstrap-clusters``): until a
clustering exists, workers store facet values unassigned. It runs in the same
frame as the re-clustering job (``clio_stream.living.clustering_job``): the
renewed clustering lease, the same scroll, the version number reserved under the
lock, then ``clio_stream.living.versions.write_version`` (centroids,
version-scoped labels, a fenced commit, the version pointers, a catch-up of the
points stored meanwhile). It publishes no site (the re-clustering job names
clusters and publishes).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from clio_stream.domain.facets import Facet
from clio_stream.living.clustering_job import fitted_labels, run_clustering_job
from clio_stream.living.stored import Stored
from clio_stream.living.versions import VersionWrite
from clio_stream.settings import ClioSettings
from clio_stream.stages.base_clusters import base_clusters
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)


def bootstrap_clustering(store: QdrantStore, facets: Sequence[Facet], settings: ClioSettings) -> int:
    """Cluster every hierarchy facet's stored vectors as a new version and make it current; returns it.

    Raises ``ValueError`` (``NothingToCluster``) when no hierarchy facet has stored values, and
    ``RuntimeError`` (``ClusteringLockBusy``) when another clustering job holds the lock.
    """
    tree = [f for f in facets if f.has_hierarchy]
    if not tree:
        raise ValueError("no facet with summary criteria: nothing to cluster")

    def build(stored: Stored, version: int) -> tuple[VersionWrite, int]:
        parts = []
        for name in stored.clusterable():
            s = stored.facets[name]
            labels, centres = base_clusters(s.vectors, settings)
            parts.append(fitted_labels(name, s, labels, centres, version))
            log.info("facet %s: %d points in %d clusters (v%d)", name, len(s.point_ids), parts[-1].model.n_clusters,
                     version)
        return VersionWrite(version=version, facets=parts), version

    return run_clustering_job(store, "bootstrap", tree, settings, build)
