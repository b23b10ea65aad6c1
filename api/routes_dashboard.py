"""The dashboard: the current version's static site, served behind a viewer key.

A browser cannot send ``Authorization`` headers from ``fetch`` calls the page
did not write, so the key is handed over once as ``/?key=KEY``: the server
checks it, sets an HttpOnly, SameSite=Strict session cookie (signed, stateless:
see api.auth) and redirects to
the same URL without the key (the ``#`` view state survives the redirect).
The cookie is accepted for GET requests only, so it cannot be used to change
anything even if a request were forged.

Data files follow the API's roles (``data_file_role``): member pages and
conversation chunks are conversation-level data, for analysts, like the
members and conversation routes; a viewer is answered 403 and the page says
an analyst key is needed.

The served page gets ``<meta name="clio-api">``, which switches on its live
status panel and its polling for new versions, and a Content-Security-Policy
that allows exactly the page's own inline script (by hash) and same-origin fetches.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from api.auth import SESSION_COOKIE, Principal, Role
from api.deps import ApiContext, Ctx, authenticate, bearer_scheme, check_key
from api.views import live_page

log = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

_MEDIA = {".gz": "application/gzip", ".json": "application/json"}
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def _notice(title: str, text: str, status: int) -> HTMLResponse:
    body = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<body style='font-family:system-ui;padding:2em'><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(text)}</p></body>")
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


def _viewer(request: Request, ctx: ApiContext, credentials: HTTPAuthorizationCredentials | None) -> Principal | None:
    principal = authenticate(request, credentials)
    if principal is None:
        ctx.metrics.auth_failures.labels("401").inc()
    return principal


@router.get("/")
def dashboard(
    request: Request,
    ctx: Ctx,
    credentials: Credentials,
    key: Annotated[str | None, Query(max_length=512)] = None,
) -> Response:
    if key is not None:
        principal = check_key(request, key)
        if principal is None:
            return _notice("Invalid key", "That key is not valid for this dashboard.", 401)
        token = ctx.keyring.issue_session(principal, ctx.settings.api_session_ttl_s)
        rest = request.url.remove_query_params("key")
        target = rest.path + (f"?{rest.query}" if rest.query else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, token, max_age=int(ctx.settings.api_session_ttl_s), path="/",
                            httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return response
    if _viewer(request, ctx, credentials) is None:
        return _notice("Key required", "Open this page once as /?key=YOUR_KEY (a viewer key or better).", 401)
    published = ctx.versions.load_current()
    if published is None:
        page, csp = live_page(ctx.settings.api_dashboard_poll_s)  # ingest progress until the first version
    else:
        page, csp = ctx.pages.get(published)
    return HTMLResponse(page, headers={"Cache-Control": "no-cache", "Content-Security-Policy": csp,
                                       "X-Frame-Options": "DENY"})


def data_file_role(relative: Path) -> Role:
    """The role a site data file needs: the API's rule, applied to the files the dashboard reads.

    Member pages and conversation chunks (and their index) are conversation-level data, as the
    members and conversation routes are: analyst. Trees, children and the manifest are aggregates: viewer.
    """
    top = relative.parts[0] if relative.parts else ""
    if top == "conversations" or (len(relative.parts) >= 2 and relative.parts[1] == "members"):
        return Role.analyst
    return Role.viewer


@router.get("/data/{path:path}")
def data_file(request: Request, ctx: Ctx, credentials: Credentials, path: str) -> Response:
    principal = _viewer(request, ctx, credentials)
    if principal is None:
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
    published = ctx.versions.load_current()
    if published is None:
        return Response(status_code=404)
    base = (published.site_dir / "data").resolve()
    try:
        target = (base / path).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            return Response(status_code=404)
    except (ValueError, OSError):  # a NUL byte or an over-long name: no such file, not a server error
        return Response(status_code=404)
    needed = data_file_role(target.relative_to(base))
    if not principal.allows(needed):
        ctx.metrics.auth_failures.labels("403").inc()
        return Response(status_code=403, headers={"Cache-Control": "no-store"})
    return FileResponse(target, media_type=_MEDIA.get(Path(path).suffix, "application/octet-stream"),
                        headers={"Cache-Control": "no-cache"})
