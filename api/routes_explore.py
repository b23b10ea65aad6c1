"""Exploring the current version: a cluster's breakdown by every other facet and metadata key, the cluster
map, and "where would this go" search. All of it viewer data (aggregates); filters apply as on the tree.

Search embeds the text and compares it with the clustering's centroids in the store; the text is neither
stored nor logged (the access log is off and errors never echo it).
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.auth import Role
from api.deps import ApiContext, Ctx, View, Viewer
from api.routes_clusters import FILTERS_DOC, _cluster, _facet, filtered
from api.slicing import metadata_keys_for
from api.views import FacetView, VersionView
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.views.breakdowns import breakdown

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["explore"])

MAX_QUERY_CHARS = 2000


@router.get("/facets/{facet}/clusters/{cluster_id}/breakdown",
            summary="How a cluster's conversations spread over every other facet and declared metadata key",
            description="Every bucket meets the privacy minimums; smaller ones are one `other` count. " + FILTERS_DOC)
def cluster_breakdown(principal: Viewer, view: View, ctx: Ctx, request: Request, facet: str,
                      cluster_id: str) -> dict[str, Any]:
    fv, node, _ = _cluster(view, facet, cluster_id)
    index = ctx.current_slices()
    if index is None:
        raise HTTPException(404, "no clustering version has been published yet")
    found = filtered(request, ctx, view, fv, principal)
    rows = index.node_rows[facet][node.id] if found is None else found[0].get(node.id)
    if rows is None:
        raise HTTPException(404, "cluster not found")
    dims = breakdown(index, rows, facet, view.facets, view.facet_views, metadata_keys_for(ctx.settings, principal))
    return {"facet": facet, "cluster_id": node.id, "name": node.name, "version": view.version,
            "filter": None if found is None else found[1]["filter"], "size": int(len(rows)), "dimensions": dims}


@router.get("/facets/{facet}/map", summary="The cluster map of a facet: visible clusters placed in 2-D at publish time",
            description="Positions in [0, 1]; under a filter, only the clusters it shows, with their slice sizes. "
            + FILTERS_DOC)
def cluster_map(principal: Viewer, view: View, ctx: Ctx, request: Request, facet: str,
                points: Annotated[bool, Query(description="Also a sample of conversations placed on the map "
                                              "(conversation-level: analyst).")] = False) -> dict[str, Any]:
    from clio_stream.site.views_data import map_nodes

    if points and not principal.allows(Role.analyst):
        raise HTTPException(403, "the map's conversations are conversation-level data: this needs the analyst role")
    fv = _facet(view, facet)
    published = ctx.versions.load_current()
    if published is None:
        raise HTTPException(404, "no clustering version has been published yet")
    result = published.result
    layout = result.maps.get(facet)
    if layout is None:
        raise HTTPException(404, f"version {view.version} has no map of {facet!r}")
    visibility = _visibility(view)
    nodes = map_nodes(result, visibility, facet)
    found = filtered(request, ctx, view, fv, principal)
    if found is not None:
        shown, index = found[0], ctx.current_slices()
        nodes = [{**n, "size": int(len(shown[n["id"]])),
                  "distinct_users": int(np.unique(index.table.users[shown[n["id"]]]).size)}
                 for n in nodes if n["id"] in shown]
    out = {"facet": facet, "version": view.version, "method": layout.method,
           "filter": None if found is None else found[1]["filter"], "nodes": nodes}
    if points:
        index = ctx.current_slices()
        allowed = None if found is None else {int(r) for rows in found[0].values() for r in rows}
        table = index.table
        out["points"] = [{"conversation_id": cid, "x": x, "y": y} for cid, x, y in layout.points
                         if cid in table.row_of and not table.withheld[table.row_of[cid]]
                         and (allowed is None or table.row_of[cid] in allowed)]
    return out


def _visibility(view: VersionView) -> Any:
    from clio_stream.privacy.visibility import ResultVisibility

    return ResultVisibility(facets=dict(view.facet_views), withheld=view.withheld)


class _Centroids:
    """Unit centroids of each facet's clustering version, read from the store once per (facet, version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, int | None], np.ndarray | None] = {}

    def get(self, ctx: ApiContext, fv: FacetView) -> np.ndarray | None:
        version = fv.cluster_version if fv.cluster_version is not None else ctx.store_version(fv.name)
        key = (fv.name, version)
        with self._lock:
            if key in self._held:
                return self._held[key]
        doc = ctx.store.versions.get_centroids(fv.name, version)
        value = None if doc is None else OnlineKMeans.from_state(doc).unit_centroids
        with self._lock:
            if len(self._held) > 32:
                self._held.clear()
            self._held[key] = value
        return value


_centroids = _Centroids()


def _nearest(ctx: ApiContext, fv: FacetView, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
    centroids = _centroids.get(ctx, fv)
    if centroids is None or centroids.shape[1] != vector.shape[0]:
        return []
    sims = centroids @ vector
    out = []
    for c in np.argsort(-sims):
        nid = fv.node_of_cluster.get(int(c))
        node = fv.node(nid) if nid is not None else None
        if node is None:
            continue  # a withheld (or unmapped) cluster: never named, never ranked
        public = fv.public[node.id]
        out.append({"id": node.id, "name": public.name, "summary": public.summary, "size": public.size,
                    "similarity": round(float(sims[c]), 4),
                    "path": [{"id": p.id, "name": p.name} for p in fv.path(node)]})
        if len(out) >= k:
            break
    return out


@router.get("/search", summary='Where would this text go: the nearest visible clusters of every facet',
            description="The text is embedded as a facet value would be and compared with the current "
            "clustering's centroids; it is not stored or logged.")
async def search(principal: Viewer, view: View, ctx: Ctx,
                 q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS)],
                 k: Annotated[int, Query(ge=1, le=20)] = 5) -> dict[str, Any]:
    text = q.strip()
    if not text:
        raise HTTPException(400, "q is empty")

    def run() -> dict[str, Any]:
        vector = np.asarray(ctx.get_embedder().encode([text]), dtype=np.float32)[0]
        vector = vector / (np.linalg.norm(vector) or 1.0)
        facets = {name: _nearest(ctx, fv, vector, k) for name, fv in view.facet_views.items()}
        return {"version": view.version, "facets": facets}

    return await run_in_threadpool(run)
