"""Admin actions: ask for a re-clustering, delete a user's data."""

from __future__ import annotations

import logging
import time
from typing import Annotated

from fastapi import APIRouter, Body, Path

from api.deps import Admin, Ctx, Store
from api.schemas import DeletedOut, ErrorOut, ReclusterIn, ReclusterOut
from clio_stream.deletion import delete_user as delete_user_everywhere

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["admin"])

RECLUSTER_REQUEST_KEY = "recluster_request"


@router.post("/recluster", status_code=202, response_model=ReclusterOut,
             responses={503: {"model": ErrorOut}}, summary="Ask the scheduler for a re-clustering soon (admin)")
def recluster(principal: Admin, store: Store, body: Annotated[ReclusterIn | None, Body()] = None) -> ReclusterOut:
    """Writes the state document ``recluster_request``; the re-clustering scheduler picks it up.

    Idempotent in effect: a second request before the run only moves the timestamp.
    """
    now = time.time()
    doc = {"requested_at": now, "requested_by": principal.key_id, "reason": body.reason if body else None}
    store.put_state(RECLUSTER_REQUEST_KEY, doc)
    log.info("re-clustering requested by %s", principal.key_id)
    return ReclusterOut(requested_at=now, requested_by=principal.key_id)


@router.delete("/users/{user_id:path}", response_model=DeletedOut, responses={503: {"model": ErrorOut}},
               summary="Delete every stored point of one user (admin)")
def delete_user(
    principal: Admin,
    ctx: Ctx,
    store: Store,
    user_id: Annotated[str, Path(min_length=1, max_length=256, description="The user id as sent with conversations.")],
) -> DeletedOut:
    """Deletes facet and conversation points by the keyed hash of ``user_id``, and the user's conversations
    from every published version (clio_stream.deletion), then asks for a re-clustering to rename clusters.

    Answers 200 with the counts even when nothing matched (so it cannot be used
    to probe quietly: an admin sees the same shape either way).
    """
    report = delete_user_everywhere(user_id, ctx.settings, store=store, publish_dir=ctx.publish_dir)
    log.info("user data deleted by %s: %d facet points, %d conversations, %d published version(s) scrubbed",
             principal.key_id, report.facet_points, report.conversations, len(report.versions_scrubbed))
    return DeletedOut(facet_points=report.facet_points, conversations=report.conversations)
