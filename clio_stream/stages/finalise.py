"""Stage: finalise a named hierarchy before it is published, the same way for the batch run and re-clustering.

Every cluster's name is checked against its members first (``stages.name_check``: keywords beside every
name, keywords instead of a name that does not retrieve its own cluster), so the audit rates what is shown.
Privacy minimums and per-node statistics (``privacy.annotate``), the optional LLM privacy audit
(``privacy.audit``; ratings of a previous version's unchanged names are reused), then trends
(``stages.trends.annotate_trends``; growth is measured against the previous version's members).
"""

from __future__ import annotations

from collections.abc import Sequence

from clio_stream.domain.clusters import FacetHierarchy
from clio_stream.domain.conversation import Conversation, ConversationFacets
from clio_stream.domain.facets import Facet
from clio_stream.embedding import EmbeddingBackend
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.privacy.audit import annotate, audit, known_audits
from clio_stream.settings import ClioSettings
from clio_stream.stages.name_check import check_names
from clio_stream.stages.trends import annotate_trends


def finalise(
    hierarchy: FacetHierarchy,
    conversations: Sequence[Conversation],
    facet_values: Sequence[ConversationFacets],
    facets: Sequence[Facet],
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    *,
    stats: AskStats,
    previous: FacetHierarchy | None = None,
) -> dict[str, int | None] | None:
    """Annotate, audit and add trends to ``hierarchy`` in place; returns the audit scores (None: no audit).

    ``previous``: the same facet's hierarchy in the version before (None for a batch run or a first version).
    """
    facet = next(f for f in facets if f.name == hierarchy.facet)
    if settings.check_cluster_names:
        check_names(hierarchy, conversations, facet_values, facet, embedder, settings)
    annotate(hierarchy, conversations, facet_values, facets, min_conversations=settings.min_cluster_conversations,
             min_users=settings.min_cluster_users, user_hash_key=settings.user_id_hash_key)
    scores = None
    if settings.audit_cluster_names:
        scores = audit(hierarchy, llm, settings=settings, stats=stats, known=known_audits(previous))
    previous_members = None if previous is None else {c for n in previous.leaves() for c in n.conversation_ids}
    annotate_trends(hierarchy, {c.id: c.timestamp for c in conversations}, previous_members,
                    window_s=settings.trend_window_s, windows=settings.trend_windows,
                    min_growth=settings.emerging_min_growth, top=settings.emerging_top)
    return scores
