"""The one write path of a clustering version, shared by the re-clustering job and ``bootstrap-clusters``.

Lock and fencing. Every clustering job holds the store lease ``CLUSTERING_LOCK``
(TTL ``settings.recluster_lock_ttl_s``, renewed by a thread) and, under it,
reserves its version number N with a compare-and-set on a counter in the store
(``ClusteringVersions.reserve``): N is never handed out twice, even to two
holders whose leases overlapped. N is the fencing token. Writes scoped to N
(centroids, label fields, the site folder) cannot collide with anyone; every
shared document (id counters, the commit record, the version pointers, the last
run) is written with ``StateDocuments.put_fenced``, which Qdrant refuses when a
higher N got there first; the publish pointer moves only forwards
(``publish.advance_pointer``). Before each step the lease is checked in the store.

Write order. Prepare (invisible to every reader, so a kill leaves N-1 served and
the next run reserves N+1 and succeeds; N's leftovers are dropped later):

1. ``reserve``: N;
2. ``centroids``: the online k-means state of N per facet;
3. ``labels``: each point's cluster under N, in N's own payload field
   (``storage.records.label_field``): N-1's labels stay as they were, so the API, which
   filters members on the version it serves, never pages an empty leaf;
4. ``states``: fenced documents of the job (the id counters);
5. ``site``: ``versions/N`` built in a temporary folder and renamed into place.

Commit: 6. ``commit``: the fenced record ``COMMIT_KEY`` says N is complete.

Apply (idempotent; a kill here is finished by whichever job takes the lock next,
``recover``, before it does anything else):

7. ``store_pointers``: the per-facet version pointers (the workers switch and
   label new points under N from their next batch);
8. ``catch_up``: points stored since the scroll with no label of N (a worker
   still on N-1, or none) are assigned with N's centroids, so N misses no point;
9. ``publish_pointer``: the site's ``current`` (the API and the dashboard switch,
   to a version whose labels are complete);
10. ``last_run``: the record the scheduler's triggers read;
11. ``cleanup``: label fields of versions nobody serves any more, old site folders;
    then the commit record is marked applied.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clio_stream.ops.faults import reach
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.storage.documents import CLUSTERING_LOCK, COMMIT_KEY, LAST_RUN, LastRun, StateDocument
from clio_stream.storage.locks import Lease, LockLost
from clio_stream.storage.published import PublishedVersions
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)

PUBLISH_KEEP = 5  # site versions kept in the publish folder (the current one always)

STEP_RESERVE = "reserve"
STEP_CENTROIDS = "centroids"
STEP_ASSIGN_PLAN = "assign_plan"
STEP_ASSIGN_PAGE = "assign_page"  # reached before every page of the assignment pass (living.assign_pass)
STEP_LABELS = "labels"
STEP_STATES = "states"
STEP_SITE = "site"
STEP_COMMIT = "commit"
STEP_STORE_POINTERS = "store_pointers"
STEP_PUBLISH_POINTER = "publish_pointer"
STEP_CATCH_UP = "catch_up"
STEP_LAST_RUN = "last_run"
STEP_CLEANUP = "cleanup"
WRITE_STEPS = (STEP_RESERVE, STEP_CENTROIDS, STEP_ASSIGN_PLAN, STEP_ASSIGN_PAGE, STEP_LABELS, STEP_STATES,
               STEP_SITE, STEP_COMMIT,
               STEP_STORE_POINTERS, STEP_CATCH_UP, STEP_PUBLISH_POINTER, STEP_LAST_RUN, STEP_CLEANUP)
COMMITTED_STEPS = WRITE_STEPS[WRITE_STEPS.index(STEP_COMMIT) + 1:]  # a fault from here on leaves N committed

SiteWriter = Callable[[int], Path]  # version -> the version folder it wrote (not current yet)


class Superseded(LockLost):
    """A fenced write was refused: a job with a higher version number wrote first."""


@dataclass
class FacetLabels:
    """One facet's part of a version: its online model and the labels of the points it was fitted on."""

    facet: str
    model: OnlineKMeans
    point_ids: list[str]
    vectors: np.ndarray  # unit rows, aligned with point_ids
    labels: np.ndarray  # cluster index per row


@dataclass
class VersionWrite:
    """Everything a job writes for version ``version``."""

    version: int
    facets: list[FacetLabels]  # labels written by an assignment pass already: none here
    states: dict[str, StateDocument] = field(default_factory=dict)  # fenced documents, by key
    site: SiteWriter | None = None  # None: no site (bootstrap)
    last_run: dict[str, Any] | None = None
    window_start: float | None = None  # the clustering window: the catch-up labels nothing older


@dataclass
class Commit:
    """The commit record: version ``version`` is complete; ``applied`` once every apply step ran."""

    version: int
    previous: int | None  # the version committed before (still served until the pointers move)
    facets: list[str]
    site: bool
    last_run: dict[str, Any] | None = None
    labels_floor: int = 1  # label fields of versions below this are gone
    window_start: float | None = None  # the version's clustering window (catch-up stays inside it)
    applied: bool = False

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Commit:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def job_owner(kind: str) -> str:
    """The lease owner name of a clustering job of ``kind`` in this process (shown by ``lock_holder``)."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


def clustering_lease(store: QdrantStore, owner: str, ttl_s: float) -> Lease | None:
    """The clustering lock, renewed in the background; None when another job holds it."""
    lease = store.locks.lease(CLUSTERING_LOCK, owner, ttl_s)
    if lease is None:
        log.info("clustering lock busy: held by %s", store.locks.owner(CLUSTERING_LOCK))
    return lease


def committed(store: QdrantStore) -> Commit | None:
    """The last commit record, or None before the first version."""
    doc = store.states.get(COMMIT_KEY)
    return None if doc is None else Commit.from_doc(doc)


def reserve_version(store: QdrantStore, lease: Lease, facets: Sequence[str], publish_dir: Path | None) -> int:
    """Version N for this job: above every number reserved, committed, pointed at or published before."""
    step(STEP_RESERVE, lease)
    last = committed(store)
    floor = max([v for v in (store.versions.current_version(f) for f in facets) if v is not None]
                + ([last.version] if last else [])
                + ([int(v) for v in PublishedVersions.at(publish_dir).list_versions() if v.isdigit()]
                   if publish_dir else []), default=0)
    version = store.versions.reserve(floor)
    log.info("reserved clustering version %d", version)
    return version


def write_version(store: QdrantStore, lease: Lease, w: VersionWrite, publish_dir: Path | None) -> Commit:
    """Prepare, commit and apply version ``w.version`` (the module docstring's order); returns its commit."""
    n = w.version
    last = committed(store)
    previous = last.version if last else max(
        [v for v in (store.versions.current_version(f.facet) for f in w.facets) if v is not None], default=None)
    for part in w.facets:
        step(STEP_CENTROIDS, lease)
        store.versions.put_centroids(part.facet, n, part.model.to_state())
    for part in w.facets:
        step(STEP_LABELS, lease)
        store.labels.index(n)  # idempotent: one index of the field for every facet's points
        sims = np.einsum("ij,ij->i", part.vectors, part.model.unit_centroids[part.labels])
        _write_labels(store, part.facet, n, part.model, part.point_ids, part.labels, sims)
    for key, doc in w.states.items():
        step(STEP_STATES, lease)
        _fenced(store, key, doc, n)
    if w.site is not None:
        step(STEP_SITE, lease)
        if publish_dir is None:
            raise ValueError("a site needs a publish folder")
        w.site(n)
    commit = Commit(version=n, previous=previous, facets=[p.facet for p in w.facets], site=w.site is not None,
                    last_run=w.last_run, labels_floor=last.labels_floor if last else 1, window_start=w.window_start)
    step(STEP_COMMIT, lease)
    _fenced(store, COMMIT_KEY, asdict(commit), n)
    log.info("committed clustering version %d (%s)", n, ", ".join(commit.facets))
    apply_commit(store, lease, commit, publish_dir)
    return commit


def finish_pending(store: QdrantStore, publish_dir: Path | None, owner: str, ttl_s: float) -> int | None:
    """``recover`` under a lease of its own, only when a commit is pending (else one read): for pollers."""
    last = committed(store)
    if last is None or last.applied:
        return None
    lease = clustering_lease(store, owner, ttl_s)
    if lease is None:
        return None
    with lease:
        return recover(store, lease, publish_dir)


def recover(store: QdrantStore, lease: Lease, publish_dir: Path | None) -> int | None:
    """Finish applying the last committed version if a job died after its commit; its number, or None."""
    last = committed(store)
    if last is None or last.applied:
        return None
    log.warning("clustering version %d was committed but not fully applied; finishing it", last.version)
    apply_commit(store, lease, last, publish_dir)
    return last.version


def apply_commit(store: QdrantStore, lease: Lease, commit: Commit, publish_dir: Path | None) -> None:
    """Steps 7-11 for ``commit``; each is idempotent, so a job that died halfway is finished by the next.

    Between steps 7 and 9 the API still serves N-1 while workers label new points under N only: those points
    show in N-1's pages only after the switch (a catch-up's duration), never lost.
    """
    n = commit.version
    for facet in commit.facets:
        step(STEP_STORE_POINTERS, lease)
        if not store.versions.set_current_version(facet, n):
            raise Superseded(f"facet {facet}: a newer version than {n} is current")
    for facet in commit.facets:
        step(STEP_CATCH_UP, lease)
        caught = catch_up(store, facet, n, commit.window_start)
        if caught:
            log.info("facet %s: %d points stored since the scroll labelled under version %d", facet, caught, n)
    published = commit.site and publish_dir is not None
    if published:
        step(STEP_PUBLISH_POINTER, lease)
        if PublishedVersions.at(publish_dir).is_complete(str(n)):  # type: ignore[arg-type]
            PublishedVersions.at(publish_dir).advance_pointer(n)  # type: ignore[arg-type]
        else:
            log.error("version %d is committed but its site folder is gone; the site stays where it is", n)
    if commit.last_run is not None:
        step(STEP_LAST_RUN, lease)
        _fenced(store, LAST_RUN.key, LastRun.model_validate(commit.last_run), n)
    step(STEP_CLEANUP, lease)
    commit.labels_floor = _drop_old_labels(store, commit, publish_dir)
    if publish_dir is not None:
        PublishedVersions.at(publish_dir).prune(keep=PUBLISH_KEEP)
    commit.applied = published or not commit.site  # without the publish folder, the next job with it finishes
    _fenced(store, COMMIT_KEY, asdict(commit), n)


def write_centroids(store: QdrantStore, lease: Lease, facet: str, version: int, model: OnlineKMeans) -> None:
    """Step 2 ahead of an assignment pass, which reads them: ``facet``'s centroids of ``version``.

    The version's label field is indexed once after every facet's pass (``Labels.index``, from the job):
    building an index once over the written labels costs less than keeping it up to date through every page.
    """
    step(STEP_CENTROIDS, lease)
    store.versions.put_centroids(facet, version, model.to_state())


def catch_up(store: QdrantStore, facet: str, version: int, window_start: float | None = None) -> int:
    """Label under ``version`` the embedded points of ``facet`` that have no label of it; returns how many.

    These are points a worker stored between the job's scroll and the pointer switch (labelled with the
    previous version, or not at all): without this they would be missing from ``version`` until the next run.
    ``window_start``: points of older conversations are outside the version's window and stay unlabelled.
    """
    doc = store.versions.get_centroids(facet, version)
    if doc is None:
        return 0
    model = OnlineKMeans.from_state(doc)
    total = 0
    for ids, vectors, payloads in store.points.scroll_vectors(facet, without_label=version,
                                                              since=window_start):
        norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.zeros(0)
        rows = [i for i, (p, norm) in enumerate(zip(payloads, norms)) if p.get("value") and norm > 0]
        if not rows:
            continue
        found = model.assign_many(vectors[rows])
        _write_labels(store, facet, version, model, [ids[i] for i in rows], found.labels, found.similarities)
        total += len(rows)
    return total


def _write_labels(store: QdrantStore, facet: str, version: int, model: OnlineKMeans, point_ids: Sequence[str],
                  labels: np.ndarray, sims: np.ndarray) -> None:
    store.labels.write(facet, {pid: int(c) for pid, c in zip(point_ids, labels)}, version,
                     similarities={pid: float(s) for pid, s in zip(point_ids, sims)},
                     outliers={pid: bool(s < model.outlier_similarity) for pid, s in zip(point_ids, sims)})


def _drop_old_labels(store: QdrantStore, commit: Commit, publish_dir: Path | None) -> int:
    """Remove label fields no reader needs (superseded and abandoned versions); returns the new floor.

    Kept: this version, the previous one (the API may serve it until its pointer moves) and the site's current.
    """
    served = PublishedVersions.at(publish_dir).read_pointer() if publish_dir is not None else None
    keep = {commit.version} | ({commit.previous} if commit.previous is not None else set()) | (
        {int(served)} if served is not None and served.isdigit() else set())
    drop = [v for v in range(commit.labels_floor, commit.version) if v not in keep]
    store.labels.drop(drop)
    return min(keep)


def _fenced(store: QdrantStore, key: str, doc: Mapping[str, Any] | StateDocument, version: int) -> None:
    if not store.states.put_fenced(key, doc, fence=version):
        raise Superseded(f"{key}: a job with a version above {version} wrote it first")


def step(name: str, lease: Lease) -> None:
    """Before each write: the fault point of step ``name`` (tests), then the lease, asked of the store."""
    reach(name)
    lease.check()
