"""Reports on published versions: export of the visible tree (CSV or Parquet), the difference between two
retained versions, and the alerts fired so far.

Export follows the tree's rules (visible clusters, filters with the privacy minimums); membership rows
(``members=true``) are conversation-level data, for analysts, and leave out conversations withheld anywhere.
"""

from __future__ import annotations

import csv
import io
import threading
from collections import OrderedDict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.auth import Role
from api.deps import ApiContext, Ctx, View, Viewer
from api.routes_clusters import FILTERS_DOC, _facet, filtered
from api.views import FacetView, VersionView, summary
from clio_stream.storage.documents import ALERT_LOG
from clio_stream.storage.published import PublishedVersion, check_version
from clio_stream.views.diff import diff_results

router = APIRouter(prefix="/v1", tags=["reports"])

_MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


def _node_rows(ctx: ApiContext, view: VersionView, fv: FacetView, shown: dict[str, Any] | None) -> list[dict[str, Any]]:
    numeric = [str(f["name"]) for f in view.facets if f.get("numeric")]
    index = ctx.current_slices() if shown is not None else None
    out = []
    stack = [fv.hierarchy.nodes[r] for r in fv.visible_roots][::-1]
    while stack:
        node = stack.pop()
        if shown is not None and node.id not in shown:
            continue
        kids = [c for c in fv.visible_children(node) if shown is None or c.id in shown]
        s = summary(fv, node) if index is None else index.summary(fv, node, shown[node.id], len(kids))  # type: ignore[index]
        trend = s.get("trend") or {}
        row = {"facet": fv.name, "id": node.id, "parent_id": node.parent_id, "level": node.level, "name": s["name"],
               "summary": s["summary"], "size": s["size"], "distinct_users": s["distinct_users"],
               "other_count": s["other_count"], "growth": trend.get("growth"), "emerging": bool(trend.get("emerging")),
               "path": " / ".join(p.name for p in fv.path(node))}
        for name in numeric:
            row[f"mean_{name}"] = (s["numeric"].get(name) or {}).get("mean")
        out.append(row)
        stack.extend(reversed(kids))
    return out


def _member_rows(ctx: ApiContext, view: VersionView, fv: FacetView, shown: dict[str, Any] | None) -> list[dict[str, Any]]:
    index = ctx.current_slices()
    out = []
    for nid in sorted(fv.visible):
        node = fv.hierarchy.nodes[nid]
        if node.children or (shown is not None and nid not in shown):
            continue
        rows = index.node_rows[fv.name][nid] if shown is None else shown[nid]  # type: ignore[union-attr]
        path = " / ".join([p.name for p in fv.path(node)] + [node.name])
        for r in sorted(int(x) for x in rows):
            cid = index.table.ids[r]  # type: ignore[union-attr]
            value = view.values.get(cid, {}).get(fv.name)
            out.append({"facet": fv.name, "conversation_id": cid, "cluster_id": nid, "cluster_name": node.name,
                        "path": path, "value": None if value is None else value.value})
    return out


def _encode(rows: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        return buf.getvalue()
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return text.getvalue().encode("utf-8")


@router.get("/facets/{facet}/export", response_class=Response,
            summary="The visible tree of a facet as CSV or Parquet (analysts: with membership)",
            description="One row per visible cluster; `members=true` (analyst) gives one row per conversation of "
            "every visible base cluster instead. " + FILTERS_DOC,
            responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
async def export(principal: Viewer, view: View, ctx: Ctx, request: Request, facet: str,
                 format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
                 members: bool = False) -> Response:
    fv = _facet(view, facet)
    if members and not principal.allows(Role.analyst):
        raise HTTPException(403, "membership is conversation-level data: this needs the analyst role")

    def build() -> bytes:
        found = filtered(request, ctx, view, fv, principal)
        shown = None if found is None else found[0]
        rows = _member_rows(ctx, view, fv, shown) if members else _node_rows(ctx, view, fv, shown)
        return _encode(rows, format)

    body = await run_in_threadpool(build)
    name = f"{facet}-{view.version}{'-members' if members else ''}.{format}".replace("/", "_")
    return Response(body, media_type=_MEDIA[format], headers={"Content-Disposition": f'attachment; filename="{name}"'})


class _Loaded:
    """A few retained versions loaded for diffs (results are immutable; a scrub changes the identity)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._held: OrderedDict[tuple[Any, ...], PublishedVersion] = OrderedDict()

    def get(self, ctx: ApiContext, version: str) -> PublishedVersion:
        try:
            check_version(version)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        loaded = ctx.versions.load(version)
        if loaded is None:
            raise HTTPException(404, f"version {version} is not retained")
        with self._lock:
            hit = self._held.get(loaded.identity)
            if hit is not None:
                return hit
            self._held[loaded.identity] = loaded
            while len(self._held) > self.size:
                self._held.popitem(last=False)
        return loaded


_loaded = _Loaded()


@router.get("/versions", summary="The published versions still retained, oldest first")
def versions(principal: Viewer, ctx: Ctx) -> dict[str, Any]:
    return {"current": ctx.versions.read_pointer(), "versions": ctx.versions.list_versions()}


@router.get("/versions/{a}/diff/{b}", summary="What changed from version a to version b",
            description="Clusters new, vanished, merged (lineage) and split (member overlap), and size changes; "
            "each version as it shows itself (withheld clusters do not exist in it).")
async def diff(principal: Viewer, ctx: Ctx, a: str, b: str) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        old, new = _loaded.get(ctx, a), _loaded.get(ctx, b)
        lineage: dict[str, str] = {}
        for name in ctx.versions.list_versions():
            lineage.update(ctx.versions.read_lineage(name))
        return diff_results(old.result, new.result, lineage, old_version=a, new_version=b)

    return await run_in_threadpool(run)


@router.get("/alerts", summary="Alerts fired at publish time, newest first")
def alerts(principal: Viewer, ctx: Ctx, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    doc = ctx.store.states.read(ALERT_LOG)
    items = [] if doc is None else [a.model_dump(exclude={"delivered_to"}) for a in reversed(doc.alerts)][:limit]
    return {"rules": [r.model_dump() for r in ctx.settings.alert_rules], "webhooks": len(ctx.settings.alert_webhooks),
            "evaluated_version": None if doc is None else doc.version, "alerts": items}
