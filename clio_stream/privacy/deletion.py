"""Delete one user's data everywhere clio-stream keeps it: Qdrant, published versions, batch outputs, caches.

Who does what, so that deletion works where the publish directory is mounted
read-only (the API in deploy/compose and deploy/k8s):

* the **request** (``privacy.requests.request_deletion``; the API's ``DELETE /v1/users/{id}`` and
  ``clio-stream delete-user``): stores a deletion request keyed by the user's
  deletion token (``privacy.denylist``), which puts the user on the
  deny-list at once, then deletes the user's facet and conversation points
  (``QdrantStore.delete_user``). It never touches the publish directory. A
  repeated request finds the same request (same id, same status).
* the **pass** (``process_deletions``), run by the process that owns the publish
  directory (the scheduler loop, the re-clustering CronJob, ``clio-stream up``,
  or the CLI when it can write there): under the clustering lock, so no
  re-clustering that scrolled the user's points can publish between the scrub
  and the request's close, it rewrites every retained version without the
  pending users, and once ``deletion_sweep_delay_s`` has passed since the
  request it deletes the user's points once more (a batch a worker wrote on a
  deny-list loaded before the request) and closes the request: status
  ``done``, the user hash dropped, the token kept for the deny-list.
* the **deny-list**: workers drop denied users' records before writing
  (consumers.worker), and a re-clustering run removes denied users from its
  result right before publishing (``remove_denied``), which covers a run that
  scrolled before the deletion.

Where a user's data lives (see the README's "Guarantees"):

* Qdrant: facet points and conversation points carry the keyed hash of the
  user id (``user_hash``); ``QdrantStore.delete_user`` removes both kinds.
* Published versions (``<publish_dir>/versions/<v>/``): ``result.json`` lists
  the user's conversations (ids, keyed user hash, facet values) and cluster
  membership; the static site under ``site/`` holds member lists and, when
  ``show_conversations`` was on, raw messages. Each version is rewritten without
  the user's conversations: members removed, sizes, distinct users and numeric
  statistics recomputed, and any cluster that falls under the privacy minimums
  withheld, then the site is rebuilt (``privacy.scrub``, ``PublishedVersions.scrub``).
  Cluster names and summaries were written
  from samples that may have included the user, so a re-clustering is
  requested as well (it renames from the remaining data).
* Batch output folders (``run_clio(output_dir=...)``): ``result.json`` and
  ``site/`` are scrubbed the same way; ``checkpoints/`` (stage caches whose
  contents derive from every input conversation) is removed entirely, since a
  cache is cheaper to recompute than to prove clean. Only the CLI does this
  (the folders are local to where it runs).

Not covered, by nature: Kafka topics are append-only logs; the user's raw
records stay in the conversation and dead-letter topics until retention removes
them (the embedded Tansu broker keeps nothing across a restart). The deny-list
keeps a redelivery or replay of them out of Qdrant and the published versions.

Versions are otherwise immutable; a deletion is the one rewrite, done file by
file with atomic renames (result.json, site swap, meta.json) and the ``current``
pointer is rewritten last so every reader reloads the scrubbed version.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clio_stream.domain.clusters import ClioResult
from clio_stream.privacy.requests import DeletionRequest, get_deletion, request_deletion, stored_conversation_ids
from clio_stream.privacy.scrub import DeletionReport, UserMatch, scrub_batch_dir, scrub_published, scrub_result
from clio_stream.privacy.users import keyed_user_hash
from clio_stream.storage.documents import CLUSTERING_LOCK, RECLUSTER_REQUEST, ReclusterRequest
from clio_stream.settings import ClioSettings
from clio_stream.storage.published import PublishedVersions

if TYPE_CHECKING:
    from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)


@dataclass
class DeletionPass:
    """What one pass of the publish directory's owner did (request ids and counts only)."""

    locked_out: bool = False
    scrubbed: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    report: DeletionReport = field(default_factory=DeletionReport)


def process_deletions(store: QdrantStore, settings: ClioSettings, publish_dir: Path, *,
                      owner: str | None = None) -> DeletionPass:
    """Carry out the pending deletion requests: scrub the published versions, sweep, close.

    Runs under the clustering lock (``storage.documents.CLUSTERING_LOCK``): a re-clustering that
    scrolled a user's points before the request either published before this
    pass (and is scrubbed by it) or publishes after it with the deny-list applied
    (``remove_denied``). When the lock is held elsewhere the pass does nothing and
    says so; the next one retries.
    """
    out = DeletionPass()
    now = time.time()
    pending = [DeletionRequest.model_validate(d) for d in store.deletions.list("pending")]
    if not any(r.scrubbed_at is None or r.due_at(settings) <= now for r in pending):
        return out  # nothing to do before a sweep is due: leave the lock to re-clustering
    owner = owner or f"deletion-{socket.gethostname()}-{os.getpid()}"
    lease = store.locks.lease(CLUSTERING_LOCK, owner, settings.recluster_lock_ttl_s)
    if lease is None:
        log.info("deletion pass deferred: %s holds the clustering lock", store.locks.owner(CLUSTERING_LOCK))
        out.locked_out = True
        return out
    try:
        _run_pass(store, settings, PublishedVersions.at(publish_dir), pending, now, out)
    finally:
        lease.release()
    return out


def _run_pass(store: QdrantStore, settings: ClioSettings, versions: PublishedVersions,
              pending: list[DeletionRequest], now: float, out: DeletionPass) -> None:
    due = {r.request_id for r in pending if r.due_at(settings) <= now}
    # Scrub for new requests, and again for those about to close (a version published since by a job that
    # does not apply the deny-list, e.g. the first clustering, is caught before the request says done).
    scrub = {r.request_id for r in pending if r.scrubbed_at is None or r.request_id in due}
    if scrub:
        match = UserMatch(settings.user_id_hash_key, frozenset(r.token for r in pending if r.request_id in scrub))
        scrub_published(versions, match, settings, out.report)
    had_data = False
    for r in pending:
        update: dict[str, Any] = {}
        if r.request_id in scrub:
            update.update(scrubbed_at=now, versions_scrubbed=sorted({*r.versions_scrubbed,
                                                                     *out.report.versions_scrubbed}))
            out.scrubbed.append(r.request_id)
        if r.request_id in due:
            swept = store.points.delete_user(r.user_hash) if r.user_hash else {}
            update.update(status="done", done_at=time.time(), user_hash=None,
                          facet_points=r.facet_points + int(swept.get(store.facets, 0)),
                          conversations=r.conversations + int(swept.get(store.conversations, 0)))
            out.finished.append(r.request_id)
            had_data = had_data or bool(update["facet_points"])
        if update:
            store.deletions.put(r.request_id, r.model_copy(update=update).model_dump())
    if out.report.versions_scrubbed or had_data:
        store.states.write(RECLUSTER_REQUEST, ReclusterRequest(
            requested_at=time.time(), requested_by="deletion",
            reason="a user's data was deleted; rename clusters without it"))
        out.report.recluster_requested = True
    log.info("deletion pass: %d request(s) scrubbed from %d version(s) (%d conversations removed, %d clusters "
             "withheld), %d closed", len(out.scrubbed), len(out.report.versions_scrubbed),
             out.report.conversations_removed_from_versions, out.report.clusters_newly_withheld, len(out.finished))


def remove_denied(result: ClioResult, store: QdrantStore, settings: ClioSettings) -> int:
    """Take every denied user out of ``result`` before it is published; how many conversations went.

    Read fresh (not cached): the re-clustering job calls it right before publishing,
    after clustering that may have taken minutes since its scroll.
    """
    tokens = frozenset(store.deletions.deny_tokens())
    if not tokens:
        return 0
    removed, withheld = scrub_result(result, UserMatch(settings.user_id_hash_key, tokens),
                                     min_conversations=settings.min_cluster_conversations,
                                     min_users=settings.min_cluster_users)
    if removed:
        log.info("removed %d conversation(s) of deleted users before publishing (%d cluster(s) withheld)",
                 removed, withheld)
    return removed


# --------------------------------------------------------------------------- the CLI's deletion


def delete_user(
    user_id: str,
    settings: ClioSettings,
    *,
    store: QdrantStore | None = None,
    publish_dir: Path | None = None,
    batch_dirs: Sequence[Path] = (),
    wait: bool = True,
    requested_by: str = "cli",
) -> DeletionReport:
    """Delete ``user_id``'s data from Qdrant, every published version and the given batch output folders.

    With a store: ``request_deletion``, then, when this process can write the
    publish directory, the pass itself (waiting for the sweep delay when ``wait``;
    otherwise, or when it cannot write there, the scheduler finishes the request).
    ``store`` None (a batch-only installation): the published versions are
    scrubbed directly. Returns counts only.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("a user id is required")
    versions = (PublishedVersions.at(publish_dir) if publish_dir is not None
                else PublishedVersions.from_settings(settings))
    publish_dir = versions.root
    key = settings.user_id_hash_key
    report = DeletionReport()
    if store is None:
        match = UserMatch.for_user(user_id, key)
        scrub_published(versions, match, settings, report)
    else:
        conv_ids = stored_conversation_ids(store, keyed_user_hash(user_id, key))
        match = UserMatch.for_user(user_id, key, conv_ids)
        request = request_deletion(user_id, settings, store, requested_by=requested_by)
        if _writable(publish_dir):
            request = _carry_out(request, store, settings, publish_dir, report, wait=wait)
        else:
            # Not here (another host's volume) or mounted read-only: closing the request from here would
            # skip the versions that are really published, so the directory's owner finishes it.
            log.info("the publish directory is missing or read-only here: the scheduler finishes the request")
        report.request_id, report.status = request.request_id, request.status
        report.facet_points, report.conversations = request.facet_points, request.conversations
    for out_dir in batch_dirs:
        scrub_batch_dir(Path(out_dir), match, settings, report)
    log.info("deleted a user's data: %d facet points, %d conversation points, %d conversations in %d version(s), "
             "%d batch folder(s), %d checkpoint files; request %s", report.facet_points, report.conversations,
             report.conversations_removed_from_versions, len(report.versions_scrubbed),
             len(report.batch_dirs_scrubbed), report.checkpoint_files_removed, report.status)
    return report


def _writable(publish_dir: Path) -> bool:
    """Whether this process holds the publish directory and may rewrite it (``access`` sees a read-only mount)."""
    return publish_dir.is_dir() and os.access(publish_dir, os.W_OK)


def _carry_out(request: DeletionRequest, store: QdrantStore, settings: ClioSettings, publish_dir: Path,
               report: DeletionReport, *, wait: bool) -> DeletionRequest:
    """Run passes until the request is done (or, without ``wait``, once); merge what they scrubbed."""
    deadline = request.due_at(settings) + settings.recluster_lock_ttl_s
    while True:
        done = process_deletions(store, settings, publish_dir)
        report.versions_scrubbed = sorted({*report.versions_scrubbed, *done.report.versions_scrubbed})
        report.conversations_removed_from_versions += done.report.conversations_removed_from_versions
        report.clusters_newly_withheld += done.report.clusters_newly_withheld
        report.recluster_requested = report.recluster_requested or done.report.recluster_requested
        request = get_deletion(store, request.request_id) or request
        if request.status == "done" or not wait or time.time() > deadline:
            return request
        time.sleep(max(0.2, min(5.0, request.due_at(settings) - time.time())))
