"""Delete one user's data everywhere clio-stream keeps it: Qdrant, published versions, batch outputs, caches.

Who does what, so that deletion works where the publish directory is mounted
read-only (the API in deploy/compose and deploy/k8s):

* the **request** (``request_deletion``; the API's ``DELETE /v1/users/{id}`` and
  ``clio-stream delete-user``): stores a deletion request keyed by the user's
  deletion token (``clio_stream.denylist``), which puts the user on the
  deny-list at once, then deletes the user's facet and conversation points
  (``QdrantStore.points.delete_user``). It never touches the publish directory. A
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
  user id (``user_hash``); ``QdrantStore.points.delete_user`` removes both kinds.
* Published versions (``<publish_dir>/versions/<v>/``): ``result.json`` lists
  the user's conversations (ids, keyed user hash, facet values) and cluster
  membership; the static site under ``site/`` holds member lists and, when
  ``show_conversations`` was on, raw messages. Each version is rewritten without
  the user's conversations: members removed, sizes, distinct users and numeric
  statistics recomputed, and any cluster that falls under the privacy minimums
  withheld, then the site is rebuilt. Cluster names and summaries were written
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

import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from qdrant_client import models

from clio_stream.storage.checkpoint import atomic_write_bytes
from clio_stream.denylist import deletion_token
from clio_stream.privacy import hide_subtrees, keyed_user_hash, user_key_of
from clio_stream.publish import (
    META_FILE,
    POINTER_FILE,
    RESULT_FILE,
    SITE_DIR,
    VERSIONS_DIR,
    list_versions,
    read_pointer,
    resolve_publish_dir,
)
from clio_stream.site.writer import write_site
from clio_stream.storage.deletions import DELETION_KIND
from clio_stream.storage.documents import RECLUSTER_REQUEST, ReclusterRequest
from clio_stream.storage.qdrant import NAMESPACE
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, NumericStats

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class DeletionReport:
    """What one deletion removed; counts only, never the user's id or data."""

    request_id: str | None = None
    status: str | None = None
    facet_points: int = 0
    conversations: int = 0
    versions_scrubbed: list[str] = field(default_factory=list)
    conversations_removed_from_versions: int = 0
    clusters_newly_withheld: int = 0
    batch_dirs_scrubbed: list[str] = field(default_factory=list)
    checkpoint_files_removed: int = 0
    recluster_requested: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class UserMatch:
    """How to recognise deleted users' conversations inside a result file: by their deletion tokens."""

    hash_key: str
    tokens: frozenset[str]
    user_ids: frozenset[str] = frozenset()  # raw ids, when known (a local deletion): searched in checkpoints
    conversation_ids: frozenset[str] = frozenset()

    @classmethod
    def for_user(cls, user_id: str, hash_key: str, conversation_ids: Iterable[str] = ()) -> UserMatch:
        """The match of one user known by raw id."""
        token = deletion_token(keyed_user_hash(user_id, hash_key), hash_key)
        return cls(hash_key, frozenset({token}), frozenset({user_id}), frozenset(conversation_ids))

    def owns(self, conv: Any) -> bool:
        """True for a deleted user's conversation, whichever way the result recorded the user.

        Batch results keep the raw ``user_id`` (its keyed hash is the user's);
        results published by the re-clustering job keep the keyed hash itself.
        """
        if conv.id in self.conversation_ids:
            return True
        if conv.user_id is None or not self.tokens:
            return False
        return any(deletion_token(h, self.hash_key) in self.tokens
                   for h in (conv.user_id, user_key_of(conv, self.hash_key)))


# --------------------------------------------------------------------------- Qdrant


def stored_conversation_ids(store: Any, user_hash: str) -> set[str]:
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


# --------------------------------------------------------------------------- results


def _recount_numeric(node: ClusterNode, values: dict[str, dict[str, Any]]) -> None:
    """Recompute a node's numeric statistics from its remaining members."""
    for name, old in list(node.numeric.items()):
        hist = [0] * len(old.histogram)
        present: list[int] = []
        for cid in node.conversation_ids:
            fv = values.get(cid, {}).get(name)
            v = getattr(fv, "numeric", None)
            if v is not None and 0 <= v - old.min_value < len(hist):
                hist[v - old.min_value] += 1
                present.append(v)
        node.numeric[name] = NumericStats(facet=old.facet, count=len(present),
                                          mean=sum(present) / len(present) if present else None,
                                          min_value=old.min_value, histogram=hist)


def _uncount_trend(node: ClusterNode, gone: Iterable[str], times: dict[str, float | None]) -> None:
    """Take removed members out of a node's per-window trend counts (where their time is known)."""
    trend = getattr(node, "trend", None)
    counts = getattr(trend, "counts", None)
    start, width = getattr(trend, "start", None), getattr(trend, "window_s", None)
    if not counts or start is None or not width:
        return
    for cid in gone:
        ts = times.get(cid)
        if ts is None:
            continue
        i = int((ts - start) // width)
        if 0 <= i < len(counts) and counts[i] > 0:
            counts[i] -= 1


def _rescrub_hierarchy(h: FacetHierarchy, removed: set[str], users: dict[str, str],
                       values: dict[str, dict[str, Any]], times: dict[str, float | None],
                       min_conversations: int, min_users: int) -> int:
    """Drop ``removed`` members from every node, recount, withhold what fell under the minimums."""
    newly_hidden = 0
    for node in h.nodes.values():
        gone = removed.intersection(node.conversation_ids)
        if not gone:
            continue
        _uncount_trend(node, gone, times)
        node.conversation_ids = [c for c in node.conversation_ids if c not in removed]
        node.distinct_users = len({users[c] for c in node.conversation_ids if c in users})
        _recount_numeric(node, values)
        if node.hidden:
            continue
        if node.size < min_conversations:
            node.hidden, node.hidden_reason = True, f"fewer than {min_conversations} conversations"
            newly_hidden += 1
        elif node.distinct_users < min_users:
            node.hidden, node.hidden_reason = True, f"fewer than {min_users} distinct users"
            newly_hidden += 1
    before = sum(n.hidden for n in h.nodes.values())
    hide_subtrees(h)
    return newly_hidden + sum(n.hidden for n in h.nodes.values()) - before


def scrub_result(result: ClioResult, match: UserMatch, *, min_conversations: int,
                 min_users: int) -> tuple[int, int]:
    """Remove the user's conversations from ``result`` in place; (conversations removed, clusters withheld)."""
    removed = {c.id for c in result.conversations if match.owns(c)} | set(match.conversation_ids)
    present = removed & ({c.id for c in result.conversations} | {fv.conversation_id for fv in result.facet_values}
                         | {cid for h in result.hierarchies.values() for n in h.nodes.values()
                            for cid in n.conversation_ids})
    if not present:
        return 0, 0
    times = {c.id: c.timestamp for c in result.conversations if c.id in removed}
    result.conversations = [c for c in result.conversations if c.id not in removed]
    result.facet_values = [fv for fv in result.facet_values if fv.conversation_id not in removed]
    users = {c.id: user_key_of(c, match.hash_key) for c in result.conversations}
    values = {fv.conversation_id: fv.values for fv in result.facet_values}
    withheld = sum(_rescrub_hierarchy(h, removed, users, values, times, min_conversations, min_users)
                   for h in result.hierarchies.values())
    return len(present), withheld


def _setting(result: ClioResult, settings: Any, name: str, default: Any) -> Any:
    """A site setting as the version was published with it (result.settings), else the current one."""
    return (result.settings or {}).get(name, getattr(settings, name, default))


def _rewrite(folder: Path, result: ClioResult, settings: Any) -> None:
    """Write the scrubbed result.json, then rebuild the site next to it (each step an atomic rename)."""
    atomic_write_bytes(folder / RESULT_FILE, result.model_dump_json().encode())
    if (folder / SITE_DIR).exists():
        write_site(result, folder / SITE_DIR,
                   chunk_size=int(_setting(result, settings, "site_chunk_size", 100)),
                   html_root=str(_setting(result, settings, "html_root", "") or ""),
                   show_conversations=bool(_setting(result, settings, "show_conversations", False)))


def _mark_meta(folder: Path) -> None:
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return
    meta["redacted_at"] = time.time()
    atomic_write_bytes(meta_path, json.dumps(meta, separators=(",", ":")).encode())


def _scrub_folder(folder: Path, match: UserMatch, settings: Any) -> tuple[int, int]:
    """Scrub one folder holding result.json (and maybe site/); (conversations removed, clusters withheld)."""
    try:
        raw = (folder / RESULT_FILE).read_bytes()
    except FileNotFoundError:
        return 0, 0
    result = ClioResult.model_validate_json(raw)
    removed, withheld = scrub_result(result, match, min_conversations=settings.min_cluster_conversations,
                                     min_users=settings.min_cluster_users)
    if removed:
        _rewrite(folder, result, settings)
    return removed, withheld


def scrub_published(publish_dir: Path, match: UserMatch, settings: Any, report: DeletionReport) -> None:
    """Scrub every retained version; rewrite the pointer so readers (API processes) reload the current one."""
    publish_dir = Path(publish_dir)
    for version in list_versions(publish_dir):
        folder = publish_dir / VERSIONS_DIR / version
        removed, withheld = _scrub_folder(folder, match, settings)
        if removed:
            _mark_meta(folder)
            report.versions_scrubbed.append(version)
            report.conversations_removed_from_versions += removed
            report.clusters_newly_withheld += withheld
    current = read_pointer(publish_dir)
    if current is not None and current in report.versions_scrubbed:
        _touch_pointer(publish_dir, current)


def _touch_pointer(publish_dir: Path, version: str) -> None:
    """Replace the pointer file with the same version: a new inode tells every reader to reload."""
    atomic_write_bytes(publish_dir / POINTER_FILE, (version + "\n").encode())
    try:  # this process's cache, at once (other processes notice the new inode)
        from clio_stream import publish

        publish._cache.pop(publish_dir.expanduser().absolute(), None)
    except AttributeError:  # pragma: no cover - the cache is an implementation detail
        pass


def scrub_batch_dir(out_dir: Path, match: UserMatch, settings: Any, report: DeletionReport) -> None:
    """Scrub a ``run_clio`` output folder; drop its checkpoints when the user was in it."""
    out_dir = Path(out_dir)
    removed, withheld = _scrub_folder(out_dir, match, settings)
    ckpt = out_dir / CHECKPOINTS_DIR
    if removed or _mentions(ckpt, match):
        if ckpt.is_dir():
            report.checkpoint_files_removed += sum(1 for p in ckpt.rglob("*") if p.is_file())
            shutil.rmtree(ckpt)
        report.batch_dirs_scrubbed.append(str(out_dir))
        report.conversations_removed_from_versions += removed
        report.clusters_newly_withheld += withheld


def _mentions(ckpt: Path, match: UserMatch) -> bool:
    """Whether any checkpoint file contains one of the user's conversation ids or the raw user id.

    Pickled strings are stored as UTF-8, so a byte search finds them without unpickling.
    """
    if not ckpt.is_dir():
        return False
    needles = [s.encode("utf-8") for s in (*match.user_ids, *match.conversation_ids) if s]
    for path in ckpt.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                return True
    return False


# --------------------------------------------------------------------------- requests


class DeletionRequest(BaseModel):
    """One user's deletion, as stored in Qdrant (``QdrantStore.deletions.create``); counts, never the user's data.

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

    def due_at(self, settings: Any) -> float:
        """When the pass may close it (see ``deletion_sweep_delay_s``)."""
        return self.requested_at + settings.deletion_sweep_delay_s


def deletion_request_id(token: str) -> str:
    """The request id of a user's deletion: the same for every repeat (idempotent requests)."""
    return str(uuid.uuid5(NAMESPACE, f"{DELETION_KIND}:{token}"))


def request_deletion(user_id: str, settings: Any, store: Any, *, requested_by: str) -> DeletionRequest:
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


def get_deletion(store: Any, request_id: str) -> DeletionRequest | None:
    """A stored request by id, or None."""
    doc = store.deletions.get(request_id)
    return None if doc is None else DeletionRequest.model_validate(doc)


# --------------------------------------------------------------------------- the pass


@dataclass
class DeletionPass:
    """What one pass of the publish directory's owner did (request ids and counts only)."""

    locked_out: bool = False
    scrubbed: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    report: DeletionReport = field(default_factory=DeletionReport)


def process_deletions(store: Any, settings: Any, publish_dir: Path, *, owner: str | None = None) -> DeletionPass:
    """Carry out the pending deletion requests: scrub the published versions, sweep, close.

    Runs under the clustering lock (``storage.documents.CLUSTERING_LOCK``): a re-clustering that
    scrolled a user's points before the request either published before this
    pass (and is scrubbed by it) or publishes after it with the deny-list applied
    (``remove_denied``). When the lock is held elsewhere the pass does nothing and
    says so; the next one retries.
    """
    from clio_stream.storage.documents import CLUSTERING_LOCK

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
        _run_pass(store, settings, Path(publish_dir), pending, now, out)
    finally:
        lease.release()
    return out


def _run_pass(store: Any, settings: Any, publish_dir: Path, pending: list[DeletionRequest], now: float,
              out: DeletionPass) -> None:
    due = {r.request_id for r in pending if r.due_at(settings) <= now}
    # Scrub for new requests, and again for those about to close (a version published since by a job that
    # does not apply the deny-list, e.g. the first clustering, is caught before the request says done).
    scrub = {r.request_id for r in pending if r.scrubbed_at is None or r.request_id in due}
    if scrub:
        match = UserMatch(settings.user_id_hash_key, frozenset(r.token for r in pending if r.request_id in scrub))
        scrub_published(publish_dir, match, settings, out.report)
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


def remove_denied(result: ClioResult, store: Any, settings: Any) -> int:
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
    settings: Any,
    *,
    store: Any | None = None,
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
    publish_dir = Path(publish_dir) if publish_dir is not None else resolve_publish_dir(settings)
    key = settings.user_id_hash_key
    report = DeletionReport()
    if store is None:
        match = UserMatch.for_user(user_id, key)
        scrub_published(publish_dir, match, settings, report)
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


def _carry_out(request: DeletionRequest, store: Any, settings: Any, publish_dir: Path, report: DeletionReport,
               *, wait: bool) -> DeletionRequest:
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
