"""Single conversations: read one (analyst) and ingest (admin) through Kafka.

Ingest validates a JSON body with exactly the rules the consumers apply to a
Kafka record (``clio_stream.streaming.wire_format.decode_message`` on its msgpack encoding),
so anything accepted here is also accepted downstream; it then produces the
record with key = conversation id and answers 202 only after Kafka acked it.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any
from urllib.parse import quote

import msgpack
from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import Admin, Analyst, ApiContext, Ctx, Store
from api.schemas import (
    AcceptedOut,
    BatchAcceptedOut,
    BatchErrorOut,
    BatchIn,
    ConversationIn,
    ConversationOut,
    ErrorOut,
)
from api.views import VersionView
from clio_stream.streaming.wire_format import InvalidMessage, decode_message
from clio_stream.storage.records import label_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["conversations"])

ConversationId = Annotated[str, Path(min_length=1, max_length=256, description="The conversation id.")]


def _body_schema(model: type) -> dict[str, Any]:
    """Document a JSON body the route reads itself (to validate it with the Kafka rules, not pydantic's)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


@router.get("/conversations/{conversation_id:path}", response_model=ConversationOut,
            responses={404: {"model": ErrorOut}}, summary="One conversation: facets, clusters, status (analyst)")
async def get_conversation(principal: Analyst, ctx: Ctx, store: Store,
                           conversation_id: ConversationId) -> ConversationOut:
    view = ctx.current_view_nowait() or await run_in_threadpool(ctx.current_view)
    doc = await run_in_threadpool(_lookup, store, view, conversation_id)
    if doc is None:
        if conversation_id in ctx.pending:
            return ConversationOut(id=conversation_id, status="pending")
        raise HTTPException(404, "conversation not found")
    ctx.pending.discard(conversation_id)
    return _conversation_out(ctx, view, conversation_id, doc)


def _lookup(store: Any, view: VersionView | None, cid: str) -> dict[str, Any] | None:
    """The stored conversation in one Qdrant call when its status point's copy of the facets is enough.

    Enough when every labelled facet's leaf in the served version is known: from the version itself (its
    members, in memory) or from the copied label. A point labelled only under another version (stored
    after the version's clustering read the store, then re-labelled on the facet point) needs the facet
    points themselves: a second call.
    """
    doc, copied = store.points.lookup_conversation(cid)
    if doc is None or not copied or view is None:
        return doc
    for name, point in (doc.get("facets") or {}).items():
        fv = view.facet_views.get(name)
        if fv is not None and point.get("cluster_id") is not None and _leaf_of(fv, point, cid) is None:
            return store.points.get_conversation(cid)
    return doc


def _leaf_of(fv: Any, point: dict[str, Any], cid: str) -> str | None:
    """The leaf of the served version a stored point belongs to: a member of that version's clustering, or
    its label under that version, not the latest one (a re-clustering writes the next version's labels
    before the API switches to it)."""
    member = fv.leaf_of_member.get(cid)
    if member is not None:
        return member
    if fv.cluster_version is None:
        return fv.leaf_for(point.get("cluster_id"), point.get("cluster_version"))
    return fv.leaf_for(label_of(point, fv.cluster_version), fv.cluster_version)


def _conversation_out(ctx: ApiContext, view: VersionView | None, cid: str, doc: dict[str, Any]) -> ConversationOut:
    facets_doc: dict[str, dict[str, Any]] = doc.get("facets") or {}
    status = doc.get("status") or ("processed" if facets_doc else "pending")
    withheld_in = set(view.withheld.get(cid, set())) if view is not None else set()
    answers: dict[str, dict[str, Any]] = {}
    for name, point in facets_doc.items():
        answer: dict[str, Any] = {"value": point.get("value"), "numeric": point.get("numeric"),
                                  "cluster_version": point.get("cluster_version")}
        fv = view.facet_views.get(name) if view is not None else None
        if fv is not None:
            leaf_id = _leaf_of(fv, point, cid)
            if leaf_id is not None:
                if fv.cluster_version is not None:
                    answer["cluster_version"] = fv.cluster_version  # the label shown is the served version's
                node = fv.node(leaf_id)
                if node is None:
                    withheld_in.add(name)  # assigned online to a withheld cluster
                else:
                    path = fv.path(node) + [node]
                    answer.update(cluster_id=node.id, cluster_name=node.name,
                                  path=[{"id": n.id, "name": n.name} for n in path])
        answers[name] = answer
    if withheld_in:  # withheld in one facet is withheld as a whole, as on the site: no facet, time or message
        return ConversationOut(id=cid, status="pending" if status == "pending" else "processed",
                               version=view.version if view is not None else None, withheld=True,
                               facets={name: {"withheld": True} for name in answers})
    messages = None
    raw = doc.get("raw")
    if ctx.settings.show_conversations and isinstance(raw, list):
        messages = [{"role": str(m.get("role")), "content": str(m.get("content"))} for m in raw if isinstance(m, dict)]
    return ConversationOut(
        id=cid,
        status="pending" if status == "pending" else "processed",
        timestamp=doc.get("timestamp"),
        version=view.version if view is not None else None,
        facets=answers,
        messages=messages,
    )


class _Rejected(Exception):
    def __init__(self, reason: str, code: str, cid: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.code, self.cid = reason, code, cid


def validate_conversation(obj: Any, max_bytes: int) -> tuple[str, bytes]:
    """(id, msgpack value) of a JSON-decoded conversation, or ``_Rejected`` with the consumers' reason."""
    if not isinstance(obj, dict):
        raise _Rejected(f"a conversation must be a JSON object, not {type(obj).__name__}", "not_a_map")
    cid = obj["id"][:256] if isinstance(obj.get("id"), str) else None
    try:
        packed = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        raise _Rejected("a number is out of range or the value is nested too deeply", "not_encodable", cid) from None
    try:
        conv = decode_message(None, packed, max_bytes=max_bytes)
    except InvalidMessage as exc:
        raise _Rejected(exc.reason, exc.code, cid) from None
    return conv.id, packed


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise _Rejected("JSON nested too deeply", "not_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Rejected(f"body is not JSON: {str(exc)[:120]}", "not_json") from None


def _produce(ctx: ApiContext, records: list[tuple[str, bytes]]) -> None:
    """Send and wait for every ack; any failure is a 503 (the client may retry: ids make it idempotent)."""
    try:
        producer = ctx.get_producer()
        futures = [producer.send(ctx.settings.topic, key=cid, value=value) for cid, value in records]
        producer.flush(timeout=ctx.settings.api_produce_timeout_s)
        for future in futures:
            future.get(timeout=ctx.settings.api_produce_timeout_s)
    except Exception as exc:  # noqa: BLE001 - kafka-python raises many types; all mean "not durable"
        log.warning("producing %d conversation(s) failed: %s", len(records), type(exc).__name__)
        raise HTTPException(503, "the message broker did not accept the conversation; retry later",
                            headers={"Retry-After": "5"}) from None


@router.post("/conversations", status_code=202, response_model=AcceptedOut,
             responses={422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
             openapi_extra=_body_schema(ConversationIn), summary="Ingest one conversation (admin)")
async def post_conversation(principal: Admin, ctx: Ctx, request: Request) -> Any:
    try:
        cid, packed = validate_conversation(_parse_json(await request.body()), ctx.settings.max_message_bytes)
    except _Rejected as exc:
        ctx.metrics.rejected.labels(exc.code).inc()
        return JSONResponse({"detail": exc.reason, "code": exc.code}, status_code=422)
    await run_in_threadpool(_produce, ctx, [(cid, packed)])
    ctx.pending.add([cid])
    ctx.metrics.count_accepted(1)
    return JSONResponse({"id": cid, "status": "accepted"}, status_code=202,
                        headers={"Location": f"/v1/conversations/{quote(cid, safe='')}"})


@router.post("/conversations:batch", status_code=202, response_model=BatchAcceptedOut,
             responses={422: {"model": BatchErrorOut}, 503: {"model": ErrorOut}},
             openapi_extra=_body_schema(BatchIn),
             summary="Ingest many conversations (admin); all or nothing")
async def post_batch(principal: Admin, ctx: Ctx, request: Request) -> Any:
    try:
        body = _parse_json(await request.body())
    except _Rejected as exc:
        ctx.metrics.rejected.labels(exc.code).inc()
        return JSONResponse({"detail": exc.reason, "errors": []}, status_code=422)
    items = body.get("conversations") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        return JSONResponse({"detail": "body must be {\"conversations\": [at least one conversation]}", "errors": []},
                            status_code=422)
    if len(items) > ctx.settings.api_max_batch:
        return JSONResponse({"detail": f"{len(items)} conversations, over the limit of {ctx.settings.api_max_batch}",
                             "errors": []}, status_code=422)
    records: list[tuple[str, bytes]] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            records.append(validate_conversation(item, ctx.settings.max_message_bytes))
        except _Rejected as exc:
            ctx.metrics.rejected.labels(exc.code).inc()
            errors.append({"index": index, "id": exc.cid, "code": exc.code, "reason": exc.reason})
    if errors:
        return JSONResponse({"detail": f"{len(errors)} of {len(items)} conversations are invalid; none was accepted",
                             "errors": errors[:100]}, status_code=422)
    await run_in_threadpool(_produce, ctx, records)
    ids = [cid for cid, _ in records]
    ctx.pending.add(ids)
    ctx.metrics.count_accepted(len(ids))
    return JSONResponse({"ids": ids, "accepted": len(ids), "status": "accepted"}, status_code=202)
