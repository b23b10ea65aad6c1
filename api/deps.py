"""Shared state of one app and the FastAPI dependencies routes declare (auth, store, published view)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import SESSION_COOKIE, FailedAuthLimiter, KeyRing, Principal, Role
from api.metrics import ApiMetrics
from api.slicing import FilteredTrees, build_slices
from api.views import VersionView, build_view, dashboard_page
from clio_stream.streaming.backlog import BacklogProbe
from clio_stream.views.slices import SliceIndex
from clio_stream.settings import ClioSettings
from clio_stream.storage.published import PublishedVersion, PublishedVersions
from clio_stream.storage.store import QdrantStore
from clio_stream.streaming.connection import KafkaConnection

log = logging.getLogger(__name__)

_STORE_VERSION_TTL_S = 5.0
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer KEY`.")


class RecentIds:
    """Ids accepted by this process and not yet seen in the store: answered as ``pending``.

    Bounded and expiring, so a conversation a worker never stores stops being
    reported after ``ttl_s``. Per process (a replica knows only its own posts).
    """

    def __init__(self, ttl_s: float = 3600.0, max_ids: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_ids = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, ids: list[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for cid in ids:
                self._ids.pop(cid, None)
                self._ids[cid] = now
            while len(self._ids) > self.max_ids:
                self._ids.popitem(last=False)

    def __contains__(self, cid: str) -> bool:
        with self._lock:
            at = self._ids.get(cid)
            if at is None:
                return False
            if time.monotonic() - at > self.ttl_s:
                del self._ids[cid]
                return False
            return True

    def discard(self, cid: str) -> None:
        with self._lock:
            self._ids.pop(cid, None)


T = TypeVar("T")


class VersionMemo(Generic[T]):
    """One value derived from the current published version, rebuilt when the version (or its scrub) changes.

    Keyed by ``PublishedVersion.identity``; built once under a lock, read without one.
    """

    def __init__(self, build: Callable[[PublishedVersion], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._held: tuple[tuple[Any, ...], T] | None = None

    def peek(self, published: PublishedVersion) -> T | None:
        """The value if it was built for ``published``, else None (never builds)."""
        held = self._held
        return held[1] if held is not None and held[0] == published.identity else None

    def get(self, published: PublishedVersion) -> T:
        value = self.peek(published)
        if value is not None:
            return value
        with self._lock:
            value = self.peek(published)
            if value is None:
                value = self._build(published)
                self._held = (published.identity, value)
        return value


class TimedValue:
    """A value and when it was computed, with a lock so one caller recomputes it at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.at = 0.0
        self.value: Any = None


@dataclass
class ApiContext:
    """Everything routes share; one per app, kept in ``app.state.ctx``."""

    settings: ClioSettings
    store: QdrantStore
    keyring: KeyRing
    metrics: ApiMetrics
    versions: PublishedVersions
    auth_limiter: FailedAuthLimiter
    producer: Any = None
    owns_producer: bool = False
    pending: RecentIds = field(default_factory=RecentIds)
    producer_lock: threading.Lock = field(default_factory=threading.Lock)
    status_cache: TimedValue = field(default_factory=TimedValue)
    _store_versions: dict[str, tuple[float, int | None]] = field(default_factory=dict)
    _last_version: str | None = None
    embedder: Any = None  # for search; made from the settings on first use when not given
    views: VersionMemo[VersionView] = field(init=False)  # the indexed view the routes read
    pages: VersionMemo[tuple[str, str]] = field(init=False)  # the dashboard's index.html and its CSP
    slices: VersionMemo[SliceIndex] = field(init=False)  # filters and breakdowns (api.slicing)
    filtered: FilteredTrees = field(default_factory=FilteredTrees)
    embedder_lock: threading.Lock = field(default_factory=threading.Lock)
    backlog: BacklogProbe | None = None  # the conversation topic's real backlog (started by the status route)

    def __post_init__(self) -> None:
        self.views = VersionMemo(lambda published: build_view(published, self.versions))
        self.pages = VersionMemo(lambda published: dashboard_page(published, self.settings.api_dashboard_poll_s))
        self.slices = VersionMemo(lambda published: build_slices(self.views.get(published), published.result.settings,
                                                                 self.settings, published.result))

    def current_slices(self) -> SliceIndex | None:
        """The slice index of the current version (built on first use), or None before the first publish."""
        published = self.versions.load_current()
        return None if published is None else self.slices.get(published)

    def get_embedder(self) -> Any:
        """The embedder search uses, loaded on first use (a few seconds and a few hundred MB)."""
        if self.embedder is None:
            with self.embedder_lock:
                if self.embedder is None:
                    from clio_stream.embedding import make_embedder

                    self.embedder = make_embedder(self.settings.model_copy(update={"show_progress": False}))
        return self.embedder

    @property
    def publish_dir(self) -> Path:
        return self.versions.root

    def current_view(self) -> VersionView | None:
        """The view of the currently published version (None before the first publish)."""
        published = self.versions.load_current()
        if published is None:
            return None
        view = self.views.get(published)
        if view.version != self._last_version:
            self._last_version = view.version
            self.metrics.published_loads.inc()
        return view

    def current_view_nowait(self) -> VersionView | None:
        """The current view when it is already built and still current (no file reads), else None."""
        published = self.versions.current_if_loaded()
        return None if published is None else self.views.peek(published)

    def store_version(self, facet: str) -> int | None:
        """The store's current clustering version of ``facet``, cached for a few seconds."""
        now = time.monotonic()
        hit = self._store_versions.get(facet)
        if hit is not None and now - hit[0] < _STORE_VERSION_TTL_S:
            return hit[1]
        version = self.store.versions.current_version(facet)
        self._store_versions[facet] = (now, version)
        return version

    def get_producer(self) -> Any:
        """The Kafka producer, created on first use so the API starts without a broker."""
        if self.producer is None:
            with self.producer_lock:
                if self.producer is None:
                    from clio_stream.streaming.kafka_io import make_producer

                    timeout_ms = int(self.settings.api_produce_timeout_s * 1000)
                    self.producer = make_producer(KafkaConnection.from_settings(self.settings), max_block_ms=timeout_ms)
                    self.owns_producer = True
        return self.producer

    def close(self) -> None:
        if self.backlog is not None:
            self.backlog.stop()
        if self.owns_producer and self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except Exception:  # noqa: BLE001 - shutting down anyway
                log.warning("closing the Kafka producer failed", exc_info=True)
            self.producer = None


async def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


async def get_store(ctx: Ctx) -> QdrantStore:
    """The app's store (injected, so tests can hand ``create_app`` any QdrantStore)."""
    return ctx.store


Store = Annotated[QdrantStore, Depends(get_store)]


def authenticate(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Principal | None:
    """Bearer key (any method), else the dashboard cookie (GET/HEAD only), else anonymous if allowed.

    A wrong key is never downgraded to anonymous: it raises 401.
    """
    ctx: ApiContext = request.app.state.ctx
    if credentials is not None:
        principal = check_key(request, credentials.credentials)
        if principal is None:
            raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})
        return principal
    token = request.cookies.get(SESSION_COOKIE)
    if token and request.method in ("GET", "HEAD"):
        principal = ctx.keyring.session_principal(token)
        if principal is not None:
            return principal
    return ctx.keyring.anonymous()


def client_address(request: Request) -> str:
    """The caller's address as uvicorn resolved it (behind a proxy: from X-Forwarded-For, if trusted)."""
    return request.client.host if request.client is not None else "unknown"


def check_key(request: Request, key: str) -> Principal | None:
    """The principal of a presented key, or None (counted against the caller's address).

    429 with Retry-After while the address is throttled, before the key is even looked up.
    """
    ctx: ApiContext = request.app.state.ctx
    client = client_address(request)
    wait = ctx.auth_limiter.retry_after(client)
    if wait > 0:
        ctx.metrics.auth_failures.labels("429").inc()
        raise HTTPException(429, "too many wrong API keys from this address; retry later",
                            headers={"Retry-After": str(wait)})
    principal = ctx.keyring.lookup(key)
    if principal is None:
        ctx.auth_limiter.failed(client)
        ctx.metrics.auth_failures.labels("401").inc()
        log.warning("wrong API key from %s", client)
    return principal


def require(role: Role) -> Callable[..., Principal]:
    """A dependency admitting callers of ``role`` or above: 401 without credentials, 403 below the role."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> Principal:
        principal = authenticate(request, credentials)
        ctx: ApiContext = request.app.state.ctx
        if principal is None:
            ctx.metrics.auth_failures.labels("401").inc()
            raise HTTPException(401, "an API key is required (Authorization: Bearer KEY)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not principal.allows(role):
            ctx.metrics.auth_failures.labels("403").inc()
            raise HTTPException(403, f"this needs the {role.name} role")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"require_{role.name}"
    return dependency


Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Analyst = Annotated[Principal, Depends(require(Role.analyst))]
Admin = Annotated[Principal, Depends(require(Role.admin))]


async def get_view(ctx: Ctx) -> VersionView:
    """The current published view, or 404 before anything is published (loads off the event loop)."""
    view = ctx.current_view_nowait()
    if view is None:
        view = await run_in_threadpool(ctx.current_view)
    if view is None:
        raise HTTPException(404, "no clustering version has been published yet")
    return view


View = Annotated[VersionView, Depends(get_view)]
