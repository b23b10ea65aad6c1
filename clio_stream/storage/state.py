"""State documents: small JSON documents in the state collection, plain or typed, last-writer-wins or fenced.

A document is kept as a JSON string (``doc_json``) so Qdrant's payload typing cannot alter it. Shared
documents are typed (:mod:`clio_stream.storage.documents`): ``write`` stores a model, ``read`` parses one
and logs and skips a document that does not fit (a reader treats it as absent, the next write repairs it).
Documents shared by clustering jobs are written fenced by the writer's version number (``put_fenced``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from qdrant_client import models

from clio_stream.storage.documents import Doc, DocKey, DocPrefix
from clio_stream.storage.qdrant import QdrantConnection, eq, is_empty, point_id

log = logging.getLogger(__name__)

STATE_KIND = "state"  # the ``kind`` of document points (locks and deletion requests share the collection)


def state_point_id(key: str) -> str:
    """Deterministic id of a state document."""
    return point_id("state", key)


def to_json(doc: Mapping[str, Any] | BaseModel) -> str:
    """A document as stored: compact JSON (a model dumped in JSON mode first)."""
    plain = doc.model_dump(mode="json") if isinstance(doc, BaseModel) else doc
    return json.dumps(plain, separators=(",", ":"))


class StateDocuments:
    """Get, put, list and delete documents of the state collection by key."""

    def __init__(self, conn: QdrantConnection) -> None:
        self.conn = conn

    # ------------------------------------------------------------------ untyped

    def get(self, key: str) -> dict[str, Any] | None:
        """The JSON document stored under ``key``, or None."""
        payload = self.conn.state_payload(state_point_id(key), "get state")
        raw = None if payload is None else payload.get("doc_json")
        return None if raw is None else json.loads(raw)

    def put(self, key: str, doc: Mapping[str, Any] | BaseModel) -> None:
        """Store ``doc`` under ``key`` (last writer wins; guard concurrent writers with a lock or a fence)."""
        self.conn.upsert_state_point(state_point_id(key), {"kind": STATE_KIND, "key": key, "doc_json": to_json(doc),
                                                           "updated_at": time.time()})

    def with_prefix(self, prefix: str, *, max_age_s: float | None = None) -> dict[str, dict[str, Any]]:
        """Every state document whose key starts with ``prefix`` (e.g. ``worker:``), by key.

        ``max_age_s`` drops documents not rewritten for that long (a worker that stopped).
        Qdrant has no prefix index for keys, so this scrolls the (small) state collection once.
        """
        now = time.time()
        out: dict[str, dict[str, Any]] = {}
        for p in self.conn.scroll_state(models.Filter(must=[eq("kind", STATE_KIND)]),
                                        ["key", "doc_json", "updated_at"], "list states"):
            key, raw, updated = p.get("key"), p.get("doc_json"), p.get("updated_at")
            if not (isinstance(key, str) and key.startswith(prefix) and isinstance(raw, str)):
                continue
            if max_age_s is not None and isinstance(updated, (int, float)) and now - updated > max_age_s:
                continue
            out[key] = json.loads(raw)
        return out

    def delete(self, key: str) -> None:
        """Remove the document under ``key`` (no error if absent)."""
        with self.conn.guard("delete state"):
            self.conn.client.delete(self.conn.state,
                                    points_selector=models.PointIdsList(points=[state_point_id(key)]), wait=True)

    # ------------------------------------------------------------------ typed

    def read(self, ref: DocKey[Doc]) -> Doc | None:
        """The document ``ref`` parsed with its model; None when absent or when it does not fit (logged)."""
        return parse(ref.model, ref.key, self.get(ref.key))

    def read_json(self, ref: DocKey[Doc]) -> dict[str, Any] | None:
        """``read`` as a JSON-safe dict, for code that consumes plain documents (validated all the same)."""
        doc = self.read(ref)
        return None if doc is None else doc.model_dump(mode="json")

    def write(self, ref: DocKey[Doc], doc: Doc) -> None:
        """Store the model ``doc`` under ``ref`` (last writer wins)."""
        self.put(ref.key, ref.model.model_validate(doc))

    def read_all(self, family: DocPrefix[Doc], *, max_age_s: float | None = None) -> dict[str, Doc]:
        """Every document of ``family`` that fits its model, by the name after the prefix (misfits logged)."""
        out: dict[str, Doc] = {}
        for key, raw in self.with_prefix(family.prefix, max_age_s=max_age_s).items():
            doc = parse(family.model, key, raw)
            if doc is not None:
                out[key[len(family.prefix):]] = doc
        return out

    # ------------------------------------------------------------------ fenced and conditional writes

    def put_fenced(self, key: str, doc: Mapping[str, Any] | BaseModel, *, fence: int) -> bool:
        """Store ``doc`` under ``key`` unless a write with a higher ``fence`` got there first; True if written.

        The fence is a clustering version number, reserved once under the clustering lock
        (``ClusteringVersions.reserve``), so it orders writers: a writer that lost its lease carries an older
        number and its late write is refused by Qdrant's conditional upsert (the check and the write are one
        operation on the document's point). A read-back of a fresh write id tells whether it applied.
        """
        write_id = uuid.uuid4().hex
        payload = {"kind": STATE_KIND, "key": key, "doc_json": to_json(doc), "fence": int(fence),
                   "write_id": write_id, "updated_at": time.time()}
        cond = models.Filter(should=[models.FieldCondition(key="fence", range=models.Range(lte=int(fence))),
                                     is_empty("fence")])
        return self.put_if(key, payload, cond, write_id)

    def put_if(self, key: str, payload: dict[str, Any], cond: models.Filter, write_id: str) -> bool:
        """Upsert the raw point ``payload`` of ``key`` if ``cond`` holds (or the point is absent); True if applied.

        ``payload`` carries ``write_id``, read back to tell whether this write is the one stored.
        """
        pid = state_point_id(key)
        self.conn.upsert_state_point(pid, payload, cond, "conditional put")
        with self.conn.guard("conditional put read-back"):
            found = self.conn.client.retrieve(self.conn.state, [pid], with_payload=["write_id"])
        return bool(found) and (found[0].payload or {}).get("write_id") == write_id


def parse(model: type[Doc], key: str, raw: dict[str, Any] | None) -> Doc | None:
    """``raw`` (the document under ``key``) as ``model``; None when absent or when it does not fit (logged)."""
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        log.error("state document %r is not a valid %s; ignoring it: %s", key, model.__name__,
                  str(exc).replace("\n", " ")[:300])
        return None
