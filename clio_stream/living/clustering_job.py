"""The frame every clustering job runs in, shared by ``bootstrap-clusters`` and the re-clustering job.

Under the clustering lease (``settings.recluster_lock_ttl_s``, renewed in the background while the job works):
finish a version a killed job committed (``versions.recover``), scroll what the workers stored (the
re-clustering job: apply retention and read a bounded sample of each facet's window), reserve the
next version number (the fencing token), let the job build its version from the scroll, and write it through
``versions.write_version`` (centroids, labels, states, site, commit, pointers). One lock discipline, one
write order, whatever the job computes in between.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from clio_stream.domain.facets import Facet
from clio_stream.living.stored import Sampling, Stored, StoredFacet, load_stored
from clio_stream.living.window import apply_retention, clustering_window
from clio_stream.living.versions import (
    FacetLabels,
    VersionWrite,
    clustering_lease,
    job_owner,
    recover,
    reserve_version,
    write_version,
)
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import CLUSTERING_LOCK
from clio_stream.storage.locks import Lease
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClusteringLockBusy(RuntimeError):
    """Another clustering job holds the lock: this one did nothing."""


class NothingToCluster(ValueError):
    """No hierarchy facet has a stored, embedded value yet: this job did nothing."""


@dataclass
class JobFrame:
    """What the frame hands a job's ``build`` besides the scroll and N: the lease it holds (to check before
    long work) and who holds it."""

    owner: str = ""
    lease: Lease | None = None


def run_clustering_job(
    store: QdrantStore,
    kind: str,
    facets: Sequence[Facet],
    settings: ClioSettings,
    build: Callable[[Stored, int], tuple[VersionWrite, T]],
    *,
    publish_dir: Path | None = None,
    owner: str | None = None,
    sample: bool = False,
    frame: JobFrame | None = None,
) -> T:
    """Lease, recover, scroll ``facets``, reserve N, ``build(scroll, N)``, write N; returns what ``build`` returned.

    ``kind`` names the job in the lease owner (``lock_holder`` shows it). ``sample``: apply retention, then
    read a bounded sample of each facet's clustering window instead of everything (``living.window``,
    ``living.sample``). ``frame`` is filled with the lease for ``build``. Raises ``ClusteringLockBusy`` when
    another job holds the lock and ``NothingToCluster`` when no hierarchy facet has stored values, both
    before anything is written.
    """
    frame = frame if frame is not None else JobFrame()
    frame.owner = owner or job_owner(kind)
    lease = clustering_lease(store, frame.owner, settings.recluster_lock_ttl_s)
    if lease is None:
        raise ClusteringLockBusy(f"another clustering job holds the {CLUSTERING_LOCK!r} lock: "
                                 f"{store.locks.owner(CLUSTERING_LOCK)}")
    frame.lease = lease
    with lease:
        recover(store, lease, publish_dir)  # a job killed after its commit: finish it first
        sampling = None
        if sample:
            apply_retention(store, settings)
            sampling = Sampling(clustering_window(store, settings), settings.recluster_sample_size)
        stored = load_stored(store, facets, sampling) if sampling is not None else load_stored(store, facets)
        for name in [n for n, s in stored.facets.items() if not s.point_ids]:
            log.info("facet %s: no stored values to cluster; skipped", name)
        clusterable = stored.clusterable()
        if not clusterable:
            raise NothingToCluster("no stored facet values to cluster yet: stream some conversations first")
        version = reserve_version(store, lease, clusterable, publish_dir)
        write, result = build(stored, version)
        write_version(store, lease, write, publish_dir)
        return result


def fitted_labels(facet: str, s: StoredFacet, labels: np.ndarray, centres: np.ndarray, version: int) -> FacetLabels:
    """One facet's part of version ``version``: the online model fitted on the k-means result, and the labels."""
    model = OnlineKMeans.from_batch(s.vectors, labels, centroids=centres, version=version, facet=facet)
    return FacetLabels(facet, model, s.point_ids, s.vectors, labels)
