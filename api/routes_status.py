"""System status (viewer), liveness, readiness and Prometheus metrics.

``/v1/status`` gathers what other processes leave in the store's state
collection (``clio_stream.storage.documents``): worker metrics, the scheduler's
state, the last run and a pending re-cluster request. Each part is
optional: whatever is missing or unreadable is null, never an error. The
answer is cached for ``api_status_cache_s`` so dashboards polling it cost the
store almost nothing.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials

from api.auth import Role
from api.deps import ApiContext, Ctx, Store, Viewer, bearer_scheme, require
from api.schemas import ChildOut, HealthOut, ReclusterProgressOut, StatusOut, WorkerOut
from clio_stream.storage.documents import (
    CLUSTERING_LOCK,
    LAST_RUN,
    RECLUSTER_PROGRESS,
    RECLUSTER_REQUEST,
    SCHEDULER_STATE,
    UP_CHILDREN,
    WORKER_METRICS,
)

log = logging.getLogger(__name__)

UP_CHILDREN_STALE_S = 30.0  # the supervisor reports every 2 s; older: `up` is gone

router = APIRouter(tags=["status"])

_HEALTHY = {"ok", "healthy", "running"}
_NEUTRAL = {"starting", "stopped"}


@router.get("/healthz", response_model=HealthOut, summary="The process is up (no key needed)")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}},
            summary="The store is reachable (no key needed)")
async def readyz(store: Store, response: Response) -> HealthOut:
    if await run_in_threadpool(store.health):
        return HealthOut(status="ready")
    response.status_code = 503
    return HealthOut(status="store unavailable")


async def metrics_reader(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """The scrape token (``metrics_token``) when one is set, else a viewer key, as for every other read."""
    token = request.app.state.ctx.settings.metrics_token
    if token is not None and credentials is not None and \
            hmac.compare_digest(credentials.credentials.encode(), token.get_secret_value().encode()):
        return
    await require(Role.viewer)(request, credentials)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (viewer, or the scrape token)",
            responses={200: {"content": {"text/plain": {}}}}, dependencies=[Depends(metrics_reader)])
def metrics(ctx: Ctx) -> Response:
    return Response(content=ctx.metrics.render(), media_type=ctx.metrics.content_type)


@router.get("/v1/status", response_model=StatusOut, summary="Ingest, lag, versions and health (viewer)")
def status(principal: Viewer, ctx: Ctx) -> StatusOut:
    cache = ctx.status_cache
    with cache.lock:
        if cache.value is not None and time.monotonic() - cache.at < ctx.settings.api_status_cache_s:
            return cache.value
        value = build_status(ctx)
        cache.value, cache.at = value, time.monotonic()
        return value


def _backlog(ctx: ApiContext, out: StatusOut) -> None:
    """The real backlog from the group's committed offsets (``streaming.backlog``), measured in the background."""
    if ctx.backlog is None:
        from clio_stream.streaming.backlog import BacklogProbe
        from clio_stream.streaming.connection import KafkaConnection

        ctx.backlog = BacklogProbe(KafkaConnection.from_settings(ctx.settings), ctx.settings.topic,
                                   ctx.settings.consumer_group, interval_s=max(1.0, ctx.settings.api_dashboard_poll_s))
    found = ctx.backlog.latest()
    if found is not None:
        out.waiting, out.committed = found.waiting, found.committed


def build_status(ctx: ApiContext) -> StatusOut:
    out = StatusOut(api_accepted=ctx.metrics.accepted_total,
                    first_clustering_points=ctx.settings.recluster_min_points)
    _backlog(ctx, out)
    view = None
    try:
        view = ctx.current_view()
    except Exception:  # noqa: BLE001 - a broken publish dir must not break status
        log.warning("reading the published version failed", exc_info=True)
    if view is not None:
        out.version, out.published_at = view.version, view.published_at
        out.last_recluster_at = view.published_at
    store_ok = ctx.store.health()
    out.store_health = "ok" if store_ok else "unavailable"
    if not store_ok:
        return out
    if view is not None:
        for name in view.facet_views:
            out.cluster_versions[name] = _quiet(lambda n=name: ctx.store.versions.current_version(n))
    _add_workers(ctx, out)
    scheduler = _quiet(lambda: ctx.store.states.read(SCHEDULER_STATE))
    last_run = _quiet(lambda: ctx.store.states.read(LAST_RUN))
    last = (scheduler.last_run_at if scheduler else None) or (last_run.finished_at if last_run else None)
    out.last_recluster_at = last if last is not None else out.last_recluster_at
    out.next_recluster_at = scheduler.next_run_at if scheduler else None
    request = _quiet(lambda: ctx.store.states.read(RECLUSTER_REQUEST))
    out.recluster_requested_at = request.requested_at if request else None
    progress = _quiet(lambda: ctx.store.states.read(RECLUSTER_PROGRESS))
    # Unfinished and the clustering lock still held: running (a job killed mid-way leaves its document behind,
    # but its lease expires).
    if (progress is not None and progress.finished_at is None
            and _quiet(lambda: ctx.store.locks.holder(CLUSTERING_LOCK)) is not None):
        out.recluster_progress = ReclusterProgressOut.model_validate(progress.model_dump())
    children = _quiet(lambda: ctx.store.states.read(UP_CHILDREN))
    if children is not None and time.time() - children.updated_at < UP_CHILDREN_STALE_S:  # an `up` still running
        out.up_children = [ChildOut.model_validate(c.model_dump()) for c in children.children]
    return out


def _quiet(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - every part of the status is optional
        log.debug("status part failed", exc_info=True)
        return None


def _add_workers(ctx: ApiContext, out: StatusOut) -> None:
    docs = _quiet(lambda: ctx.store.states.read_all(WORKER_METRICS)) or {}
    now = time.time()
    rate = lag = dlq = processed = None
    health: list[str] = []
    for doc in (docs[name] for name in sorted(docs)):
        if now - doc.updated_at > ctx.settings.api_worker_stale_s:
            continue  # a worker that stopped (by its own clock, as it wrote the document)
        if doc.started_at is not None and doc.updated_at > doc.started_at:
            rate = (rate or 0.0) + doc.processed / (doc.updated_at - doc.started_at)
        if doc.consumer_lag is not None:
            lag = (lag or 0) + doc.consumer_lag
        dlq = (dlq or 0) + doc.dead_lettered
        processed = (processed or 0) + doc.processed
        state = doc.health.lower()
        if state and state not in _NEUTRAL:
            health.append(state)
        out.workers.append(WorkerOut(id=doc.worker_id, health=doc.health, health_reason=doc.health_reason,
                                     processed=doc.processed, consumer_lag=doc.consumer_lag, updated_at=doc.updated_at))
    out.ingest_rate_per_s, out.consumer_lag, out.dlq_count, out.processed = rate, lag, dlq, processed
    if health:
        out.llm_health = "ok" if all(h in _HEALTHY for h in health) else "degraded"
