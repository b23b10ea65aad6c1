"""One facet's fit and assignment at scale: k from a capped rule, k-means on the sample, then every point of the
window assigned to those centroids and counted (``living.assign_pass``), ready for naming.

The fit sees only the sample (``living.sample``), so its cost does not grow with the store; the number of
clusters is the settings' rule over the window's size, capped (``recluster_max_base_clusters``), so the
naming prompts do not either. The sample's own labels are re-derived by the same nearest-centroid rule the
pass applies, so a leaf's sampled members are exactly the points the store labels with its cluster, and a
cluster no sampled value falls in is dropped (no leaf could stand for it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from clio_stream.domain.facets import Facet
from clio_stream.domain.vectors import normalise_rows
from clio_stream.living.assign_pass import PassResult, run_pass, write_plan
from clio_stream.living.clustering_job import JobFrame
from clio_stream.living.population import Populations
from clio_stream.living.stored import StoredFacet
from clio_stream.living.totals import trend_start
from clio_stream.living.user_sketch import EXACT_USERS
from clio_stream.living.versions import STEP_ASSIGN_PLAN, step, write_centroids
from clio_stream.living.warm_start import warm_start_centroids
from clio_stream.living.window import Window
from clio_stream.online.assignment import nearest_centroids
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.stages.base_clusters import base_cluster_count, kmeans
from clio_stream.storage.documents import AssignPlan, AssignShard
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)

MAX_REFITS = 5  # rounds of dropping clusters left without a sampled member


@dataclass
class FacetFit:
    """k-means on one facet's sample: the online model of the version, and the sample's labels under it."""

    model: OnlineKMeans
    labels: np.ndarray  # per sampled value, by the model's nearest-centroid rule
    centres: np.ndarray  # unit centroids, for matching and naming

    @property
    def k(self) -> int:
        return self.model.n_clusters


def capped_k(settings: ClioSettings, window_points: int, sample_points: int) -> int:
    """Base clusters of a re-clustering: the settings' rule over the window, capped, at most one per sampled value."""
    return max(1, min(base_cluster_count(settings, window_points), settings.recluster_max_base_clusters,
                      sample_points))


def fit_sample(s: StoredFacet, k: int, init: np.ndarray | None, settings: ClioSettings, version: int,
               facet: str) -> FacetFit:
    """k-means on the sample (warm-started from ``init``), as the version's online model.

    Without ``init`` (a first version), k-means++ seeds from one random sampled value with the warm start's
    greedy picks (``living.warm_start``): the same spread as scikit-learn's seeding, several times faster at
    a thousand clusters.
    """
    if init is None and k < len(s.vectors):
        first = s.vectors[[int(np.random.default_rng(settings.seed).integers(len(s.vectors)))]]
        init = warm_start_centroids(s.vectors, first, None, k, settings.seed)
    labels, centres = kmeans(s.vectors, k, seed=settings.seed, args=settings.kmeans_args, init=init)
    model = OnlineKMeans.from_batch(s.vectors, labels, centroids=centres, version=version, facet=facet)
    for _ in range(MAX_REFITS):
        labels = nearest_centroids(s.vectors, model.centroids, model.metric)[0]
        used = np.unique(labels)
        if len(used) == model.n_clusters:
            break
        log.info("facet %s: %d of %d clusters have no sampled value; dropped", facet, model.n_clusters - len(used),
                 model.n_clusters)
        index = np.full(model.n_clusters, -1, np.int64)
        index[used] = np.arange(len(used))
        model = OnlineKMeans.from_batch(s.vectors, index[labels], centroids=model.centroids[used], version=version,
                                        facet=facet)
    return FacetFit(model, labels, normalise_rows(np.asarray(model.centroids, dtype=np.float32)))


def with_counts(model: OnlineKMeans, counts: np.ndarray) -> OnlineKMeans:
    """The same model with the window's member counts (workers' mean updates weigh by them)."""
    doc = model.to_state()
    doc["counts"] = [int(c) for c in counts]
    return OnlineKMeans.from_state(doc)


def plan_for(version: int, facet: str, k: int, window: Window | None, new_after: float | None,
             numeric: Sequence[Facet], settings: ClioSettings) -> AssignPlan:
    """The assignment pass of ``facet`` under ``version``, with the trend grid ending at the window's newest time."""
    newest = window.newest if window is not None else None
    return AssignPlan(
        version=version, facet=facet, k=k, shards=settings.recluster_assign_shards,
        page_size=settings.recluster_page_size, window_start=window.start if window is not None else None,
        new_after=new_after, trend_start=trend_start(newest, settings.trend_window_s, settings.trend_windows),
        trend_window_s=settings.trend_window_s, trend_windows=settings.trend_windows,
        numeric={f.name: [f.numeric[0], f.numeric[1] - f.numeric[0] + 1] for f in numeric if f.numeric})


def assign_window(store: QdrantStore, frame: JobFrame, plan: AssignPlan, fit: FacetFit, settings: ClioSettings,
                  on_page: Callable[[AssignShard], None] | None = None) -> tuple[Populations, PassResult]:
    """Write the centroids and the plan, run the pass (with any helper processes), and the facet's populations.

    The version's label field is not indexed here: the job indexes it once after every facet's pass
    (``Labels.index``), so no pass writes into an indexed field (about ten times slower), and the
    populations' exact distinct-user counts, which filter on the field, run only after that.
    """
    assert frame.lease is not None, "the clustering job frame holds a lease"
    write_centroids(store, frame.lease, plan.facet, plan.version, fit.model)
    step(STEP_ASSIGN_PLAN, frame.lease)
    write_plan(store, plan)
    result = run_pass(store, plan, fit.model, frame.owner, settings.recluster_lock_ttl_s, frame.lease.check,
                      on_page=on_page)
    log.info("facet %s: %d points of the window assigned in %d pages (%.1f s over %d shards)", plan.facet,
             result.points, result.pages, result.seconds, plan.shards)
    return Populations(store, plan, result.totals, max(EXACT_USERS, 4 * settings.min_cluster_users)), result
