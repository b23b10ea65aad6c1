"""Marking what is withheld: the privacy minimums (layer 2) and the LLM auditor (layer 4).

These set ``hidden`` on nodes; what a hidden flag means for readers is ``privacy.visibility``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Sequence

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy, NumericStats
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue
from clio_stream.domain.facets import Facet
from clio_stream.llm.base import AskStats, LLMBackend, Prompt, ask, sampling_for
from clio_stream.llm.parsing import parse_int_in_range
from clio_stream.llm.prompts import AUDIT_CLUSTER
from clio_stream.privacy.users import user_key_of
from clio_stream.privacy.visibility import hide_subtrees
from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)


def withhold_below_minimums(node: ClusterNode, distinct_users: int, *, min_conversations: int,
                            min_users: int) -> bool:
    """Withhold ``node`` if it has too few conversations or distinct users; True if this call withheld it."""
    if node.size < min_conversations:
        node.hidden, node.hidden_reason = True, f"fewer than {min_conversations} conversations"
    elif distinct_users < min_users:
        node.hidden, node.hidden_reason = True, f"fewer than {min_users} distinct users"
    else:
        return False
    return True


def numeric_summary(facet: str, min_value: int, bins: int, values: Sequence[int | None]) -> NumericStats:
    """Histogram and mean of the values in ``[min_value, min_value + bins)`` (others are not counted)."""
    hist = [0] * bins
    present = [v for v in values if v is not None and 0 <= v - min_value < bins]
    for v in present:
        hist[v - min_value] += 1
    mean = sum(present) / len(present) if present else None
    return NumericStats(facet=facet, count=len(present), mean=mean, min_value=min_value, histogram=hist)


def numeric_stats(facet: Facet, values: Sequence[int | None]) -> NumericStats:
    lo, hi = facet.numeric  # type: ignore[misc]
    return numeric_summary(facet.name, lo, hi - lo + 1, values)


def numeric_value(values: Mapping[str, Mapping[str, FacetValue]], conversation_id: str, facet: str) -> int | None:
    """The numeric answer of one conversation to one facet, if any."""
    value = values.get(conversation_id, {}).get(facet)
    return value.numeric if value is not None else None


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
    """Fill distinct users and numeric stats of every node; hide nodes below the minimums.

    A node counted over a sampled window (``count`` set) keeps its numbers; the minimums apply to them.
    """
    users = {c.id: user_key_of(c, user_hash_key) for c in conversations}
    values = {fv.conversation_id: fv.values for fv in facet_values}
    numeric = [f for f in facets if f.numeric is not None]
    for node in hierarchy.nodes.values():
        if node.count is None:  # else counted over the window already (living.population)
            node.distinct_users = len({users[cid] for cid in node.conversation_ids if cid in users})
            node.numeric = {f.name: numeric_stats(f, [numeric_value(values, cid, f.name)
                                                      for cid in node.conversation_ids]) for f in numeric}
        withhold_below_minimums(node, node.distinct_users, min_conversations=min_conversations, min_users=min_users)
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
        users = leaf.distinct_users if leaf.count is not None else \
            len({users_of[c] for c in leaf.conversation_ids if c in users_of})
        withhold_below_minimums(leaf, users, min_conversations=min_conversations, min_users=min_users)
        withheld += int(leaf.hidden)
    return withheld


def audit(
    hierarchy: FacetHierarchy,
    llm: LLMBackend,
    *,
    settings: ClioSettings,
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
