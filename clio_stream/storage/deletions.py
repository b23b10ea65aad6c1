"""User deletion requests in the state collection, and the deny tokens they carry.

The documents themselves (``clio_stream.privacy.requests.DeletionRequest``) belong to the deletion process; this
class only keeps them: created once per request id, overwritten with progress, listed by status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from qdrant_client import models

from clio_stream.storage.qdrant import QdrantConnection, match_filter, point_id

DELETION_KIND = "deletion"  # state-collection points holding user deletion requests (clio_stream.privacy.requests)


def deletion_point_id(request_id: str) -> str:
    """Deterministic id of a deletion request document."""
    return point_id(DELETION_KIND, request_id)


class DeletionRequests:
    """Deletion request documents by request id, with their status and deny token as filterable fields."""

    def __init__(self, conn: QdrantConnection) -> None:
        self.conn = conn

    def create(self, request_id: str, doc: Mapping[str, Any]) -> bool:
        """Store a deletion request unless one with this id exists; True if this call created it.

        A conditional upsert (like ``Locks.acquire``): an existing point never matches the
        filter, so a repeated request keeps the first one's document and status.
        """
        cond = models.Filter(must_not=[models.HasIdCondition(has_id=[deletion_point_id(request_id)])])
        self._put(request_id, doc, cond)
        return self.get(request_id) == dict(doc)

    def put(self, request_id: str, doc: Mapping[str, Any]) -> None:
        """Overwrite a deletion request (the process that carries it out records its progress)."""
        self._put(request_id, doc)

    def _put(self, request_id: str, doc: Mapping[str, Any], update_filter: models.Filter | None = None) -> None:
        payload = {"kind": DELETION_KIND, "key": request_id, "status": doc.get("status"), "token": doc.get("token"),
                   "doc_json": json.dumps(doc, separators=(",", ":")), "updated_at": time.time()}
        self.conn.upsert_state_point(deletion_point_id(request_id), payload, update_filter, "put deletion")

    def get(self, request_id: str) -> dict[str, Any] | None:
        """The deletion request ``request_id``, or None."""
        payload = self.conn.state_payload(deletion_point_id(request_id), "get deletion")
        raw = None if payload is None else payload.get("doc_json")
        return None if raw is None else json.loads(raw)

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every deletion request (with ``status``, only those), oldest first."""
        return sorted((json.loads(p["doc_json"]) for p in self._payloads(status, ["doc_json"])),
                      key=lambda d: float(d.get("requested_at") or 0.0))

    def deny_tokens(self) -> set[str]:
        """The deletion tokens of every request, pending or done: users whose data must not be written again."""
        return {str(p["token"]) for p in self._payloads(None, ["token"]) if p.get("token")}

    def _payloads(self, status: str | None, fields: list[str]) -> list[dict[str, Any]]:
        flt = match_filter(kind=DELETION_KIND, status=status)
        return list(self.conn.scroll_state(flt, fields, "list deletions"))
