"""What one stored point holds: a facet value with its embedding, a conversation's status, and the label fields.

* facets: one point per (conversation, facet) with the facet value's embedding (cosine) and its payload
  (value, numeric, user hash, timestamp, its cluster under each clustering version in that version's own
  field ``cluster_v<N>`` — readers filter on the version they serve — plus the latest ``cluster_id`` /
  ``cluster_version``, similarity, outlier flag, content hash);
* conversations: one vectorless point per conversation (status ``pending`` / ``processed``, user hash,
  timestamp, content hash, and the raw conversation only when the store was told it may keep it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from clio_stream.storage.qdrant import point_id

ConversationStatus = Literal["pending", "processed", "dead_lettered"]


def facet_point_id(conversation_id: str, facet: str) -> str:
    """Deterministic id of one (conversation, facet) point."""
    return point_id(conversation_id, facet)


def conversation_point_id(conversation_id: str) -> str:
    """Deterministic id of a conversation's status point."""
    return point_id("conversation", conversation_id)


def label_field(version: int) -> str:
    """Payload field holding a point's cluster under clustering ``version``.

    One field per version, so writing version N's labels leaves N-1's readable: readers filter on the version
    they serve, and nothing they page through changes under them until they switch.
    """
    return f"cluster_v{int(version)}"


def label_of(payload: Mapping[str, Any], version: int) -> int | None:
    """A point's cluster under ``version`` (None when it has no label of that version)."""
    value = payload.get(label_field(version))
    return None if value is None else int(value)


@dataclass
class FacetPoint:
    """One facet value of one conversation, with its embedding (a dataclass: no per-float validation)."""

    conversation_id: str
    facet: str
    vector: np.ndarray | Sequence[float]
    value: str | None = None
    numeric: int | None = None
    user_hash: str | None = None
    timestamp: float | None = None
    cluster_id: int | None = None
    cluster_version: int | None = None
    similarity: float | None = None
    outlier: bool = False
    content_hash: str | None = None
    metadata: dict[str, str] | None = None  # bounded (domain.metadata.bound_metadata); declared keys are indexed

    @property
    def id(self) -> str:
        return facet_point_id(self.conversation_id, self.facet)

    def payload(self) -> dict[str, Any]:
        """The JSON payload stored with the vector (with the version-scoped label when assigned)."""
        out = {
            "conversation_id": self.conversation_id,
            "facet": self.facet,
            "value": self.value,
            "numeric": None if self.numeric is None else int(self.numeric),
            "user_hash": self.user_hash,
            "timestamp": None if self.timestamp is None else float(self.timestamp),
            "cluster_id": None if self.cluster_id is None else int(self.cluster_id),
            "cluster_version": None if self.cluster_version is None else int(self.cluster_version),
            "similarity": None if self.similarity is None else float(self.similarity),
            "outlier": bool(self.outlier),
            "content_hash": self.content_hash,
        }
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        if self.cluster_id is not None and self.cluster_version is not None:
            out[label_field(self.cluster_version)] = int(self.cluster_id)
        return out


@dataclass
class ConversationRecord:
    """Processing status of one conversation; ``raw`` is kept only if the store allows it."""

    conversation_id: str
    status: ConversationStatus = "pending"
    user_hash: str | None = None
    timestamp: float | None = None
    content_hash: str | None = None
    raw: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self, keep_raw: bool) -> dict[str, Any]:
        """The JSON payload; drops ``raw`` unless ``keep_raw``."""
        out = {
            **self.extra,
            "conversation_id": self.conversation_id,
            "status": self.status,
            "user_hash": self.user_hash,
            "timestamp": None if self.timestamp is None else float(self.timestamp),
            "content_hash": self.content_hash,
            "updated_at": time.time(),
        }
        if keep_raw and self.raw is not None:
            out["raw"] = self.raw
        return out
