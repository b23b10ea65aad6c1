"""The re-clustering job: the batch Clio stages over what the streaming workers stored, keeping clusters *living*.

One run, in the clustering job frame it shares with ``bootstrap-clusters`` (``living.clustering_job``: the
renewed lease, recovery, retention, the version number reserved under the lock). Its cost is bounded by a
sample, not by the store: per hierarchy facet, k-means with a capped k on a bounded sample of the clustering
window (``living.window``, ``living.sample``), warm-started from the current centroids (``living.warm_start``);
then every point of the window assigned to the new centroids page by page, its label written under the new
version and counted (``living.assign_pass``, split across processes by id range when asked); then the sampled
clusters matched to the previous published version so ids, names and upper levels survive
(``living.facet_run``), named and finalised (privacy minimums, audit, trends: ``stages.finalise``) with the
window's sizes, users, numeric statistics and trends (``living.population``). The version is written through
``living.versions.write_version``: centroids, the site folder, a fenced commit, then the pointers (see that
module for the order and why a kill at any step leaves the last good version served).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clio_stream.domain.clusters import ClioResult, ClusterMap, FacetHierarchy, RunStats, StoreLink
from clio_stream.domain.facets import Facet
from clio_stream.embedding import EmbeddingBackend
from clio_stream.living.clustering_job import ClusteringLockBusy, JobFrame, NothingToCluster, run_clustering_job
from clio_stream.living.assign_pass import PassResult
from clio_stream.living.facet_pass import FacetFit, assign_window, capped_k, fit_sample, plan_for, with_counts
from clio_stream.living.facet_run import FacetRun, recluster_facet
from clio_stream.living.ids import IdAllocator
from clio_stream.living.matching import MatchThresholds
from clio_stream.living.population import Populations
from clio_stream.living.progress import JobProgress, StageTime, store_writer
from clio_stream.living.stored import Stored
from clio_stream.living.versions import FacetLabels, VersionWrite
from clio_stream.living.warm_start import warm_start
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.stages.finalise import finalise
from clio_stream.stages.hierarchy import slug, user_keys
from clio_stream.storage.documents import IdCounters, LastRun, id_counter_key
from clio_stream.storage.store import QdrantStore
from clio_stream.views.alerts import publish_alerts
from clio_stream.views.layout import cluster_map, place_points

log = logging.getLogger(__name__)


@dataclass
class ReclusterReport:
    """What one run did; the living-cluster numbers say how much of the previous version survived.

    ``leaves_reused``: matched leaves that kept their name without an LLM call;
    ``leaves_renamed``: leaves named by the LLM (new or changed);
    ``id_survival``: share of the previous version's leaf ids still present (None without one);
    ``facets``: per facet details (hierarchy mode, matching events, prompts by stage);
    ``stages``: wall time of each stage of each facet (the write: facet ``*``), known once the run is done.
    """

    version: int
    points: dict[str, int] = field(default_factory=dict)  # per facet: points of the clustering window
    stored: dict[str, int] = field(default_factory=dict)  # per facet: points stored at the run (the trigger's base)
    clusters: dict[str, int] = field(default_factory=dict)
    llm_prompts: int = 0
    seconds: float = 0.0
    published: Path | None = None
    leaves_reused: int = 0
    leaves_renamed: int = 0
    parents_reused: int = 0
    parents_renamed: int = 0
    id_survival: float | None = None
    lineage: int = 0
    facets: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: list[StageTime] = field(default_factory=list)
    result: ClioResult | None = None  # what was published (alerts are evaluated on it)
    lineage_map: dict[str, str] = field(default_factory=dict)
    walls: dict[str, float] = field(default_factory=dict)  # wall seconds over all facets: sample, fit, assign, ...

    def timed(self, wall: str, since: float) -> float:
        """Add the time from ``since`` to ``walls[wall]`` (sample, fit, assign, name, publish); returns now."""
        now = time.perf_counter()
        self.walls[wall] = round(self.walls.get(wall, 0.0) + now - since, 3)
        return now

    def add_facet(self, facet: str, points: int, run: FacetRun) -> None:
        self.points[facet] = points
        self.clusters[facet] = len(run.hierarchy.leaves())
        self.facets[facet] = run.info
        self.leaves_reused += run.info["leaves_reused"]
        self.leaves_renamed += run.info["leaves_renamed"]
        self.parents_reused += run.info["parents_reused"]
        self.parents_renamed += run.info["parents_renamed"]
        old_total = sum(i["old_leaves"] for i in self.facets.values())
        self.id_survival = sum(i["ids_survived"] for i in self.facets.values()) / old_total if old_total else None

    def last_run(self) -> LastRun:
        """The record the scheduler's triggers and ``GET /v1/status`` read."""
        return LastRun(version=self.version, finished_at=time.time(), seconds=self.seconds,
                       points=self.stored or self.points,
                       clusters=self.clusters, llm_prompts=self.llm_prompts, leaves_reused=self.leaves_reused,
                       leaves_renamed=self.leaves_renamed, id_survival=self.id_survival, lineage=self.lineage)


@dataclass
class Previous:
    """The current published version, as the next one continues it."""

    hierarchies: dict[str, FacetHierarchy] = field(default_factory=dict)
    lineage_ids: set[str] = field(default_factory=set)  # every id its lineage mentions (never reused)
    newest: float | None = None  # the newest conversation time it covered: newer ones are new members now


def _previous(publish_dir: Path) -> Previous:
    """The current published version's hierarchies and its lineage's ids; nothing when unreadable."""
    from clio_stream.storage.published import PublishedVersions

    try:
        prev = PublishedVersions.at(publish_dir).load_current()
    except Exception:  # noqa: BLE001 - a broken previous version must not stop re-clustering: start afresh
        log.warning("could not load the current published version; ids start afresh", exc_info=True)
        return Previous()
    if prev is None:
        return Previous()
    return Previous(dict(prev.result.hierarchies), set(prev.lineage) | set(prev.lineage.values()),
                    prev.result.stats.newest)


def recluster_once(
    store: QdrantStore,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    facets: Sequence[Facet],
    settings: ClioSettings,
    *,
    publish_dir: Path,
    owner: str | None = None,
    thresholds: MatchThresholds | None = None,
) -> ReclusterReport | None:
    """Run one re-clustering; None when another process holds the lock or nothing is stored yet.

    ``thresholds``: matching knobs (default: from ``settings``).
    """
    t0 = time.perf_counter()
    thresholds = thresholds or MatchThresholds.from_settings(settings)

    progress: list[JobProgress] = []
    frame = JobFrame()

    def build(stored: Stored, version: int) -> tuple[VersionWrite, ReclusterReport]:
        points = {f.name: stored.facets[f.name].points for f in facets if f.name in stored.clusterable()}
        progress.append(JobProgress(version, points, store_writer(store.states), owner=frame.owner))
        return _build_version(store, stored, version, llm, embedder, facets, settings, thresholds, publish_dir, t0,
                              progress[0], frame)

    try:
        report = run_clustering_job(store, "recluster", facets, settings, build, publish_dir=publish_dir, owner=owner,
                                    sample=True, frame=frame)
        report.timed("publish", t0 + report.seconds)  # the write: centroids, site, commit, pointers, catch-up
    except ClusteringLockBusy:
        log.info("re-clustering skipped: another clustering job holds the lock")
        return None
    except NothingToCluster:
        log.info("re-clustering skipped: nothing stored yet")
        return None
    progress[0].stage("done")
    report.stages = list(progress[0].stage_times)
    if report.result is not None and report.published is not None:
        try:
            publish_alerts(store, settings, report.result, str(report.version), report.lineage_map, report.version)
        except Exception:  # noqa: BLE001 - alerts must never undo a publish; the next publish evaluates again
            log.exception("evaluating or delivering the alerts of version %d failed", report.version)
    report.seconds = time.perf_counter() - t0
    log.info("re-clustered as version %d in %.1f s (%s): %s; %d LLM prompts, %d leaves reused, %d named, "
             "id survival %s", report.version, report.seconds,
             ", ".join(f"{k} {v:.1f} s" for k, v in report.walls.items()), report.clusters, report.llm_prompts,
             report.leaves_reused, report.leaves_renamed,
             "n/a" if report.id_survival is None else f"{report.id_survival:.2f}")
    return report


def _map(run: FacetRun, s: Any, settings: ClioSettings) -> ClusterMap:
    """The facet's cluster map from its centroids, with a sample of its stored points placed on it."""
    centres = {nid: run.centres[c] for nid, c in run.store_clusters.items()}
    layout = cluster_map(run.hierarchy, centres, method=settings.map_projection, seed=settings.seed)
    return place_points(layout, centres, s.conversation_ids, s.vectors, settings.seed)


def _build_version(
    store: QdrantStore,
    stored: Stored,
    version: int,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    facets: Sequence[Facet],
    settings: ClioSettings,
    thresholds: MatchThresholds,
    publish_dir: Path,
    t0: float,
    progress: JobProgress,
    frame: JobFrame,
) -> tuple[VersionWrite, ReclusterReport]:
    """Fit, assign, name and finalise every clusterable facet as version ``version``; what to write, and the report.

    Per facet: k-means on the sample (``living.facet_pass``), the window assigned and counted page by page
    (labels of ``version`` written as it goes), then naming, the hierarchy and the privacy minimums over the
    sampled clusters with the window's numbers (``living.population``).
    """
    from clio_stream.privacy.deletion import remove_denied
    from clio_stream.storage.published import PublishedVersions

    tree = [f for f in facets if f.name in stored.clusterable()]
    report = ReclusterReport(version=version)
    mark = report.timed("sample", t0)  # the frame's lease, retention, window, sample and reservation
    stats = AskStats()
    previous = _previous(publish_dir)
    conversations, facet_values = stored.as_conversations(facets)
    users_of = user_keys(conversations, settings)
    numeric = [f for f in facets if f.numeric is not None]
    runs: dict[str, FacetRun] = {}
    models: dict[str, OnlineKMeans] = {}
    # Two phases. First every facet is fitted and its window assigned (labels into the version's own field);
    # then the field is indexed once, for every facet's points, and only then are clusters named and counted
    # (the exact distinct-user counts filter on the field). Indexed after each facet instead, the second
    # facet's pass would write into an indexed field, about ten times slower. Nothing here is visible to a
    # reader: the version's pointers move after its commit (``living.versions``), whatever the order here.
    passes: dict[str, tuple[FacetFit, Populations, PassResult]] = {}
    for f in tree:
        s = stored.facets[f.name]
        progress.stage("warm start", f.name)
        k = capped_k(settings, s.points, len(s.point_ids))
        fit = fit_sample(s, k, warm_start(store, f.name, s.vectors, k, settings.seed), settings, version, f.name)
        mark = report.timed("fit", mark)
        progress.stage("assign", f.name)
        plan = plan_for(version, f.name, fit.k, stored.window, previous.newest, numeric, settings)
        populations, passed = assign_window(store, frame, plan, fit, settings,
                                            on_page=lambda doc, n=f.name: progress.page(n, doc.points, doc.pages))
        passes[f.name] = (fit, populations, passed)
        mark = report.timed("assign", mark)
    if tree:
        assert frame.lease is not None, "the clustering job frame holds a lease"
        frame.lease.check()
        store.labels.index(version)  # one index of the field over every facet's labels
        mark = report.timed("assign", mark)
    for f in tree:
        s = stored.facets[f.name]
        fit, populations, passed = passes.pop(f.name)
        old = previous.hierarchies.get(f.name)
        ids = IdAllocator.restore(slug(f.name), store.states.read_json(id_counter_key(f.name)),
                                  list(old.nodes if old else []) + sorted(previous.lineage_ids))
        progress.stage("cluster and name", f.name)
        run = recluster_facet(f, s, old, ids, None, llm, embedder, settings, thresholds, users_of=users_of,
                              fitted=(fit.labels, fit.centres), populations=populations)
        populations.set_hierarchy(run.hierarchy, run.store_clusters)
        stats.add(run.llm)
        progress.stage("finalise", f.name)
        finalise(run.hierarchy, conversations, facet_values, facets, llm, embedder, settings, stats=stats,
                 previous=old)
        populations.set_visible_users(run.hierarchy, run.store_clusters)
        mark = report.timed("name", mark)  # matching, naming, the hierarchy, finalise, the window's numbers
        runs[f.name] = run
        models[f.name] = with_counts(fit.model, passed.totals.counts)
        report.add_facet(f.name, s.points, run)
        report.stored[f.name] = store.points.count(facet=f.name)
        report.facets[f.name].update(sample=len(s.point_ids), k=fit.k, assign_points=passed.points,
                                     assign_pages=passed.pages, assign_seconds=round(passed.seconds, 3))
        progress.facet_done(f.name)
    lineage = {k: v for run in runs.values() for k, v in run.lineage.items()}
    report.lineage = len(lineage)

    # Leaf ids are stable, not k-means indices, so the leaf -> online cluster mapping is explicit.
    newest = stored.window.newest if stored.window is not None else None
    result = ClioResult(facets=[f.to_dict() for f in facets], conversations=conversations,
                        facet_values=facet_values, hierarchies={n: r.hierarchy for n, r in runs.items()},
                        settings=settings.public_dict(),
                        stats=RunStats(llm=stats, points=report.points, living=report.facets, newest=newest),
                        store_links={n: StoreLink(version=version, clusters=r.store_clusters) for n, r in runs.items()},
                        maps={n: _map(r, stored.facets[n], settings) for n, r in runs.items()})
    remove_denied(result, store, settings)  # users deleted since the scroll (clio_stream.privacy.deletion)
    report.result, report.lineage_map = result, lineage
    report.llm_prompts = stats.prompts
    report.timed("name", mark)
    report.seconds = time.perf_counter() - t0

    progress.stage("write")

    def site(n: int) -> Path:
        report.published = PublishedVersions.at(publish_dir).write_folder(result, str(n), lineage=lineage,
                                                                          settings=settings)
        return report.published

    dim = store.vector_size()
    return VersionWrite(
        version=version,
        facets=[FacetLabels(f.name, models[f.name], [], np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
                for f in tree],  # the assignment pass wrote every label
        states={id_counter_key(f.name).key: IdCounters.model_validate(runs[f.name].ids.state()) for f in tree},
        site=site,
        last_run=report.last_run().model_dump(mode="json"),
        window_start=stored.window.start if stored.window is not None else None,
    ), report
