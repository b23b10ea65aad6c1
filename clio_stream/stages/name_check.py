"""Stage: check each cluster's name against its members, and fall back to keywords where it fails.

A reader trusts a name only if it points at what the cluster holds. Two tests, on the name alone (the
dashboard shows the name first, and a specific summary let generic names pass: "A chatbot designed to assist
with business tasks"):

- *rank* (the name fidelity of ``stages.fidelity``): the name, embedded, ranks its own cluster first among the
  centroids of the member values of every cluster of its level (leaves among leaves, parents among the parents
  of their level);
- *closeness*: its cosine to its members' centre, divided by the members' own mean cosine to it (loose clusters
  get looser names), reaches ``name_min_closeness``. Ranking first is not enough where the siblings are few and
  unrelated: among four top-level parts of the demo "Chat History" ranked first at cosine 0.25 to its centre,
  where its members sat at 0.46.

A node whose name fails either is marked ``weak_name``, and when its keyword label (``stages.keywords``,
c-TF-IDF over distinct users) exists, that label is shown instead; every node carries its keywords beside the
name. Words need as many distinct users as a cluster does (``min_cluster_users``), so a keyword can never say
more about one person than a cluster may. The summary passes the same two tests on its own, and one that fails
is not shown (a 135M model's summaries can be unrelated text: "ChatBot Class: 1984 | <class ...>").

Member vectors are a bounded, deterministic sample per node (``sample`` values spread evenly over its sorted
member ids), each embedded once for all levels, so the check costs at most ``nodes * (sample + 1)`` embeddings
whatever the store holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from clio_stream.domain.conversation import Conversation, ConversationFacets
from clio_stream.domain.facets import Facet
from clio_stream.domain.vectors import normalise_rows
from clio_stream.embedding import EmbeddingBackend, embedding_text
from clio_stream.privacy.users import user_key_of
from clio_stream.settings import ClioSettings
from clio_stream.stages.fidelity import check_labels
from clio_stream.stages.keywords import keyword_labels

SAMPLE_PER_NODE = 32


def keyword_name(keywords: str) -> str:
    """A keyword label shown as a name: 'card arrive delivery' -> 'Card, arrive, delivery'."""
    words = keywords.split()
    return ", ".join(words)[:1].upper() + ", ".join(words)[1:] if words else ""


def check_names(
    hierarchy: FacetHierarchy,
    conversations: Sequence[Conversation],
    facet_values: Sequence[ConversationFacets],
    facet: Facet,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    *,
    sample: int = SAMPLE_PER_NODE,
) -> int:
    """Set ``keywords``, ``name_rank`` and ``weak_name`` on every node of ``hierarchy`` in place; returns the weak
    count. Each level is checked on its own: a leaf among the leaves, a parent among the parents of its level
    (a top-level name must say what sets its part of the data apart from the other top-level parts)."""
    value_of = {fv.conversation_id: fv.values[facet.name].value for fv in facet_values if facet.name in fv.values}
    user_of = {c.id: user_key_of(c, settings.user_id_hash_key) for c in conversations}
    vectors = _MemberVectors(value_of, facet, embedder)
    weak = 0
    for level in sorted({n.level for n in hierarchy.nodes.values()}):
        nodes = [n for n in hierarchy.nodes.values() if n.level == level and n.conversation_ids]
        weak += _check_level(nodes, value_of, user_of, vectors, facet, embedder, settings, sample)
    return weak


def _check_level(nodes: list[ClusterNode], value_of: dict[str, str | None], user_of: dict[str, str],
                 vectors: "_MemberVectors", facet: Facet, embedder: EmbeddingBackend, settings: ClioSettings,
                 sample: int) -> int:
    if len(nodes) < 2:
        return 0  # one cluster retrieves itself whatever its name says
    texts, labels, users = [], [], []
    for i, node in enumerate(nodes):
        for cid in node.conversation_ids:
            if value_of.get(cid):
                texts.append(value_of[cid])
                labels.append(i)
                users.append(user_of.get(cid, cid))
    keywords = keyword_labels(texts, labels, users, len(nodes), min_users=settings.min_cluster_users,
                              drop=facet.prefill)
    centres = [vectors.centre(_spread_sample(n.conversation_ids, value_of, sample)) for n in nodes]
    centroids = np.stack([c.vector for c in centres])
    k = len(nodes)
    shown = normalise_rows(embedder.encode([_without_prefill(text, facet) for text in
                                            [n.name for n in nodes] + [n.summary or n.name for n in nodes]]))
    member_closeness = np.array([c.member_closeness for c in centres])
    # the names, then the summaries: one embedding call, one rule
    names = check_labels(shown[:k], centroids, member_closeness, settings.name_min_closeness)
    summaries = check_labels(shown[k:], centroids, member_closeness, settings.name_min_closeness)
    for i, (node, words) in enumerate(zip(nodes, keywords)):
        _mark(node, int(names.rank[i]), float(names.closeness[i]), bool(names.passed[i]), words)
        if not summaries.passed[i] and node.summary:
            node.llm_summary, node.summary = node.summary, ""  # it does not point at this cluster's members
    return sum(n.weak_name for n in nodes)


def _without_prefill(text: str, facet: Facet) -> str:
    """``text`` without the facet's prefill wherever it occurs, as the members' values are embedded: a summary
    that quotes members ("Conversations such as: The user asks the assistant to ...; The user asks ...") would
    otherwise be judged on the words every value shares."""
    return text.replace(facet.prefill, " ").strip() if facet.prefill else text


def _spread_sample(ids: Sequence[str], value_of: dict[str, str | None], sample: int) -> list[str]:
    """Up to ``sample`` members with a value, evenly spread over their ids in sorted order: the same members
    whatever order a version lists them in (a kept cluster is checked as it was), and not only the first child's
    (a parent lists its children's members one child after another)."""
    valued = sorted(c for c in ids if value_of.get(c))
    return valued[:: max(1, len(valued) // sample)][:sample]


@dataclass(frozen=True)
class _Centre:
    vector: np.ndarray  # unit mean of the sampled members' unit vectors
    member_closeness: float  # their mean cosine to it


class _MemberVectors:
    """Unit embeddings of member values, each computed once for all levels."""

    def __init__(self, value_of: dict[str, str | None], facet: Facet, embedder: EmbeddingBackend) -> None:
        self.value_of, self.facet, self.embedder = value_of, facet, embedder
        self.known: dict[str, np.ndarray] = {}

    def centre(self, ids: Sequence[str]) -> _Centre:
        if not ids:
            return _Centre(np.zeros(self.embedder.dim, dtype=np.float32), 0.0)
        new = [c for c in dict.fromkeys(ids) if c not in self.known]
        if new:
            texts = [embedding_text(self.facet, self.value_of[c] or "") for c in new]
            self.known.update(zip(new, normalise_rows(self.embedder.encode(texts))))
        members = np.stack([self.known[c] for c in ids])
        vector = normalise_rows(members.mean(axis=0))
        return _Centre(vector, float(np.mean(members @ vector)))


def _mark(leaf: ClusterNode, rank: int, closeness: float, passed: bool, words: str) -> None:
    leaf.keywords = words or None
    leaf.name_rank = rank
    leaf.name_closeness = round(closeness, 3)
    leaf.weak_name = not passed
    if leaf.weak_name and words:
        leaf.llm_name = leaf.llm_name or leaf.name
        leaf.name = keyword_name(words)
