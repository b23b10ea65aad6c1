"""Admin actions: ask for a re-clustering, request a user's deletion and follow it."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path

from api.deps import Admin, Ctx, Store
from api.schemas import DeletionOut, ErrorOut, ReclusterIn, ReclusterOut
from clio_stream.privacy.requests import get_deletion, request_deletion
from clio_stream.storage.documents import RECLUSTER_REQUEST, ReclusterRequest

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["admin"])


@router.post("/recluster", status_code=202, response_model=ReclusterOut,
             responses={503: {"model": ErrorOut}}, summary="Ask the scheduler for a re-clustering soon (admin)")
def recluster(principal: Admin, store: Store, body: Annotated[ReclusterIn | None, Body()] = None) -> ReclusterOut:
    """Writes the state document ``RECLUSTER_REQUEST``; the re-clustering scheduler picks it up.

    Idempotent in effect: a second request before the run only moves the timestamp.
    """
    now = time.time()
    request = ReclusterRequest(requested_at=now, requested_by=principal.key_id, reason=body.reason if body else None)
    store.states.write(RECLUSTER_REQUEST, request)
    log.info("re-clustering requested by %s", principal.key_id)
    return ReclusterOut(requested_at=now, requested_by=principal.key_id)


@router.delete("/users/{user_id:path}", status_code=202, response_model=DeletionOut,
               responses={503: {"model": ErrorOut}}, summary="Delete one user's data (admin)")
def delete_user(
    principal: Admin,
    ctx: Ctx,
    store: Store,
    user_id: Annotated[str, Path(min_length=1, max_length=256, description="The user id as sent with conversations.")],
) -> DeletionOut:
    """Puts the user on the deny-list, deletes their facet and conversation points at once, and records a
    deletion request that the process owning the publish directory (the scheduler) carries out: it scrubs
    every published version and closes the request (clio_stream.privacy.deletion). Never writes the publish
    directory itself, which deployments mount read-only here.

    202 with the request; a repeat answers the same request (same id). The answer has the same shape
    whether or not anything matched, so it cannot be used to probe quietly.
    """
    request = request_deletion(user_id, ctx.settings, store, requested_by=principal.key_id)
    log.info("deletion %s requested by %s: %s", request.request_id, principal.key_id, request.status)
    return DeletionOut(**request.public())


@router.get("/deletions/{request_id}", response_model=DeletionOut, responses={404: {"model": ErrorOut}},
            summary="Status of a user deletion request (admin)")
def deletion_status(
    principal: Admin,
    store: Store,
    request_id: Annotated[str, Path(min_length=1, max_length=64)],
) -> DeletionOut:
    """``pending`` until the scheduler has scrubbed the published versions and swept the store, then ``done``."""
    request = get_deletion(store, request_id)
    if request is None:
        raise HTTPException(404, "no such deletion request")
    return DeletionOut(**request.public())
