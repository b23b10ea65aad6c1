"""Rewriting results without deleted users: published versions, batch output folders, a result about to publish.

A scrubbed result loses the users' conversations and facet values; every node's members, distinct users,
numeric statistics and trend counts are recomputed, and a node that falls under the privacy minimums is
withheld (with everything below it). Cluster names and summaries were written from samples that may have
included the user, so the deletion pass also asks for a re-clustering (``privacy.deletion``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy
from clio_stream.domain.conversation import Conversation, FacetValue
from clio_stream.privacy.audit import numeric_summary, numeric_value, withhold_below_minimums
from clio_stream.privacy.denylist import deletion_token
from clio_stream.privacy.users import keyed_user_hash, user_key_of
from clio_stream.privacy.visibility import hide_subtrees
from clio_stream.settings import ClioSettings
from clio_stream.storage.published import PublishedVersions
from clio_stream.storage.result_folder import rewrite_result_folder

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

    def owns(self, conv: Conversation) -> bool:
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


def _recount_numeric(node: ClusterNode, values: Mapping[str, Mapping[str, FacetValue]]) -> None:
    """Recompute a node's numeric statistics from its remaining members."""
    for name, old in list(node.numeric.items()):
        node.numeric[name] = numeric_summary(old.facet, old.min_value, len(old.histogram),
                                             [numeric_value(values, cid, name) for cid in node.conversation_ids])


def _uncount_trend(node: ClusterNode, gone: Iterable[str], times: Mapping[str, float | None]) -> None:
    """Take removed members out of a node's per-window trend counts (where their time is known)."""
    trend = node.trend
    if trend is None or not trend.counts or trend.start is None or not trend.window_s:
        return
    for cid in gone:
        ts = times.get(cid)
        if ts is None:
            continue
        i = int((ts - trend.start) // trend.window_s)
        if 0 <= i < len(trend.counts) and trend.counts[i] > 0:
            trend.counts[i] -= 1


def _uncount_window(node: ClusterNode, gone: set[str], gone_values: Mapping[str, Mapping[str, FacetValue]]) -> None:
    """A node counted over a sampled window (``living.population``): only the user's sampled conversations are
    known here, so those come off the counts, and one user comes off every such node (the user may have
    conversations in any of them); the next re-clustering, which a deletion requests, counts afresh."""
    node.count = max(0, (node.count or 0) - len(gone))
    node.distinct_users = max(0, node.distinct_users - 1)
    if node.visible_users is not None:
        node.visible_users = max(0, node.visible_users - 1)
    for name, old in list(node.numeric.items()):
        hist = list(old.histogram)
        for cid in gone:
            v = numeric_value(gone_values, cid, name)
            if v is not None and 0 <= v - old.min_value < len(hist) and hist[v - old.min_value] > 0:
                hist[v - old.min_value] -= 1
        total = sum(hist)
        mean = sum((old.min_value + i) * c for i, c in enumerate(hist)) / total if total else None
        node.numeric[name] = old.model_copy(update={"histogram": hist, "count": total, "mean": mean})


def _rescrub_hierarchy(h: FacetHierarchy, removed: set[str], users: Mapping[str, str],
                       values: Mapping[str, Mapping[str, FacetValue]], times: Mapping[str, float | None],
                       min_conversations: int, min_users: int,
                       gone_values: Mapping[str, Mapping[str, FacetValue]] | None = None) -> int:
    """Drop ``removed`` members from every node, recount, withhold what fell under the minimums."""
    newly_hidden = 0
    for node in h.nodes.values():
        gone = removed.intersection(node.conversation_ids)
        if node.count is not None:
            _uncount_trend(node, gone, times)
            _uncount_window(node, gone, gone_values or {})
            node.conversation_ids = [c for c in node.conversation_ids if c not in removed]
            if not node.hidden:
                newly_hidden += withhold_below_minimums(node, node.distinct_users,
                                                        min_conversations=min_conversations, min_users=min_users)
            continue
        if not gone:
            continue
        _uncount_trend(node, gone, times)
        node.conversation_ids = [c for c in node.conversation_ids if c not in removed]
        node.distinct_users = len({users[c] for c in node.conversation_ids if c in users})
        _recount_numeric(node, values)
        if not node.hidden:
            newly_hidden += withhold_below_minimums(node, node.distinct_users, min_conversations=min_conversations,
                                                    min_users=min_users)
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
    gone_values = {fv.conversation_id: fv.values for fv in result.facet_values if fv.conversation_id in removed}
    result.conversations = [c for c in result.conversations if c.id not in removed]
    result.facet_values = [fv for fv in result.facet_values if fv.conversation_id not in removed]
    for layout in result.maps.values():  # the map's sample of conversations
        layout.points = [p for p in layout.points if p[0] not in removed]
    users = {c.id: user_key_of(c, match.hash_key) for c in result.conversations}
    values = {fv.conversation_id: fv.values for fv in result.facet_values}
    withheld = sum(_rescrub_hierarchy(h, removed, users, values, times, min_conversations, min_users, gone_values)
                   for h in result.hierarchies.values())
    return len(present), withheld


class _Scrubber:
    """``scrub_result`` as a result edit for ``rewrite_result_folder``, adding up what it removed."""

    def __init__(self, match: UserMatch, settings: ClioSettings) -> None:
        self.match, self.settings = match, settings
        self.removed = self.withheld = 0

    def __call__(self, result: ClioResult) -> bool:
        removed, withheld = scrub_result(result, self.match, min_conversations=self.settings.min_cluster_conversations,
                                         min_users=self.settings.min_cluster_users)
        self.removed += removed
        self.withheld += withheld
        return bool(removed)


def scrub_published(versions: PublishedVersions, match: UserMatch, settings: ClioSettings,
                    report: DeletionReport) -> None:
    """Scrub every retained version (``PublishedVersions.scrub`` makes readers reload the current one)."""
    scrub = _Scrubber(match, settings)
    scrubbed = versions.scrub(scrub, settings)
    report.versions_scrubbed.extend(scrubbed)
    report.conversations_removed_from_versions += scrub.removed
    report.clusters_newly_withheld += scrub.withheld


def scrub_batch_dir(out_dir: Path, match: UserMatch, settings: ClioSettings, report: DeletionReport) -> None:
    """Scrub a ``run_clio`` output folder; drop its checkpoints when the user was in it."""
    out_dir = Path(out_dir)
    scrub = _Scrubber(match, settings)
    rewrite_result_folder(out_dir, scrub, settings)
    ckpt = out_dir / CHECKPOINTS_DIR
    if scrub.removed or _mentions(ckpt, match):
        if ckpt.is_dir():
            report.checkpoint_files_removed += sum(1 for p in ckpt.rglob("*") if p.is_file())
            shutil.rmtree(ckpt)
        report.batch_dirs_scrubbed.append(str(out_dir))
        report.conversations_removed_from_versions += scrub.removed
        report.clusters_newly_withheld += scrub.withheld


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
