"""What the streaming workers stored, read back for a clustering job: one scroll of every facet's points.

The bootstrap and the re-clustering job cluster the same thing (each hierarchy facet's embedded values, as unit
vectors); the re-clustering job also needs every conversation's facet values, user and time to name, annotate
and publish. Both come from this one scroll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.facets import Facet
from clio_stream.domain.vectors import normalise_rows
from clio_stream.storage.store import QdrantStore


@dataclass
class StoredFacet:
    """One hierarchy facet's embedded values as stored: point ids, unit vectors, conversation ids, texts."""

    point_ids: list[str]
    vectors: np.ndarray
    conversation_ids: list[str]
    values: list[str]


@dataclass
class StoredConversation:
    """One conversation as the workers stored it: its keyed user hash, time, and each facet's (value, numeric)."""

    user_hash: str | None
    timestamp: float | None
    values: dict[str, tuple[str | None, float | None]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)  # bounded at ingest (domain.metadata)


@dataclass
class Stored:
    """The scroll: hierarchy facets' vectors by facet name, and every stored conversation by id."""

    facets: dict[str, StoredFacet]
    conversations: dict[str, StoredConversation]

    def clusterable(self) -> list[str]:
        """Hierarchy facets with at least one embedded value, in scroll order."""
        return [name for name, s in self.facets.items() if s.point_ids]

    def as_conversations(self, facets: Sequence[Facet]) -> tuple[list[Conversation], list[ConversationFacets]]:
        """The stored conversations (sorted by id, no text) and their facet values, as the batch stages take them."""
        ids = sorted(self.conversations)
        conversations = [Conversation(id=cid, messages=[Message(role="user", content="")],
                                      user_id=self.conversations[cid].user_hash,
                                      timestamp=self.conversations[cid].timestamp,
                                      metadata=self.conversations[cid].metadata) for cid in ids]
        values = []
        for cid in ids:
            stored = self.conversations[cid].values
            values.append(ConversationFacets(conversation_id=cid, values={
                f.name: FacetValue(facet=f.name, value=stored.get(f.name, (None, None))[0],
                                   numeric=stored.get(f.name, (None, None))[1]) for f in facets}))
        return conversations, values


def load_stored(store: QdrantStore, facets: Sequence[Facet]) -> Stored:
    """Scroll every facet of ``facets``: vectors of the hierarchy facets' embedded values, and per conversation
    its facet payloads (zero vectors mean "not embedded"; points without a conversation id are skipped)."""
    stored: dict[str, StoredFacet] = {}
    conversations: dict[str, StoredConversation] = {}
    for f in facets:
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        convs: list[str] = []
        values: list[str] = []
        for batch_ids, vectors, payloads in store.points.scroll_vectors(f.name):
            norms = np.linalg.norm(vectors, axis=1) if len(vectors) else []
            for pid, vec, norm, payload in zip(batch_ids, vectors, norms, payloads):
                cid = payload.get("conversation_id")
                if not cid:
                    continue
                entry = conversations.setdefault(cid, StoredConversation(payload.get("user_hash"),
                                                                         payload.get("timestamp")))
                if payload.get("metadata") and not entry.metadata:
                    entry.metadata = {str(k): str(v) for k, v in dict(payload["metadata"]).items()}
                entry.values[f.name] = (payload.get("value"), payload.get("numeric"))
                if f.has_hierarchy and payload.get("value") and norm > 0:
                    ids.append(pid)
                    vecs.append(vec)
                    convs.append(cid)
                    values.append(payload["value"])
        if f.has_hierarchy:
            dim = vecs[0].shape[0] if vecs else 0
            stored[f.name] = StoredFacet(ids, normalise_rows(np.asarray(vecs, dtype=np.float32).reshape(len(vecs), dim)),
                                         convs, values)
    return Stored(stored, conversations)
