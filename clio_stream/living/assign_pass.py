"""The assignment pass: every point of a facet's window labelled with the new centroids, page by page.

The job fits k-means on a sample (``living.sample``); this pass labels everything else. It reads the window in
pages of point-id order (``storage.vector_pages``; the next page is read by a thread while this one is
assigned, and only the payload fields the totals need, with empty values filtered out by Qdrant), assigns a
page with one matrix product, writes its labels into the version's own field (``storage.labels``, selected
by point id: invisible to readers until the version's pointers move; the field is indexed once after every
facet's pass),
adds it to the clusters' totals (``living.totals``) and records the cursor and the totals, fenced by the
version, before the next page. So memory is bounded by the page, and sizes, trends and numeric statistics
are over every point of the window, not the sample.

The window is split into ``shards`` slices of the id space (``IdRange.shard``); a process runs a shard under
that shard's lease, so one process at a time writes it, and whoever takes the lease next (after a kill)
resumes after the last recorded page. The re-clustering job writes the plan, runs every shard nobody else
took, waits for the rest and adds up the totals; ``clio-stream assign-shard`` processes (``help_with_plans``,
a Kubernetes indexed Job) take shards of the same plan in parallel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from qdrant_client import models

from clio_stream.living.totals import ClusterTotals
from clio_stream.living.window import Window
from clio_stream.online.assignment import nearest_centroids
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.ops.faults import reach
from clio_stream.living.versions import STEP_ASSIGN_PAGE, committed
from clio_stream.storage.documents import (
    ASSIGN_PLAN,
    AssignPlan,
    AssignShard,
    assign_shard_key,
    assign_shard_lock,
)
from clio_stream.storage.locks import LockLost
from clio_stream.storage.records import facet_point_id
from clio_stream.storage.qdrant import eq, is_empty
from clio_stream.storage.store import QdrantStore
from clio_stream.storage.vector_pages import IdRange, Page, read_page

log = logging.getLogger(__name__)


PAGE_FIELDS = ("user_hash", "timestamp")  # what the totals need; ``conversation_id`` too with numeric facets
BARRIER_PAGES = 4  # label writes run ahead of Qdrant applying them by at most this many pages

Check = Callable[[], None]  # raises (LockLost) when the caller must stop writing


class PlanGone(LockLost):
    """The plan this process works on was replaced or its version committed: stop."""


@dataclass
class PassResult:
    """One facet's pass: the totals over every shard, and what it took."""

    totals: ClusterTotals
    points: int
    pages: int
    seconds: float  # summed over the shards' processes


def run_shard(store: QdrantStore, plan: AssignPlan, model: OnlineKMeans, shard: int, owner: str, ttl_s: float,
              check: Check | None = None, on_page: Callable[[AssignShard], None] | None = None) -> AssignShard | None:
    """Run ``shard`` of ``plan`` to its end, resuming after its last recorded page; None if another process
    holds it. ``check`` runs before every page (the job's lease; a helper's "is the plan still current")."""
    lease = store.locks.lease(assign_shard_lock(plan.version, plan.facet, shard), owner, ttl_s)
    if lease is None:
        return None
    key = assign_shard_key(plan.version, plan.facet, shard)
    with lease:
        doc = store.states.read(key) or AssignShard(version=plan.version, facet=plan.facet, shard=shard)
        if doc.done:
            return doc
        totals = ClusterTotals.from_doc(doc.totals) if doc.totals else ClusterTotals.zeros(plan.k, plan)
        if doc.pages:
            log.info("facet %s shard %d of v%d: resuming after page %d (%d points)", plan.facet, shard,
                     plan.version, doc.pages, doc.points)
        flt = pass_filter(plan)
        fields = page_fields(plan)
        ids = IdRange.shard(shard, plan.shards)

        def read(cursor: str | None) -> Page:
            return read_page(store, flt, cursor, ids, plan.page_size, fields, model.dim)

        # The next page is read by a thread while this one is assigned and written: the scroll waits on
        # Qdrant and the matrix product releases the GIL, so the two overlap. At most one page is read ahead
        # (memory: two pages); reading writes nothing, and every write of a page still comes after the
        # checks for that page, in page order. The embedded engine is not shared across threads: read inline.
        reader = None if store.embedded else ThreadPoolExecutor(1, thread_name_prefix=f"assign-read-{shard}")
        try:
            ahead: Future[Page] | None = reader.submit(read, doc.cursor) if reader is not None else None
            while not doc.done:
                t0 = time.perf_counter()
                if check is not None:
                    check()
                lease.check()
                page = ahead.result() if ahead is not None else read(doc.cursor)
                ahead = reader.submit(read, page.next) if reader is not None and page.next is not None else None
                reach(STEP_ASSIGN_PAGE)
                lease.check()
                assigned = assign_page(store, plan, model, page, totals,
                                       wait=(doc.pages + 1) % BARRIER_PAGES == 0)
                if page.next is None:
                    store.labels.barrier()  # every label of the shard applied before it is marked done
                doc = doc.model_copy(update={
                    "cursor": page.next, "pages": doc.pages + 1, "points": doc.points + assigned,
                    "done": page.next is None, "owner": owner, "totals": totals.to_doc(),
                    "seconds": doc.seconds + time.perf_counter() - t0, "updated_at": time.time()})
                if not store.states.put_fenced(key.key, doc, fence=plan.version):
                    raise PlanGone(f"{key}: a newer version wrote it")
                if on_page is not None:
                    on_page(doc)
        finally:
            if reader is not None:
                reader.shutdown(wait=True, cancel_futures=True)
        return doc


def pass_filter(plan: AssignPlan) -> models.Filter:
    """The points a pass assigns: ``plan.facet``'s inside the window, with a non-empty value.

    The value is tested by Qdrant, so the pass never reads the strings back (an empty value has a zero
    vector too when a worker stored it; the pass also skips zero vectors, as the sample does).
    """
    flt = Window(plan.window_start, None).facet_filter(plan.facet)
    return models.Filter(must=flt.must, must_not=[is_empty("value"), eq("value", "")])


def page_fields(plan: AssignPlan) -> tuple[str, ...]:
    """The payload fields a page needs: the totals' user and time, the conversation for numeric facets."""
    return PAGE_FIELDS + (("conversation_id",) if plan.numeric else ())


def assign_page(store: QdrantStore, plan: AssignPlan, model: OnlineKMeans, page: Page,
                totals: ClusterTotals, *, wait: bool = True) -> int:
    """Label the page's embedded values under ``plan.version`` and count them; returns how many.

    ``wait=False``: the labels are in Qdrant's write-ahead log when this returns, applied meanwhile, so
    the next page is read while Qdrant writes this one's (``BARRIER_PAGES`` bounds how far it runs ahead).
    """
    if not len(page):
        return 0
    norms = np.linalg.norm(page.vectors, axis=1)
    rows = np.flatnonzero(norms > 0)  # empty values are filtered out by the scroll (``pass_filter``)
    if not len(rows):
        return 0
    x = page.vectors[rows] / norms[rows, None]
    labels, _ = nearest_centroids(x, model.centroids, model.metric)
    store.labels.write(plan.facet, {page.ids[i]: int(c) for i, c in zip(rows, labels)}, plan.version,
                       ops_per_request=2000, latest=False, wait=wait)
    payloads = [page.payloads[i] for i in rows]
    numeric = numeric_values(store, plan, [str(p.get("conversation_id")) for p in payloads]) if plan.numeric else {}
    totals.add_points(plan, labels, [p.get("timestamp") for p in payloads], [p.get("user_hash") for p in payloads],
                      numeric)
    return int(len(rows))


def numeric_values(store: QdrantStore, plan: AssignPlan, conversation_ids: list[str]) -> dict[str, list[int | None]]:
    """Each numeric facet's value of each conversation (its own point, found by its deterministic id)."""
    out: dict[str, list[int | None]] = {}
    for name in plan.numeric:
        found = store.points.numeric_of([facet_point_id(cid, name) for cid in conversation_ids])
        out[name] = [found.get(facet_point_id(cid, name)) for cid in conversation_ids]
    return out


def write_plan(store: QdrantStore, plan: AssignPlan) -> None:
    """Publish the plan for shard processes (fenced: a plan of an older version cannot replace it)."""
    if not store.states.put_fenced(ASSIGN_PLAN.key, plan, fence=plan.version):
        raise PlanGone(f"plan of v{plan.version} {plan.facet}: a newer version's plan is there")


def run_pass(store: QdrantStore, plan: AssignPlan, model: OnlineKMeans, owner: str, ttl_s: float, check: Check,
             *, poll_s: float = 1.0, on_page: Callable[[AssignShard], None] | None = None) -> PassResult:
    """Every shard of ``plan``: run those nobody holds (resuming), wait for the others; the summed totals."""
    pending = list(range(plan.shards))
    while True:
        for shard in list(pending):
            doc = store.states.read(assign_shard_key(plan.version, plan.facet, shard))
            if doc is None or not doc.done:
                doc = run_shard(store, plan, model, shard, owner, ttl_s, check, on_page)
            if doc is not None and doc.done:
                pending.remove(shard)
        if not pending:
            break
        check()
        time.sleep(poll_s)  # the rest are held by other processes: wait for them to finish (or lapse)
    return collect(store, plan)


def collect(store: QdrantStore, plan: AssignPlan) -> PassResult:
    """The totals of every finished shard of ``plan``, added up."""
    totals = ClusterTotals.zeros(plan.k, plan)
    points = pages = 0
    seconds = 0.0
    for shard in range(plan.shards):
        doc = store.states.read(assign_shard_key(plan.version, plan.facet, shard))
        if doc is None or not doc.done:
            raise RuntimeError(f"shard {shard} of {plan.facet} v{plan.version} is not finished")
        totals.add(ClusterTotals.from_doc(doc.totals) if doc.totals else ClusterTotals.zeros(plan.k, plan))
        points, pages, seconds = points + doc.points, pages + doc.pages, seconds + doc.seconds
    return PassResult(totals, points, pages, seconds)


def help_with_plans(store: QdrantStore, index: int, owner: str, ttl_s: float, *, wait_s: float,
                    poll_s: float = 2.0) -> int:
    """A shard process: run shards of each plan that appears (its own ``index`` first, then any still free)
    until the version it helped with is committed, or nothing new came for ``wait_s``; returns shards run."""
    ran = 0
    seen: set[tuple[int, str]] = set()
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < wait_s:
        plan = store.states.read(ASSIGN_PLAN)
        done = committed(store)
        if plan is not None and done is not None and done.version >= plan.version:
            if seen:
                return ran  # the version this process helped with is published
            plan = None  # a plan of a finished version: wait for the next one
        doc = None if plan is None or (plan.version, plan.facet) in seen else \
            store.versions.get_centroids(plan.facet, plan.version)
        if plan is None or doc is None:
            time.sleep(poll_s)
            continue
        model = OnlineKMeans.from_state(doc)
        try:
            for shard in [(index + i) % plan.shards for i in range(plan.shards)]:
                ran += run_shard(store, plan, model, shard, owner, ttl_s, check=_plan_still(store, plan)) is not None
        except PlanGone as exc:
            log.info("stopped helping: %s", exc)
        seen.add((plan.version, plan.facet))
        idle_since = time.monotonic()
    return ran


def _plan_still(store: QdrantStore, plan: AssignPlan) -> Check:
    """A helper's check before each page: the plan is still the current one and its version unpublished."""
    def check() -> None:
        now = store.states.read(ASSIGN_PLAN)
        done = committed(store)
        if now is None or (now.version, now.facet) != (plan.version, plan.facet) \
                or (done is not None and done.version >= plan.version):
            raise PlanGone(f"the plan of v{plan.version} {plan.facet} is no longer current")
    return check
