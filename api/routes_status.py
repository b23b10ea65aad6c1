"""System status (viewer), liveness, readiness and Prometheus metrics.

``/v1/status`` gathers what other processes leave in the store's state
collection: worker metrics (``worker:<id>`` documents), the scheduler's
document (``scheduler``) and a pending ``recluster_request``. Each part is
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
from api.routes_admin import RECLUSTER_REQUEST_KEY
from api.schemas import HealthOut, StatusOut, WorkerOut
from clio_stream.store import WORKER_STATE_PREFIX

log = logging.getLogger(__name__)

router = APIRouter(tags=["status"])

WORKER_PREFIX = WORKER_STATE_PREFIX
SCHEDULER_KEY = "scheduler"  # written by clio_stream.living.scheduler (last_run_at, next_run_at)
from clio_stream.living.versions import LAST_RUN_KEY  # noqa: E402 - the last run (finished_at)
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


def build_status(ctx: ApiContext) -> StatusOut:
    out = StatusOut(api_accepted=ctx.metrics.accepted_total)
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
            out.cluster_versions[name] = _quiet(lambda n=name: ctx.store.current_version(n))
    _add_workers(ctx, out)
    scheduler = _quiet(lambda: ctx.store.get_state(SCHEDULER_KEY)) or {}
    last_run = _quiet(lambda: ctx.store.get_state(LAST_RUN_KEY)) or {}
    last = _number(scheduler, "last_run_at", "last_recluster_at") or _number(last_run, "finished_at")
    out.last_recluster_at = last if last is not None else out.last_recluster_at
    out.next_recluster_at = _number(scheduler, "next_run_at", "next_recluster_at")
    request = _quiet(lambda: ctx.store.get_state(RECLUSTER_REQUEST_KEY)) or {}
    out.recluster_requested_at = _number(request, "requested_at")
    return out


def _quiet(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - every part of the status is optional
        log.debug("status part failed", exc_info=True)
        return None


def _number(doc: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = doc.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _add_workers(ctx: ApiContext, out: StatusOut) -> None:
    docs = _quiet(lambda: ctx.store.states(WORKER_PREFIX)) or {}
    now = time.time()
    rate = lag = dlq = None
    health: list[str] = []
    for key, doc in sorted(docs.items()):
        if not isinstance(doc, dict):
            continue
        updated = _number(doc, "updated_at")
        if updated is None or now - updated > ctx.settings.api_worker_stale_s:
            continue
        processed = _number(doc, "processed")
        started = _number(doc, "started_at")
        if processed is not None and started is not None and updated > started:
            rate = (rate or 0.0) + processed / (updated - started)
        worker_lag = _number(doc, "consumer_lag")
        if worker_lag is not None:
            lag = (lag or 0) + int(worker_lag)
        dead = _number(doc, "dead_lettered")
        if dead is not None:
            dlq = (dlq or 0) + int(dead)
        state = str(doc.get("llm_health") or doc.get("health") or "").lower()
        if state and state not in _NEUTRAL:
            health.append(state)
        out.workers.append(WorkerOut(
            id=str(doc.get("worker_id") or key[len(WORKER_PREFIX):]),
            health=doc.get("health") if isinstance(doc.get("health"), str) else None,
            health_reason=doc.get("health_reason") if isinstance(doc.get("health_reason"), str) else None,
            processed=None if processed is None else int(processed),
            consumer_lag=None if worker_lag is None else int(worker_lag),
            updated_at=updated,
        ))
    out.ingest_rate_per_s, out.consumer_lag, out.dlq_count = rate, lag, dlq
    if health:
        out.llm_health = "ok" if all(h in _HEALTHY for h in health) else "degraded"
