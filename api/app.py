"""The clio-stream HTTP API and dashboard: ``create_app(settings)``; run with ``python -m api.app``.

Roles (``CLIO_API_KEYS='viewer:KEY,analyst:KEY,admin:KEY'``, sent as
``Authorization: Bearer KEY``): viewer sees aggregates (trees, clusters,
status, metrics, dashboard), analyst also conversation-level data, admin may
also ingest, re-cluster and delete. Without any key configured the app refuses
to start unless ``CLIO_API_ALLOW_ANONYMOUS=true``, which makes every caller a
viewer. Only ``/healthz`` and ``/readyz`` answer without a key.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic.json_schema import models_json_schema

from api import (routes_admin, routes_clusters, routes_conversations, routes_dashboard, routes_explore,
                 routes_reports, routes_status)
from api.auth import FailedAuthLimiter, KeyRing, Role
from api.deps import ApiContext, require
from api.metrics import ApiMetrics
from api.middleware import BodyLimitMiddleware, RequestContextMiddleware, request_id_of
from api.schemas import BatchIn, ConversationIn
from clio_stream.secret_settings import check_user_hash_key
from clio_stream.settings import ClioSettings
from clio_stream.storage.published import PublishedVersions
from clio_stream.site.writer import normalize_html_root
from clio_stream.storage.errors import StoreError, StoreUnavailable
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)

API_VERSION = "1.0.0"


def create_app(settings: ClioSettings | None = None, *, store: QdrantStore | None = None,
               producer: Any = None, embedder: Any = None) -> FastAPI:
    """Build the app. ``store``/``producer``/``embedder`` default to ones made from ``settings`` (lazily but the store).

    Raises ValueError when no API key is configured and anonymous access is not allowed.
    """
    settings = settings or ClioSettings()
    keyring = KeyRing.from_settings(settings)
    if keyring.allow_anonymous:
        log.warning("anonymous access is on: callers without a key are viewers")
    owns_store = store is None
    metrics = ApiMetrics()
    ctx = ApiContext(
        settings=settings,
        store=store if store is not None else QdrantStore.from_settings(settings),
        keyring=keyring,
        auth_limiter=FailedAuthLimiter.from_settings(settings),
        metrics=metrics,
        versions=PublishedVersions.from_settings(settings),
        producer=producer,
        embedder=embedder,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("API up: %d key(s), publish dir %s", len(keyring), ctx.publish_dir)
        yield
        await run_in_threadpool(ctx.close)
        if owns_store:
            ctx.store.close()

    app = FastAPI(
        title="clio-stream API",
        version=API_VERSION,
        description=__doc__,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    for router in (routes_status.router, routes_clusters.router, routes_conversations.router, routes_admin.router,
                   routes_explore.router, routes_reports.router):
        app.include_router(router)
    app.include_router(routes_dashboard.router)
    root = normalize_html_root(settings.html_root)
    if root.startswith("/"):
        app.include_router(routes_dashboard.router, prefix=root)
    _add_docs(app)
    _add_error_handlers(app)

    # Added innermost first: CORS (if any) outermost, then request context, then the body limit.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    if settings.api_cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.api_cors_origins), allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])
    return app


def _add_docs(app: FastAPI) -> None:
    """OpenAPI and Swagger UI, behind a viewer key like everything else."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, defs = models_json_schema([(ConversationIn, "validation"), (BatchIn, "validation")],
                                         ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    viewer = [Depends(require(Role.viewer))]

    @app.get("/openapi.json", include_in_schema=False, dependencies=viewer)
    def openapi_json() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=viewer)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="clio-stream API")


def _add_error_handlers(app: FastAPI) -> None:
    """Store outages are 503 with Retry-After; anything unexpected a bare 500 with the request id."""

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("store unavailable [%s]: %s", request_id_of(request.scope), exc)
        return JSONResponse({"detail": "the store is unavailable; retry later", "request_id": request_id_of(request.scope)},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.error("store error [%s]: %s", request_id_of(request.scope), exc)
        return JSONResponse({"detail": "the store failed to answer", "request_id": request_id_of(request.scope)},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request.scope)
        log.exception("unhandled error [%s] on %s %s", rid, request.method, request.url.path)
        return JSONResponse({"detail": "internal server error", "request_id": rid}, status_code=500,
                            headers={"X-Request-ID": rid or ""})


def serve(settings: ClioSettings) -> None:
    """Serve on ``web_host:web_port`` with uvicorn, refusing missing or placeholder secrets before binding the port.

    With ``api_workers`` > 1 every worker process builds its own app from the
    same settings (sessions are signed cookies, so they work on any worker): the
    caller hands any overrides down through the environment.
    """
    import uvicorn

    KeyRing.from_settings(settings)  # no keys, placeholder keys, no anonymous access: refuse before forking workers
    check_user_hash_key(settings)  # the API deletes users by their hash
    # Behind an ingress: uvicorn trusts X-Forwarded-* from the addresses in FORWARDED_ALLOW_IPS (its own env var).
    common: dict[str, Any] = {"host": settings.web_host, "port": settings.web_port, "log_level": "info",
                              "access_log": False, "timeout_graceful_shutdown": 20}
    log.info("API on http://%s:%d with %d worker(s)", settings.web_host, settings.web_port, settings.api_workers)
    if settings.api_workers > 1:
        from api.metrics import share_across_workers

        share_across_workers()
        uvicorn.run("api.app:create_app", factory=True, workers=settings.api_workers, **common)
    else:
        uvicorn.run(create_app(settings), **common)


def main() -> None:
    """``python -m api.app``: settings (keys included) from the environment/TOML."""
    from clio_stream.ops.logs import setup_logging

    setup_logging()
    serve(ClioSettings())


if __name__ == "__main__":
    main()
