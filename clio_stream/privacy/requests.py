"""A user's deletion request: denies the user at once and deletes their stored points; never touches the publish dir.

The API's ``DELETE /v1/users/{id}`` and ``clio-stream delete-user`` call ``request_deletion``. It stores a
request keyed by the user's deletion token (``privacy.denylist``), which puts the user on the deny-list, then
deletes the user's facet and conversation points (``QdrantStore.delete_user``). A repeated request finds the
same request (same id, same status). The process that owns the publish directory finishes it
(``privacy.deletion.process_deletions``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field
from qdrant_client import models

from clio_stream.privacy.denylist import deletion_token
from clio_stream.privacy.users import keyed_user_hash
from clio_stream.settings import ClioSettings
from clio_stream.storage.deletions import DELETION_KIND
from clio_stream.storage.qdrant import NAMESPACE

if TYPE_CHECKING:
    from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)


class DeletionRequest(BaseModel):
    """One user's deletion, as stored in Qdrant (``QdrantStore.create_deletion``); counts, never the user's data.

    ``user_hash`` is kept only while the request is pending (the final sweep deletes by it); the ``token``
    stays for good, as the user's deny-list entry.
    """

    request_id: str
    token: str
    status: Literal["pending", "done"] = "pending"
    requested_at: float
    requested_by: str
    user_hash: str | None = None
    facet_points: int = 0  # deleted by the request(s) and the final sweep
    conversations: int = 0
    scrubbed_at: float | None = None
    versions_scrubbed: list[str] = Field(default_factory=list)
    done_at: float | None = None

    def public(self) -> dict[str, Any]:
        """What the API and the CLI show: no token, no hash."""
        return self.model_dump(exclude={"token", "user_hash"})

    def due_at(self, settings: ClioSettings) -> float:
        """When the pass may close it (see ``deletion_sweep_delay_s``)."""
        return self.requested_at + settings.deletion_sweep_delay_s


def deletion_request_id(token: str) -> str:
    """The request id of a user's deletion: the same for every repeat (idempotent requests)."""
    return str(uuid.uuid5(NAMESPACE, f"{DELETION_KIND}:{token}"))


def request_deletion(user_id: str, settings: ClioSettings, store: QdrantStore, *,
                     requested_by: str) -> DeletionRequest:
    """Deny the user, delete their stored points, and return the (new or existing) request.

    Writes nothing outside Qdrant, so it works in a process that cannot write the
    publish directory. The request goes first: from then on workers drop the
    user's records (within ``deletion_denylist_refresh_s``) while the points go.
    A repeat of a finished request that found nothing new returns it unchanged;
    one that found points again (written back before the deny-list reached every
    worker) reopens it for another sweep.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("a user id is required")
    key = settings.user_id_hash_key
    user_hash = keyed_user_hash(user_id, key)
    token = deletion_token(user_hash, key)
    rid = deletion_request_id(token)
    fresh = DeletionRequest(request_id=rid, token=token, requested_at=time.time(), requested_by=requested_by,
                            user_hash=user_hash)
    created = store.deletions.create(rid, fresh.model_dump())
    removed = store.points.delete_user(user_hash)
    points, convs = int(removed.get(store.facets, 0)), int(removed.get(store.conversations, 0))
    found = store.deletions.get(rid)
    request = DeletionRequest.model_validate(found) if found is not None else fresh
    if request.status == "done" and not (points or convs):
        log.info("deletion %s requested again: already done", rid)
        return request
    request = request.model_copy(update={"status": "pending", "user_hash": user_hash, "done_at": None,
                                         "facet_points": request.facet_points + points,
                                         "conversations": request.conversations + convs})
    store.deletions.put(rid, request.model_dump())
    log.info("deletion %s %s: %d facet points, %d conversation points deleted; published versions are scrubbed "
             "by the process that owns the publish directory", rid, "requested" if created else "repeated",
             points, convs)
    return request


def get_deletion(store: QdrantStore, request_id: str) -> DeletionRequest | None:
    """A stored request by id, or None."""
    doc = store.deletions.get(request_id)
    return None if doc is None else DeletionRequest.model_validate(doc)


def stored_conversation_ids(store: QdrantStore, user_hash: str) -> set[str]:
    """Ids of the user's conversations in Qdrant (conversation and facet points), read before deleting."""
    flt = models.Filter(must=[models.FieldCondition(key="user_hash", match=models.MatchValue(value=user_hash))])
    found: set[str] = set()
    for collection in (store.conversations, store.facets):
        offset: Any = None
        while True:
            try:
                records, offset = store.client.scroll(collection, scroll_filter=flt, limit=512, offset=offset,
                                                      with_payload=["conversation_id"], with_vectors=False)
            except Exception as exc:  # noqa: BLE001 - a missing collection simply holds nothing
                if "doesn't exist" in str(exc) or "Not found" in str(exc):
                    break
                raise
            found.update(str(cid) for r in records if (cid := (r.payload or {}).get("conversation_id")))
            if offset is None:
                break
    return found
