"""Delete one user's data everywhere clio-stream keeps it: Qdrant, published versions, batch outputs, caches.

Where a user's data lives (see the README's "Guarantees"):

* Qdrant: facet points and conversation points carry the keyed hash of the
  user id (``user_hash``); ``QdrantStore.delete_user`` removes both kinds.
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
  cache is cheaper to recompute than to prove clean.

Not covered, by nature: Kafka topics are append-only logs; the user's raw
records stay in the conversation and dead-letter topics until retention removes
them (the embedded Tansu broker keeps nothing across a restart).

Versions are otherwise immutable; a deletion is the one rewrite, done file by
file with atomic renames (result.json, site swap, meta.json) and the ``current``
pointer is rewritten last so every reader reloads the scrubbed version.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdrant_client import models

from clio_stream.checkpoint import atomic_write_bytes
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
from clio_stream.types import ClioResult, ClusterNode, FacetHierarchy, NumericStats

log = logging.getLogger(__name__)

RECLUSTER_REQUEST_KEY = "recluster_request"  # the state document the scheduler watches (api.routes_admin)
CHECKPOINTS_DIR = "checkpoints"


@dataclass
class DeletionReport:
    """What one deletion removed; counts only, never the user's id or data."""

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
    """How to recognise the user's conversations inside a result file."""

    user_id: str
    user_hash: str
    hash_key: str
    conversation_ids: frozenset[str] = frozenset()

    def owns(self, conv: Any) -> bool:
        """True for the user's conversation, whichever way the result recorded the user.

        Batch results keep the raw ``user_id``; results published by the
        re-clustering job keep the keyed hash in its place.
        """
        if conv.id in self.conversation_ids:
            return True
        uid = conv.user_id
        if uid is None:
            return False
        return uid in (self.user_id, self.user_hash) or user_key_of(conv, self.hash_key) == self.user_hash


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
    needles = [s.encode("utf-8") for s in (match.user_id, *match.conversation_ids) if s]
    for path in ckpt.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                return True
    return False


# --------------------------------------------------------------------------- the whole deletion


def delete_user(
    user_id: str,
    settings: Any,
    *,
    store: Any | None = None,
    publish_dir: Path | None = None,
    batch_dirs: Sequence[Path] = (),
    request_recluster: bool = True,
) -> DeletionReport:
    """Delete ``user_id``'s data from Qdrant, every published version and the given batch output folders.

    ``store`` None skips Qdrant (a batch-only installation); ``publish_dir``
    defaults to the settings' one. Returns counts only.
    """
    if not isinstance(user_id, str) or not user_id:
        raise ValueError("a user id is required")
    user_hash = keyed_user_hash(user_id, settings.user_id_hash_key)
    report = DeletionReport()
    conv_ids: set[str] = set()
    if store is not None:
        conv_ids = stored_conversation_ids(store, user_hash)
        removed = store.delete_user(user_hash)
        report.facet_points = int(removed.get(store.facets, 0))
        report.conversations = int(removed.get(store.conversations, 0))
    match = UserMatch(user_id, user_hash, settings.user_id_hash_key, frozenset(conv_ids))
    scrub_published(Path(publish_dir) if publish_dir is not None else resolve_publish_dir(settings), match,
                    settings, report)
    for out_dir in batch_dirs:
        scrub_batch_dir(Path(out_dir), match, settings, report)
    if request_recluster and store is not None and report.versions_scrubbed:
        store.put_state(RECLUSTER_REQUEST_KEY, {"requested_at": time.time(), "requested_by": "deletion",
                                                "reason": "a user's data was deleted; rename clusters without it"})
        report.recluster_requested = True
    log.info("deleted a user's data: %d facet points, %d conversation points, %d conversations in %d version(s), "
             "%d batch folder(s), %d checkpoint files", report.facet_points, report.conversations,
             report.conversations_removed_from_versions, len(report.versions_scrubbed),
             len(report.batch_dirs_scrubbed), report.checkpoint_files_removed)
    return report


def delete_users(user_ids: Iterable[str], settings: Any, **kwargs: Any) -> list[DeletionReport]:
    """``delete_user`` for several users (one report each)."""
    return [delete_user(uid, settings, **kwargs) for uid in user_ids]
