"""Facets, trees, clusters and cluster membership of the current published version.

Withheld clusters answer exactly like unknown ones (404), and their sizes show
only as a parent's aggregate ``other_count``.

Old cluster ids: when an id is not in the current version but the lineage of a
retained version maps it (possibly through several versions) to a visible
cluster, the successor is answered with **200** and ``successor_of`` set to the
id asked for (plus a ``Content-Location`` header naming the canonical URL). A
redirect was not chosen because it costs clients a second round trip and some
HTTP clients drop the Authorization header on redirects.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool

from api.deps import Analyst, Ctx, View, Viewer
from api.slicing import request_filter
from api.schemas import ClusterOut, ErrorOut, FacetOut, FacetsOut, MemberOut, MembersOut, TreeOut, TrendsOut
from api.views import FacetView, VersionView, summary
from clio_stream.domain.clusters import ClusterNode

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/facets", tags=["clusters"])

_NOT_FOUND = {404: {"model": ErrorOut, "description": "Unknown (or withheld) facet or cluster."}}
_MAX_STORE_CALLS = 20  # per page: bounds the work when many members are withheld


@router.get("", response_model=FacetsOut, summary="List facets of the current version")
def list_facets(principal: Viewer, ctx: Ctx) -> FacetsOut:
    view = ctx.current_view()
    if view is None:
        return FacetsOut(version=None, published_at=None, facets=[])
    out = []
    for facet in view.facets:
        name = str(facet.get("name"))
        fv = view.facet_views.get(name)
        numeric = facet.get("numeric")
        out.append(FacetOut(
            name=name,
            question=str(facet.get("question") or ""),
            numeric=list(numeric) if numeric else None,
            has_hierarchy=fv is not None,
            total=fv.total if fv else None,
            depth=fv.hierarchy.depth() if fv else None,
            clusters=len(fv.visible) if fv else None,
            other_count=fv.other_count if fv else None,
        ))
    return FacetsOut(version=view.version, published_at=view.published_at, facets=out)


def _facet(view: VersionView, facet: str) -> FacetView:
    fv = view.facet_views.get(facet)
    if fv is None:
        raise HTTPException(404, f"facet {facet!r} has no published hierarchy")
    return fv


def _cluster(view: VersionView, facet: str, cluster_id: str) -> tuple[FacetView, ClusterNode, str | None]:
    fv = _facet(view, facet)
    found = view.resolve(facet, cluster_id)
    if found is None:
        raise HTTPException(404, "cluster not found")
    return fv, found[0], found[1]


FILTERS_DOC = ("Filters (query parameters, ANDed): `metadata.<key>=v` (declared keys your role may see), `<facet>=v`, "
               "`<hierarchy facet>=<cluster id>`, `<numeric facet>>=n` (also >, <=, <, =), `from`/`to` (epoch or ISO, "
               "whole trend windows). Under a filter counts are over the slice; a cluster whose slice, or whose "
               "remainder against any looser filter, is under the privacy minimums is withheld.")


def filtered(request: Request, ctx: Any, view: VersionView, fv: FacetView, principal: Any) -> tuple[Any, Any] | None:
    """(node id -> rows shown, tree answer) under the request's filter, or None when it asks for none."""
    flt = request_filter(request, view, ctx.settings, principal)
    if not flt:
        return None
    index = ctx.current_slices()
    if index is None:
        raise HTTPException(404, "no clustering version has been published yet")
    return ctx.filtered.get(index, view, fv, flt)


def _node_summary(ctx: Any, fv: FacetView, node: ClusterNode, rows: Any, shown: dict[str, Any] | None) -> dict[str, Any]:
    if shown is None:
        return summary(fv, node)
    kids = [c for c in fv.visible_children(node) if c.id in shown]
    return ctx.current_slices().summary(fv, node, rows, len(kids))


@router.get("/{facet}/tree", response_model=TreeOut, responses=_NOT_FOUND,
            summary="The whole visible tree of a facet (optionally filtered)", description=FILTERS_DOC)
async def tree(principal: Viewer, view: View, ctx: Ctx, request: Request, facet: str) -> Response:
    fv = _facet(view, facet)
    found = await run_in_threadpool(filtered, request, ctx, view, fv, principal)
    if found is not None:
        return JSONResponse(found[1])
    return Response(content=fv.tree_json, media_type="application/json")


@router.get("/{facet}/trends", response_model=TrendsOut, responses=_NOT_FOUND,
            summary="Emerging and fastest-growing clusters of a facet")
def trends(principal: Viewer, view: View, facet: str,
           limit: Annotated[int, Query(ge=1, le=100)] = 10) -> dict[str, Any]:
    fv = _facet(view, facet)
    shown = [n for n in fv.public.values() if n.trend is not None]
    growing = sorted((n for n in shown if n.trend.growth is not None),  # type: ignore[union-attr]
                     key=lambda n: (-n.trend.growth, -n.size, n.id))  # type: ignore[union-attr]
    first = next((n.trend for n in shown), None)
    return {
        "facet": facet,
        "version": view.version,
        "window_s": None if first is None else first.window_s,
        "start": None if first is None else first.start,
        "emerging": [summary(fv, n) for n in growing if n.trend.emerging],  # type: ignore[union-attr]
        "growing": [summary(fv, n) for n in growing[:limit]],
    }


@router.get("/{facet}/clusters/{cluster_id}", response_model=ClusterOut, responses=_NOT_FOUND,
            summary="One cluster: details, ancestors and visible children (optionally filtered)",
            description=FILTERS_DOC)
async def cluster(principal: Viewer, view: View, ctx: Ctx, request: Request, facet: str, cluster_id: str,
                  response: Response) -> dict[str, Any]:
    fv, node, successor_of = _cluster(view, facet, cluster_id)
    found = await run_in_threadpool(filtered, request, ctx, view, fv, principal)
    shown = None if found is None else found[0]
    if shown is not None and node.id not in shown:
        raise HTTPException(404, "cluster not found")  # withheld under this filter: as unknown
    if successor_of is not None:
        response.headers["Content-Location"] = f"/v1/facets/{quote(facet, safe='')}/clusters/{quote(node.id, safe='')}"
    children = [c for c in fv.visible_children(node) if shown is None or c.id in shown]
    return {
        **_node_summary(ctx, fv, node, None if shown is None else shown[node.id], shown),
        "facet": facet,
        "version": view.version,
        "parent_path": [{"id": p.id, "name": p.name} for p in fv.path(node)],
        "children": [_node_summary(ctx, fv, c, None if shown is None else shown[c.id], shown) for c in children],
        "successor_of": successor_of,
    }


def encode_cursor(version: str, node_id: str, leaf: int, offset: Any) -> str:
    raw = json.dumps({"v": version, "n": node_id, "l": leaf, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str, int, Any]:
    """(version, node id, leaf index, offset) of an opaque cursor; 400 if it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        doc = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        version, node_id, leaf, offset = doc["v"], doc["n"], doc["l"], doc["o"]
        if not (isinstance(version, str) and isinstance(node_id, str) and isinstance(leaf, int) and leaf >= 0):
            raise ValueError("bad cursor fields")
        if offset is not None and not isinstance(offset, (str, int)):
            raise ValueError("bad cursor offset")
        return version, node_id, leaf, offset
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error):
        raise HTTPException(400, "invalid cursor") from None


@router.get("/{facet}/clusters/{cluster_id}/conversations", response_model=MembersOut,
            responses={**_NOT_FOUND, 400: {"model": ErrorOut}, 410: {"model": ErrorOut}},
            summary="Conversations in a cluster (analyst), one page at a time")
async def members(
    principal: Analyst,
    view: View,
    ctx: Ctx,
    request: Request,
    facet: str,
    cluster_id: str,
    limit: Annotated[int, Query(ge=1, description="Page size; clamped to the server's maximum.")] = 100,
    cursor: Annotated[str | None, Query(max_length=2048)] = None,
) -> MembersOut:
    """Members of the visible leaves under the cluster, live from the store where a leaf maps to one.

    Conversations withheld in any facet of the published version are skipped,
    so a page may be shorter than ``limit``; stop when ``next_cursor`` is null.
    Conversations assigned online since the version was published are listed
    by this facet's value only, never with another facet's (possibly withheld) cluster.
    Under a filter (see the tree), the members are those of the version's slice.
    """
    fv, node, _ = _cluster(view, facet, cluster_id)
    limit = min(limit, ctx.settings.api_max_page_size)
    found = await run_in_threadpool(filtered, request, ctx, view, fv, principal)
    if found is not None:
        return _slice_page(ctx, view, fv, node, found[0], limit, cursor)
    leaf_index, offset = 0, None
    if cursor:
        version, cursor_node, leaf_index, offset = decode_cursor(cursor)
        if cursor_node != node.id:
            raise HTTPException(400, "cursor belongs to another cluster")
        if version != view.version:
            raise HTTPException(410, "cursor expired: a new clustering version was published; start again")
    return await run_in_threadpool(_members_page, ctx, view, fv, node, limit, leaf_index, offset)


def _slice_page(ctx: Any, view: VersionView, fv: FacetView, node: ClusterNode, shown: dict[str, Any], limit: int,
                cursor: str | None) -> MembersOut:
    """One page of a cluster's members under a filter: the version's slice, in row order."""
    if node.id not in shown:
        raise HTTPException(404, "cluster not found")
    start = 0
    if cursor:
        version, cursor_node, _, offset = decode_cursor(cursor)
        if cursor_node != node.id or not isinstance(offset, int) or offset < 0:
            raise HTTPException(400, "invalid cursor")
        if version != view.version:
            raise HTTPException(410, "cursor expired: a new clustering version was published; start again")
        start = offset
    table = ctx.current_slices().table
    rows = sorted(int(r) for r in shown[node.id])
    items = []
    for r in rows[start:start + limit]:
        cid = table.ids[r]
        value = view.values.get(cid, {}).get(fv.name)
        items.append(MemberOut(conversation_id=cid, value=value.value if value is not None else None,
                               timestamp=None if table.times[r] != table.times[r] else float(table.times[r])))
    end = start + len(items)
    nxt = encode_cursor(view.version, node.id, 0, end) if end < len(rows) else None
    return MembersOut(facet=fv.name, cluster_id=node.id, version=view.version, items=items, next_cursor=nxt)


def _check_offset(offset: Any, store: bool) -> None:
    """A cursor's offset must be what this kind of leaf hands out: a point id, or a list position."""
    if offset is None:
        return
    if store:
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            return
        try:
            uuid.UUID(str(offset))
            return
        except ValueError:
            pass
    elif isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
        return
    raise HTTPException(400, "invalid cursor")


def _members_page(ctx: Any, view: VersionView, fv: FacetView, node: ClusterNode, limit: int,
                  leaf_index: int, offset: Any) -> MembersOut:
    """Fill one page from the visible leaves under ``node``: live store points, or the snapshot's ids.

    A leaf mapped to an online cluster pages through the store (Qdrant's scroll
    offset is the cursor); an unmapped leaf pages through the published member
    list. Conversations withheld in any facet are skipped.
    """
    leaves = fv.leaves_under(node)
    items: list[MemberOut] = []
    calls = 0
    version_of_facet: int | None | bool = False  # False: not looked up yet
    while len(items) < limit and leaf_index < len(leaves) and calls < _MAX_STORE_CALLS:
        leaf = leaves[leaf_index]
        mapped = fv.store_cluster.get(leaf.id)
        calls += 1
        _check_offset(offset, mapped is not None)
        if mapped is not None:
            if version_of_facet is False:
                version_of_facet = fv.cluster_version if fv.cluster_version is not None else ctx.store_version(fv.name)
            page, nxt = ctx.store.points.cluster_members(fv.name, mapped, limit=limit - len(items),
                                                  offset_cursor=offset, version=version_of_facet)
            for p in page:
                cid = str(p.get("conversation_id"))
                if cid in view.withheld:
                    continue
                items.append(MemberOut(conversation_id=cid, value=p.get("value"), timestamp=p.get("timestamp"),
                                       similarity=p.get("similarity"), outlier=p.get("outlier")))
            offset = nxt
        else:
            ids = [c for c in dict.fromkeys(leaf.conversation_ids) if c not in view.withheld]
            start = int(offset or 0)
            chunk = ids[start:start + limit - len(items)]
            for cid in chunk:
                value = view.values.get(cid, {}).get(fv.name)
                items.append(MemberOut(conversation_id=cid, value=value.value if value is not None else None))
            offset = start + len(chunk) if start + len(chunk) < len(ids) else None
        if offset is None:
            leaf_index += 1
    next_cursor = encode_cursor(view.version, node.id, leaf_index, offset) if leaf_index < len(leaves) else None
    return MembersOut(facet=fv.name, cluster_id=node.id, version=view.version, items=items, next_cursor=next_cursor)
