"""Clio's privacy layers at publish time, plus per-cluster statistics they depend on.

- Layer 1 lives in the facet prompts (no identifying details).
- Layer 2: clusters with too few conversations or distinct users are hidden.
- Layer 3: names and summaries are written without private details (prompts).
- Layer 4: an optional LLM auditor rates each cluster 1-5; low scores are withheld.
Hidden clusters are marked here; the site writer and the API never emit them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any, Sequence

from clio_stream.domain.facets import Facet
from clio_stream.llm.base import AskStats, LLMBackend, Prompt, ask, sampling_for
from clio_stream.llm.parsing import parse_int_in_range
from clio_stream.llm.prompts import AUDIT_CLUSTER
from clio_stream.domain.conversation import Conversation, ConversationFacets
from clio_stream.domain.clusters import ClusterNode, FacetHierarchy, NumericStats, Trend

log = logging.getLogger(__name__)


def keyed_user_hash(user_id: str, key: str) -> str:
    """HMAC of a user id: distinct users can be counted without storing who they are."""
    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


# Who conversations without a user id count as: one and the same user. Counting each as its own user would let
# one person reach any distinct-user minimum alone by leaving the id out. No client can send this id by mistake,
# and one that sends it on purpose only merges itself with the anonymous user (fewer users: more is withheld).
ANONYMOUS_USER_ID = "\x00anonymous"


def user_identity(conv: Conversation) -> str:
    """The user a conversation counts as in distinct-user minimums: its user id, or the one anonymous user."""
    return conv.user_id if conv.user_id is not None else ANONYMOUS_USER_ID


def user_key_of(conv: Conversation, key: str) -> str:
    """The keyed hash of ``user_identity``: what is stored and counted instead of the user id."""
    return keyed_user_hash(user_identity(conv), key)


def numeric_stats(facet: Facet, values: Sequence[int | None]) -> NumericStats:
    lo, hi = facet.numeric  # type: ignore[misc]
    hist = [0] * (hi - lo + 1)
    present = [v for v in values if v is not None]
    for v in present:
        hist[v - lo] += 1
    mean = sum(present) / len(present) if present else None
    return NumericStats(facet=facet.name, count=len(present), mean=mean, min_value=lo, histogram=hist)


def annotate(
    hierarchy: FacetHierarchy,
    conversations: Sequence[Conversation],
    facet_values: Sequence[ConversationFacets],
    facets: Sequence[Facet],
    *,
    min_conversations: int,
    min_users: int,
    user_hash_key: str,
) -> None:
    """Fill distinct users and numeric stats of every node; hide nodes below the minimums."""
    users = {c.id: user_key_of(c, user_hash_key) for c in conversations}
    values = {fv.conversation_id: fv.values for fv in facet_values}
    numeric = [f for f in facets if f.numeric is not None]
    for node in hierarchy.nodes.values():
        node.distinct_users = len({users[cid] for cid in node.conversation_ids if cid in users})
        node.numeric = {
            f.name: numeric_stats(f, [values.get(cid, {}).get(f.name).numeric if values.get(cid, {}).get(f.name) else None
                                      for cid in node.conversation_ids])
            for f in numeric
        }
        if node.size < min_conversations:
            node.hidden, node.hidden_reason = True, f"fewer than {min_conversations} conversations"
        elif node.distinct_users < min_users:
            node.hidden, node.hidden_reason = True, f"fewer than {min_users} distinct users"
    hide_subtrees(hierarchy)


def mark_below_minimums(
    leaves: Sequence[ClusterNode],
    users_of: Mapping[str, str],
    *,
    min_conversations: int,
    min_users: int,
) -> int:
    """Withhold base clusters under the minimums *before* the levels above them are built and named.

    Parent names are written from their children's names and summaries; a small cluster's name can carry one
    person's details (that is what the minimums guard against), so a withheld child must never feed a
    parent's name. ``hierarchy`` and the re-clusterer leave hidden children out of every naming prompt.
    ``users_of``: conversation id -> keyed user hash. Returns how many leaves were withheld.
    """
    withheld = 0
    for leaf in leaves:
        users = {users_of[c] for c in leaf.conversation_ids if c in users_of}
        if leaf.size < min_conversations:
            leaf.hidden, leaf.hidden_reason = True, f"fewer than {min_conversations} conversations"
        elif len(users) < min_users:
            leaf.hidden, leaf.hidden_reason = True, f"fewer than {min_users} distinct users"
        withheld += int(leaf.hidden)
    return withheld


def describable(children: Sequence[ClusterNode]) -> list[ClusterNode]:
    """The children whose names may be shown to the LLM that names their parent (not withheld ones)."""
    return [c for c in children if not c.hidden]


def hide_subtrees(hierarchy: FacetHierarchy) -> None:
    """A withheld parent withholds everything under it."""

    def hide_down(node: ClusterNode) -> None:
        for cid in node.children:
            child = hierarchy.nodes[cid]
            if not child.hidden:
                child.hidden, child.hidden_reason = True, "parent withheld"
            hide_down(child)

    for node in list(hierarchy.nodes.values()):
        if node.hidden:
            hide_down(node)


def withheld_nodes(hierarchy: FacetHierarchy) -> list[ClusterNode]:
    """Hidden nodes and every node below one, marked or not: their members are withheld in this facet."""
    out: list[ClusterNode] = []
    stack = [n.id for n in hierarchy.nodes.values() if n.hidden]
    seen: set[str] = set()
    while stack:
        nid = stack.pop()
        if nid in seen or nid not in hierarchy.nodes:
            continue
        seen.add(nid)
        out.append(hierarchy.nodes[nid])
        stack.extend(hierarchy.nodes[nid].children)
    return out


def visible_node_ids(hierarchy: FacetHierarchy) -> set[str]:
    """Nodes reachable from a visible root through visible nodes only: all that the site and the API show."""
    visible: set[str] = set()
    stack = [r for r in hierarchy.root_ids if r in hierarchy.nodes and not hierarchy.nodes[r].hidden]
    while stack:
        nid = stack.pop()
        if nid in visible:
            continue
        visible.add(nid)
        stack.extend(c for c in hierarchy.nodes[nid].children
                     if c in hierarchy.nodes and not hierarchy.nodes[c].hidden)
    return visible


def public_nodes(hierarchy: FacetHierarchy, user_of: Mapping[str, str]) -> dict[str, ClusterNode]:
    """Every visible node as anyone may see it, by id; the only source of what the site and the API show.

    A parent's distinct users, numeric statistics and trend would otherwise count the members of its
    withheld children, and the parent minus its visible children would give away exactly what the
    minimums withhold (one user's scores, one user's active hours). So a parent with anything withheld
    below it is shown with those aggregated over its visible children only (as the Clio paper aggregates
    only over clusters that pass the thresholds); it is never flagged emerging, since that ranking counted
    the withheld members. Its ``size`` stays the whole count: the withheld part is shown as ``other_count``
    anyway, the one number published about withheld clusters. ``user_of``: conversation id ->
    ``user_identity``. Leaves and parents with nothing withheld below them are returned as they are.
    """
    visible = visible_node_ids(hierarchy)
    out: dict[str, ClusterNode] = {}
    counted: dict[str, list[str]] = {}  # node id -> the members its public aggregates are over

    def visit(nid: str) -> None:
        node = hierarchy.nodes[nid]
        kids = [c for c in node.children if c in hierarchy.nodes]
        shown = [c for c in kids if c in visible]
        for c in shown:
            visit(c)
        if not kids or (len(shown) == len(kids) and all(out[c] is hierarchy.nodes[c] for c in shown)):
            out[nid], counted[nid] = node, list(node.conversation_ids)
            return
        members = [cid for c in shown for cid in counted[c]]
        counted[nid] = members
        out[nid] = node.model_copy(update={
            "distinct_users": len({user_of[c] for c in members if c in user_of}),
            "numeric": {name: _sum_numeric(name, [out[c].numeric[name] for c in shown if name in out[c].numeric],
                                           stats.min_value, len(stats.histogram))
                        for name, stats in node.numeric.items()},
            "trend": None if node.trend is None else _sum_trend(node.trend, [out[c].trend for c in shown],
                                                                len(members)),
        })

    for root in hierarchy.root_ids:
        if root in visible:
            visit(root)
    return out


def _sum_numeric(facet: str, parts: Sequence[NumericStats], min_value: int, bins: int) -> NumericStats:
    hist = [sum(p.histogram[i] for p in parts if i < len(p.histogram)) for i in range(bins)]
    count = sum(hist)
    mean = sum((min_value + i) * h for i, h in enumerate(hist)) / count if count else None
    return NumericStats(facet=facet, count=count, mean=mean, min_value=min_value, histogram=hist)


def _sum_trend(own: Trend, parts: Sequence[Trend | None], members: int) -> Trend:
    counts = [sum(p.counts[i] for p in parts if p is not None and i < len(p.counts)) for i in range(len(own.counts))]
    new = sum(p.new_members for p in parts if p is not None)
    growth = None if own.growth is None else new / max(1, members - new)
    return Trend(window_s=own.window_s, start=own.start, counts=counts, new_members=new, growth=growth)


def audit(
    hierarchy: FacetHierarchy,
    llm: LLMBackend,
    *,
    settings: Any,
    stats: AskStats | None = None,
    known: Mapping[tuple[str, str], int] | None = None,
) -> dict[str, int | None]:
    """Ask the LLM to rate each visible cluster's privacy; withhold those below ``audit_min_score``.

    An unparseable rating withholds the cluster too: when unsure, publish less. ``known`` holds ratings
    of earlier versions by exact (name, summary): the rating is of the text, asked at temperature 0, so a
    cluster that kept its name and summary is not asked again (re-clustering pays only for what changed).
    """
    known = known or {}
    visible = [n for n in hierarchy.nodes.values() if not n.hidden]
    to_ask = [n for n in visible if (n.name, n.summary) not in known]
    prompts = [Prompt(AUDIT_CLUSTER, {"name": n.name, "summary": n.summary}, choices=("1", "2", "3", "4", "5"))
               for n in to_ask]
    asked = ask(llm, prompts, lambda t, i: parse_int_in_range(t, 1, 5),
                sampling_for(AUDIT_CLUSTER, {**settings.llm_sampling_args, "temperature": 0.0}),
                retries=settings.llm_max_retries, seed=settings.seed + 4242, batch_size=settings.llm_batch_size,
                desc=f"audit {hierarchy.facet}", stats=stats) if prompts else []
    score_of = {n.id: s for n, s in zip(to_ask, asked)}
    out: dict[str, int | None] = {}
    for node in visible:
        score = score_of[node.id] if node.id in score_of else known[(node.name, node.summary)]
        node.audit_score = score
        out[node.id] = score
        if score is None or score < settings.audit_min_score:
            node.hidden, node.hidden_reason = True, f"privacy audit score {score}"
    hide_subtrees(hierarchy)
    withheld = sum(1 for s in out.values() if s is None or s < settings.audit_min_score)
    log.info("audit %s: %d of %d clusters withheld (%d ratings reused)", hierarchy.facet, withheld, len(out),
             len(visible) - len(to_ask))
    return out


def known_audits(hierarchy: FacetHierarchy | None) -> dict[tuple[str, str], int]:
    """Ratings recorded in a previous version's hierarchy, by (name, summary), for ``audit(known=...)``."""
    if hierarchy is None:
        return {}
    return {(n.name, n.summary): n.audit_score for n in hierarchy.nodes.values() if n.audit_score is not None}
