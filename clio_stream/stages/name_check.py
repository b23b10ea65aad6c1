"""Stage: check each base cluster's name against its members, and fall back to keywords where it fails.

A reader trusts a name only if it points at what the cluster holds. The check is the name fidelity of
``stages.fidelity``: the name, embedded, should rank its own cluster first among the centroids of all sibling
clusters' member values. The name alone, not name and summary: the dashboard shows the name first, and a
specific summary let generic names pass ("A chatbot designed to assist with business tasks"). A leaf whose name fails is marked ``weak_name``, and when its keyword label
(``stages.keywords``, c-TF-IDF over distinct users) exists, that label is shown instead; every leaf carries its
keywords beside the name. Words need as many distinct users as a cluster does (``min_cluster_users``), so a
keyword can never say more about one person than a cluster may.

Member vectors are a bounded sample per leaf (``sample`` values nearest the start of the member list, which is
deterministic), so the check costs at most ``k * (sample + 1)`` embeddings whatever the store holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from clio_stream.domain.conversation import Conversation, ConversationFacets
from clio_stream.domain.facets import Facet
from clio_stream.domain.vectors import normalise_rows
from clio_stream.embedding import EmbeddingBackend, embedding_text
from clio_stream.privacy.users import user_key_of
from clio_stream.settings import ClioSettings
from clio_stream.stages.fidelity import ranks
from clio_stream.stages.keywords import keyword_labels

SAMPLE_PER_LEAF = 32


def keyword_name(keywords: str) -> str:
    """A keyword label shown as a name: 'card arrive delivery' -> 'Card, arrive, delivery'."""
    words = keywords.split()
    return ", ".join(words)[:1].upper() + ", ".join(words)[1:] if words else ""


def check_leaf_names(
    hierarchy: FacetHierarchy,
    conversations: Sequence[Conversation],
    facet_values: Sequence[ConversationFacets],
    facet: Facet,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    *,
    sample: int = SAMPLE_PER_LEAF,
) -> int:
    """Set ``keywords``, ``name_rank`` and ``weak_name`` on every leaf of ``hierarchy`` in place; returns the weak count."""
    leaves = [n for n in hierarchy.nodes.values() if n.level == 0 and n.conversation_ids]
    if len(leaves) < 2:
        return 0  # one cluster retrieves itself whatever its name says
    value_of = {fv.conversation_id: fv.values[facet.name].value for fv in facet_values if facet.name in fv.values}
    user_of = {c.id: user_key_of(c, settings.user_id_hash_key) for c in conversations}
    texts, labels, users = [], [], []
    for i, leaf in enumerate(leaves):
        for cid in leaf.conversation_ids:
            if value_of.get(cid):
                texts.append(value_of[cid])
                labels.append(i)
                users.append(user_of.get(cid, cid))
    keywords = keyword_labels(texts, labels, users, len(leaves), min_users=settings.min_cluster_users,
                              drop=facet.prefill)
    centroids = np.stack([_centroid(leaf, value_of, facet, embedder, sample) for leaf in leaves])
    names = normalise_rows(embedder.encode([leaf.name for leaf in leaves]))
    rank = ranks(names, centroids, np.arange(len(leaves)))
    weak = 0
    for leaf, r, words in zip(leaves, rank, keywords):
        _mark(leaf, int(r), words)
        weak += leaf.weak_name
    return weak


def _centroid(leaf: ClusterNode, value_of: dict[str, str | None], facet: Facet, embedder: EmbeddingBackend,
              sample: int) -> np.ndarray:
    values = [value_of[c] for c in leaf.conversation_ids if value_of.get(c)][:sample]
    if not values:
        return np.zeros(embedder.dim, dtype=np.float32)
    vecs = normalise_rows(embedder.encode([embedding_text(facet, v) for v in values]))
    return normalise_rows(vecs.mean(axis=0))


def _mark(leaf: ClusterNode, rank: int, words: str) -> None:
    leaf.keywords = words or None
    leaf.name_rank = rank
    leaf.weak_name = rank > 1
    if leaf.weak_name and words:
        leaf.llm_name = leaf.llm_name or leaf.name
        leaf.name = keyword_name(words)
