"""Facet points and conversation records: write, scroll, page a cluster's members, count, look up, delete a user."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from qdrant_client import models

from clio_stream.storage.labels import label_filter
from clio_stream.storage.errors import CollectionMissing
from clio_stream.storage.qdrant import QdrantConnection, eq, from_time, is_empty, match_filter
from clio_stream.storage.records import (
    FACETS_COPY,
    ConversationRecord,
    FacetPoint,
    conversation_point_id,
    label_field,
)

log = logging.getLogger(__name__)


class Points:
    """The facet and conversation collections (their labels: :class:`clio_stream.storage.labels.Labels`)."""

    def __init__(self, conn: QdrantConnection) -> None:
        self.conn = conn

    def upsert_facets(self, points: Sequence[FacetPoint], *, batch: int = 256, wait: bool = True) -> int:
        """Write facet points; a replay of the same (conversation, facet) overwrites. Returns the count."""
        for start in range(0, len(points), batch):
            chunk = points[start : start + batch]
            vectors = np.asarray([np.asarray(p.vector, dtype=np.float32) for p in chunk], dtype=np.float32)
            if self.conn.dim is not None and vectors.shape[1] != self.conn.dim:
                raise ValueError(f"vectors are {vectors.shape[1]}-d, the collection {self.conn.dim}-d")
            with self.conn.guard("upsert facets"):
                self.conn.client.upsert(
                    self.conn.facets,
                    points=models.Batch(
                        ids=[p.id for p in chunk],
                        vectors=vectors.tolist(),
                        payloads=[p.payload() for p in chunk],
                    ),
                    wait=wait,
                )
        return len(points)

    def scroll_vectors(
        self, facet: str, batch: int = 1000, *, without_label: int | None = None, since: float | None = None
    ) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
        """Points of ``facet`` in batches of (ids, float32 vectors, payloads), for re-clustering.

        ``without_label``: only points with no label of that version (the catch-up after a version switch);
        ``since``: only points of conversations from then on, or without a time (a clustering window).
        """
        flt = match_filter(facet=facet)
        if without_label is not None:
            flt = models.Filter(must=[eq("facet", facet), is_empty(label_field(without_label))])
        if since is not None:
            flt = models.Filter(must=[flt, from_time(since)])
        offset: Any = None
        while True:
            with self.conn.guard("scroll vectors"):
                records, offset = self.conn.client.scroll(
                    self.conn.facets, scroll_filter=flt, limit=batch, offset=offset,
                    with_payload=True, with_vectors=True,
                )
            if records:
                ids = [str(r.id) for r in records]
                vectors = np.asarray([r.vector for r in records], dtype=np.float32)
                yield ids, vectors, [dict(r.payload or {}) for r in records]
            if offset is None:
                return

    def numeric_of(self, point_ids: Sequence[str]) -> dict[str, int | None]:
        """The ``numeric`` payload of the facet points with these ids that exist, by id."""
        if not point_ids:
            return {}
        with self.conn.guard("retrieve numeric"):
            found = self.conn.client.retrieve(self.conn.facets, list(point_ids), with_payload=["numeric"],
                                              with_vectors=False)
        return {str(r.id): (r.payload or {}).get("numeric") for r in found}

    def payloads_of(self, point_ids: Sequence[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The ``fields`` of the facet points with these ids that exist, by id."""
        if not point_ids:
            return {}
        with self.conn.guard("retrieve payloads"):
            found = self.conn.client.retrieve(self.conn.facets, list(point_ids), with_payload=list(fields),
                                              with_vectors=False)
        return {str(r.id): dict(r.payload or {}) for r in found}

    def cluster_members(
        self,
        facet: str,
        cluster_id: int,
        limit: int = 100,
        offset_cursor: Any = None,
        *,
        version: int | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[dict[str, Any]], Any]:
        """One page of a cluster's points (payload plus ``id``) and the cursor of the next page (None at the end).

        With ``version``, membership is the version-scoped label (``label_field``); without, the latest label.
        """
        flt = label_filter(facet=facet, cluster_id=int(cluster_id), version=version)
        with self.conn.guard("scroll members"):
            records, nxt = self.conn.client.scroll(
                self.conn.facets, scroll_filter=flt, limit=int(limit), offset=offset_cursor,
                with_payload=True, with_vectors=with_vectors,
            )
        out = []
        for r in records:
            item = {"id": str(r.id), **(r.payload or {})}
            if with_vectors:
                item["vector"] = r.vector
            out.append(item)
        return out, nxt

    def count(
        self,
        facet: str | None = None,
        cluster_id: int | None = None,
        *,
        version: int | None = None,
        user_hash: str | None = None,
    ) -> int:
        """Exact number of facet points matching the given fields (all when none given).

        ``version`` alone counts the points labelled under that version; with ``cluster_id``, that cluster's.
        """
        flt = label_filter(facet=facet, cluster_id=cluster_id, version=version, user_hash=user_hash)
        try:
            with self.conn.guard("count"):
                return int(self.conn.client.count(self.conn.facets, count_filter=flt, exact=True).count)
        except CollectionMissing:
            return 0

    def count_window(self, flt: models.Filter) -> int:
        """Exact number of facet points matching ``flt`` (a clustering window, ``living.window``)."""
        with self.conn.guard("count window"):
            return int(self.conn.client.count(self.conn.facets, count_filter=flt, exact=True).count)

    def mark_conversations(self, records: Sequence[ConversationRecord], *, wait: bool = True) -> int:
        """Write conversation status points (whole payload; raw text only if ``keep_raw``)."""
        if not records:
            return 0
        points = [
            models.PointStruct(id=conversation_point_id(r.conversation_id), vector={},
                               payload=r.payload(self.conn.keep_raw))
            for r in records
        ]
        with self.conn.guard("upsert conversations"):
            self.conn.client.upsert(self.conn.conversations, points=points, wait=wait)
        return len(points)

    def lookup_conversation(self, conversation_id: str) -> tuple[dict[str, Any] | None, bool]:
        """(the doc of ``get_conversation``, whether its ``facets`` are the status point's copy).

        One retrieve when the conversation is processed and its status point carries ``FACETS_COPY``;
        otherwise (pending, or written before the copy existed) the facet points are read as well.
        """
        with self.conn.guard("retrieve conversation"):
            found = self.conn.client.retrieve(self.conn.conversations, [conversation_point_id(conversation_id)],
                                              with_payload=True)
        payload = dict(found[0].payload or {}) if found else None
        if payload is not None and payload.get("status") == "processed" and isinstance(payload.get(FACETS_COPY), dict):
            return payload, True
        facets = self._facets_of(conversation_id)
        if payload is None and not facets:
            return None, False
        doc = payload if payload is not None else {"conversation_id": conversation_id, "status": None}
        doc["facets"] = facets
        return doc, False

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """Status payload plus ``facets`` ({facet: payload with id}); None if nothing is stored."""
        with self.conn.guard("retrieve conversation"):
            found = self.conn.client.retrieve(self.conn.conversations, [conversation_point_id(conversation_id)],
                                              with_payload=True)
        facets = self._facets_of(conversation_id)
        if not found and not facets:
            return None
        doc: dict[str, Any] = dict(found[0].payload or {}) if found else {
            "conversation_id": conversation_id, "status": None,
        }
        doc["facets"] = facets
        return doc

    def _facets_of(self, conversation_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        offset: Any = None
        while True:
            with self.conn.guard("scroll conversation facets"):
                records, offset = self.conn.client.scroll(
                    self.conn.facets, scroll_filter=match_filter(conversation_id=conversation_id),
                    limit=256, offset=offset, with_payload=True, with_vectors=False,
                )
            for r in records:
                payload = dict(r.payload or {})
                out[str(payload.get("facet"))] = {"id": str(r.id), **payload}
            if offset is None:
                return out

    def find_by_content_hash(self, content_hash: str) -> dict[str, dict[str, Any]] | None:
        """Stored facet values ({facet: {"value", "numeric"}}) of a conversation with this content.

        Lets a consumer reuse the LLM's answers for an identical conversation instead of asking again,
        including the same conversation redelivered after a crash before its commit: facet points are
        written only once a conversation's answers are complete, so they are the evidence, not the status
        (a redelivered batch marks its conversations ``pending`` again before processing). The
        conversation with the most stored facets wins; None when no point has this content hash.
        """
        return self.find_by_content_hashes([content_hash]).get(content_hash)

    def find_by_content_hashes(self, content_hashes: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """``find_by_content_hash`` for many hashes in one scroll (a batch's lookups in one round trip):
        content hash -> stored values, for the hashes that have any."""
        wanted = sorted(set(content_hashes))
        if not wanted:
            return {}
        flt = models.Filter(must=[models.FieldCondition(key="content_hash", match=models.MatchAny(any=wanted))])
        by_hash: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        offset: Any = None
        while True:
            with self.conn.guard("scroll content hashes"):
                records, offset = self.conn.client.scroll(self.conn.facets, scroll_filter=flt, limit=512,
                                                          offset=offset, with_payload=True, with_vectors=False)
            for r in records:
                payload = r.payload or {}
                conversations = by_hash.setdefault(str(payload.get("content_hash")), {})
                values = conversations.setdefault(str(payload.get("conversation_id")), {})
                values[str(payload.get("facet"))] = {"value": payload.get("value"), "numeric": payload.get("numeric")}
            if offset is None:
                break
        return {h: max(conversations.values(), key=len) for h, conversations in by_hash.items()}

    def scroll_conversations(self, batch: int = 256, *, status: str | None = "processed"
                             ) -> Iterator[list[dict[str, Any]]]:
        """Conversation status payloads (raw text and metadata where kept), a page at a time."""
        offset: Any = None
        while True:
            with self.conn.guard("scroll conversations"):
                records, offset = self.conn.client.scroll(
                    self.conn.conversations, scroll_filter=match_filter(status=status), limit=batch, offset=offset,
                    with_payload=True, with_vectors=False)
            if records:
                yield [dict(r.payload or {}) for r in records]
            if offset is None:
                return

    def facets_present(self, conversation_ids: Sequence[str], facets: Sequence[str]) -> set[tuple[str, str]]:
        """The (conversation, facet) pairs among these that have a stored facet point."""
        from clio_stream.storage.records import facet_point_id

        wanted = {facet_point_id(c, f): (c, f) for c in conversation_ids for f in facets}
        if not wanted:
            return set()
        with self.conn.guard("retrieve facet points"):
            found = self.conn.client.retrieve(self.conn.facets, list(wanted), with_payload=False, with_vectors=False)
        return {wanted[str(r.id)] for r in found if str(r.id) in wanted}

    def delete_user(self, user_hash: str) -> dict[str, int]:
        """Delete every facet and conversation point of one user; returns how many of each went, by collection."""
        flt = match_filter(user_hash=user_hash)
        removed: dict[str, int] = {}
        for name in (self.conn.facets, self.conn.conversations):
            with self.conn.guard("delete user"):
                n = int(self.conn.client.count(name, count_filter=flt, exact=True).count)
                self.conn.client.delete(name, points_selector=models.FilterSelector(filter=flt), wait=True)
            removed[name] = n
        log.info("deleted user %s…: %s", user_hash[:8], removed)
        return removed
