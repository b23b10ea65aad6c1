"""Qdrant persistence for facets, conversation status and small shared state documents.

Three collections, named ``{prefix}_facets``, ``{prefix}_conversations`` and
``{prefix}_state``:

* facets: one point per (conversation, facet) with the facet value's embedding
  (cosine) and its payload (value, numeric, user hash, timestamp, its cluster under
  each clustering version in that version's own field ``cluster_v<N>`` — readers
  filter on the version they serve — plus the latest ``cluster_id`` / ``cluster_version``,
  similarity, outlier flag, content hash);
* conversations: one vectorless point per conversation (status ``pending`` /
  ``processed``, user hash, timestamp, content hash, and the raw conversation
  only when the store was told it may keep it);
* state: vectorless points holding JSON documents (the current clustering
  version, the online k-means state per facet and version, the version counter)
  and lease locks. Documents shared by clustering jobs are written fenced by the
  writer's version number (``put_fenced``), locks are leases held with a token.

Point ids are uuid5 of a fixed namespace and the natural key, so replaying a
Kafka range overwrites the same points instead of adding duplicates.

Every Qdrant failure surfaces as :class:`StoreError`; the transient kind
(server down, timeout, overload) as its subclass :class:`StoreUnavailable`, so
callers can back off and retry rather than crash or skip data.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from qdrant_client import QdrantClient, models

log = logging.getLogger(__name__)

# Fixed forever: changing it would orphan every stored point.
NAMESPACE = uuid.UUID("6f1c2a52-3b4e-5d8a-9c71-0e2f4b6a8d13")
_SEP = "\x1f"
ConversationStatus = Literal["pending", "processed", "dead_lettered"]

_FACET_INDEXES: dict[str, models.PayloadSchemaType] = {
    "conversation_id": models.PayloadSchemaType.KEYWORD,
    "facet": models.PayloadSchemaType.KEYWORD,
    "cluster_id": models.PayloadSchemaType.INTEGER,
    "cluster_version": models.PayloadSchemaType.INTEGER,
    "user_hash": models.PayloadSchemaType.KEYWORD,
    "content_hash": models.PayloadSchemaType.KEYWORD,
    "timestamp": models.PayloadSchemaType.FLOAT,
}
_CONVERSATION_INDEXES: dict[str, models.PayloadSchemaType] = {
    "conversation_id": models.PayloadSchemaType.KEYWORD,
    "status": models.PayloadSchemaType.KEYWORD,
    "user_hash": models.PayloadSchemaType.KEYWORD,
    "content_hash": models.PayloadSchemaType.KEYWORD,
    "timestamp": models.PayloadSchemaType.FLOAT,
}
_STATE_INDEXES: dict[str, models.PayloadSchemaType] = {
    "kind": models.PayloadSchemaType.KEYWORD,
    "key": models.PayloadSchemaType.KEYWORD,
}


class StoreError(RuntimeError):
    """Qdrant refused or failed an operation."""


class CollectionMissing(StoreError):
    """The collections are not created yet (no worker has started): reads see an empty store."""


class StoreUnavailable(StoreError):
    """Qdrant is unreachable, timing out or overloaded: back off and retry."""


class LockLost(StoreError):
    """A lease ran out or was taken over while its holder still worked: stop before writing anything more."""


# --------------------------------------------------------------------------- ids


WORKER_STATE_PREFIX = "worker:"  # consumers.worker stores its metrics under worker:<id>


def facet_point_id(conversation_id: str, facet: str) -> str:
    """Deterministic id of one (conversation, facet) point."""
    return str(uuid.uuid5(NAMESPACE, f"{conversation_id}{_SEP}{facet}"))


def conversation_point_id(conversation_id: str) -> str:
    """Deterministic id of a conversation's status point."""
    return str(uuid.uuid5(NAMESPACE, f"conversation{_SEP}{conversation_id}"))


def state_point_id(key: str) -> str:
    """Deterministic id of a state document."""
    return str(uuid.uuid5(NAMESPACE, f"state{_SEP}{key}"))


def lock_point_id(name: str) -> str:
    """Deterministic id of a lock document."""
    return str(uuid.uuid5(NAMESPACE, f"lock{_SEP}{name}"))


DELETION_KIND = "deletion"  # state-collection points holding user deletion requests (clio_stream.privacy.requests)


def deletion_point_id(request_id: str) -> str:
    """Deterministic id of a deletion request document."""
    return str(uuid.uuid5(NAMESPACE, f"{DELETION_KIND}{_SEP}{request_id}"))


def centroid_state_key(facet: str, version: int) -> str:
    """State key of the online k-means state of ``facet`` at clustering ``version``."""
    return f"centroids/{facet}/v{int(version)}"


def current_version_key(facet: str) -> str:
    """State key of the pointer to ``facet``'s current clustering version."""
    return f"current_version/{facet}"


VERSION_COUNTER_KEY = "clustering:last_reserved"  # compare-and-set counter: a version number is never handed out twice


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


# --------------------------------------------------------------------------- records


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


# --------------------------------------------------------------------------- errors


def _is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying later (connection, timeout, overload)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio ships with qdrant-client
        grpc = None  # type: ignore[assignment]
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNKNOWN,
        }
    if isinstance(exc, ResponseHandlingException):
        return True  # the HTTP request itself failed: refused, reset, timed out
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code == 429
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


# --------------------------------------------------------------------------- the store


class QdrantStore:
    """The project's only door to Qdrant (server over gRPC, or embedded for tests)."""

    def __init__(
        self,
        location: str = ":memory:",
        *,
        prefix: str = "clio",
        grpc_port: int | None = None,
        prefer_grpc: bool = True,
        timeout_s: float = 30.0,
        api_key: str | None = None,
        keep_raw: bool = False,
        client: QdrantClient | None = None,
    ) -> None:
        """``location``: a server URL (``http://host:6333``), ``":memory:"`` or a folder (embedded).

        ``keep_raw`` decides whether raw conversations may be written at all.
        """
        self.location = location
        self.prefix = prefix
        self.keep_raw = keep_raw
        self.embedded = not location.startswith(("http://", "https://"))
        self.facets = f"{prefix}_facets"
        self.conversations = f"{prefix}_conversations"
        self.state = f"{prefix}_state"
        self._dim: int | None = None
        if client is not None:
            self.client = client
        elif location == ":memory:":
            self.client = QdrantClient(location=":memory:")
        elif self.embedded:
            self.client = QdrantClient(path=location)
        else:
            kwargs: dict[str, Any] = {}
            if grpc_port is not None:
                kwargs["grpc_port"] = int(grpc_port)
            # check_compatibility=False: no extra round trip (and warning) at construction;
            # health() is the place to find out whether the server answers.
            self.client = QdrantClient(
                url=location,
                prefer_grpc=prefer_grpc,
                timeout=int(timeout_s),
                api_key=api_key,
                check_compatibility=False,
                **kwargs,
            )

    @classmethod
    def from_settings(cls, settings: Any) -> QdrantStore:
        """Build from a settings object (``qdrant_url``, ``qdrant_prefix``, ... with defaults)."""
        return cls(
            getattr(settings, "qdrant_url", ":memory:") or ":memory:",
            prefix=getattr(settings, "qdrant_prefix", "clio"),
            grpc_port=getattr(settings, "qdrant_grpc_port", None),
            prefer_grpc=getattr(settings, "qdrant_prefer_grpc", True),
            timeout_s=getattr(settings, "qdrant_timeout_s", 30.0),
            api_key=getattr(settings, "qdrant_api_key", None),
            keep_raw=getattr(settings, "store_raw_conversations", getattr(settings, "show_conversations", False)),
        )

    def close(self) -> None:
        """Close the client's connections (and release an embedded store's folder lock)."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the Qdrant client failed", exc_info=True)

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _guard(self, op: str) -> Iterator[None]:
        """Translate client exceptions into StoreUnavailable / StoreError (programming errors pass)."""
        try:
            yield
        except StoreError:
            raise
        except (TypeError, AttributeError, NameError, AssertionError):
            raise
        except Exception as exc:  # noqa: BLE001 - qdrant-client raises many unrelated types
            if _is_transient(exc):
                raise StoreUnavailable(f"qdrant {op} failed: {_short(exc)}") from exc
            if "doesn't exist" in str(exc) or "Not found: Collection" in str(exc):
                raise CollectionMissing(f"qdrant {op}: {_short(exc)}") from exc
            raise StoreError(f"qdrant {op} failed: {_short(exc)}") from exc

    # ------------------------------------------------------------------ schema

    def health(self) -> bool:
        """True when Qdrant answers a cheap request."""
        try:
            with self._guard("health"):
                self.client.get_collections()
            return True
        except StoreError as exc:
            log.warning("qdrant health check failed: %s", exc)
            return False

    def ensure_collections(self, dim: int) -> None:
        """Create the three collections and their payload indexes if missing (idempotent, race-safe)."""
        self._create(self.facets, models.VectorParams(size=int(dim), distance=models.Distance.COSINE))
        self._create(self.conversations, {})
        self._create(self.state, {})
        with self._guard("get_collection"):
            info = self.client.get_collection(self.facets)
        vectors = info.config.params.vectors
        size = getattr(vectors, "size", None)
        if size is not None and int(size) != int(dim):
            raise StoreError(f"{self.facets} holds {size}-d vectors but the embedder makes {dim}-d ones")
        self._dim = int(dim)
        if self.embedded:
            return  # the embedded engine ignores payload indexes (and warns about each)
        for name, schema in ((self.facets, _FACET_INDEXES), (self.conversations, _CONVERSATION_INDEXES),
                             (self.state, _STATE_INDEXES)):
            for key, kind in schema.items():
                with self._guard("create_payload_index"):
                    self.client.create_payload_index(name, key, field_schema=kind, wait=True)

    def _create(self, name: str, vectors: models.VectorParams | dict[str, Any]) -> None:
        with self._guard("collection_exists"):
            if self.client.collection_exists(name):
                return
        try:
            with self._guard("create_collection"):
                self.client.create_collection(name, vectors_config=vectors)
            log.info("created Qdrant collection %s", name)
        except StoreUnavailable:
            raise
        except StoreError:
            # Another replica may have created it between our check and our create.
            with self._guard("collection_exists"):
                if not self.client.collection_exists(name):
                    raise

    # ------------------------------------------------------------------ facets

    def upsert_facets(self, points: Sequence[FacetPoint], *, batch: int = 256, wait: bool = True) -> int:
        """Write facet points; a replay of the same (conversation, facet) overwrites. Returns the count."""
        for start in range(0, len(points), batch):
            chunk = points[start : start + batch]
            vectors = np.asarray([np.asarray(p.vector, dtype=np.float32) for p in chunk], dtype=np.float32)
            if self._dim is not None and vectors.shape[1] != self._dim:
                raise ValueError(f"vectors are {vectors.shape[1]}-d, the collection {self._dim}-d")
            with self._guard("upsert facets"):
                self.client.upsert(
                    self.facets,
                    points=models.Batch(
                        ids=[p.id for p in chunk],
                        vectors=vectors.tolist(),
                        payloads=[p.payload() for p in chunk],
                    ),
                    wait=wait,
                )
        return len(points)

    def scroll_vectors(
        self, facet: str, batch: int = 1000, *, without_label: int | None = None
    ) -> Iterator[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
        """Points of ``facet`` in batches of (ids, float32 vectors, payloads), for re-clustering.

        ``without_label``: only points with no label of that version (the catch-up after a version switch).
        """
        flt = _match_filter(facet=facet)
        if without_label is not None:
            flt = models.Filter(must=[_eq("facet", facet), _is_empty(label_field(without_label))])
        offset: Any = None
        while True:
            with self._guard("scroll vectors"):
                records, offset = self.client.scroll(
                    self.facets, scroll_filter=flt, limit=batch, offset=offset,
                    with_payload=True, with_vectors=True,
                )
            if records:
                ids = [str(r.id) for r in records]
                vectors = np.asarray([r.vector for r in records], dtype=np.float32)
                yield ids, vectors, [dict(r.payload or {}) for r in records]
            if offset is None:
                return

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
        flt = _label_filter(facet=facet, cluster_id=int(cluster_id), version=version)
        with self._guard("scroll members"):
            records, nxt = self.client.scroll(
                self.facets, scroll_filter=flt, limit=int(limit), offset=offset_cursor,
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
        flt = _label_filter(facet=facet, cluster_id=cluster_id, version=version, user_hash=user_hash)
        try:
            with self._guard("count"):
                return int(self.client.count(self.facets, count_filter=flt, exact=True).count)
        except CollectionMissing:
            return 0

    def set_labels(
        self,
        facet: str,
        labels: Mapping[str, int],
        version: int,
        *,
        similarities: Mapping[str, float] | None = None,
        outliers: Mapping[str, bool] | None = None,
        ops_per_request: int = 500,
    ) -> int:
        """Write cluster ids (and optionally similarity / outlier) of ``facet``'s points under ``version``.

        The label goes into the version's own field (``label_field``) and into ``cluster_id`` /
        ``cluster_version`` (the latest label); other versions' fields are left alone. Points are selected by id *and* facet through a filter, so an id deleted
        in the meantime (a user's deletion) is skipped instead of failing the
        whole batch. Without per-point extras, points of one cluster share one
        operation. Returns the number of ids given.
        """
        ops: list[models.SetPayloadOperation] = []
        if similarities is None and outliers is None:
            by_cluster: dict[int, list[str]] = defaultdict(list)
            for pid, cid in labels.items():
                by_cluster[int(cid)].append(str(pid))
            for cid, ids in by_cluster.items():
                for start in range(0, len(ids), 1000):
                    ops.append(self._set_payload_op(
                        facet, ids[start : start + 1000],
                        {label_field(version): cid, "cluster_id": cid, "cluster_version": int(version)},
                    ))
        else:
            for pid, cid in labels.items():
                payload: dict[str, Any] = {label_field(version): int(cid), "cluster_id": int(cid),
                                           "cluster_version": int(version)}
                if similarities is not None and pid in similarities:
                    payload["similarity"] = float(similarities[pid])
                if outliers is not None and pid in outliers:
                    payload["outlier"] = bool(outliers[pid])
                ops.append(self._set_payload_op(facet, [str(pid)], payload))
        for start in range(0, len(ops), ops_per_request):
            with self._guard("set labels"):
                self.client.batch_update_points(self.facets, ops[start : start + ops_per_request], wait=True)
        return len(labels)

    def index_labels(self, version: int) -> None:
        """Index ``version``'s label field (server only), so filtering a cluster's members stays an index lookup."""
        if self.embedded:
            return
        with self._guard("create label index"):
            self.client.create_payload_index(self.facets, label_field(version),
                                             field_schema=models.PayloadSchemaType.INTEGER, wait=True)

    def drop_labels(self, versions: Sequence[int]) -> None:
        """Remove the label fields (and their indexes) of ``versions`` from every facet point."""
        if not versions:
            return
        keys = [label_field(v) for v in versions]
        with self._guard("drop labels"):
            has_any = models.Filter(should=[models.Filter(must_not=[_is_empty(k)]) for k in keys])
            self.client.delete_payload(self.facets, keys=keys, points=has_any, wait=True)
        if self.embedded:
            return
        existing = set((self._collection_info().payload_schema or {}).keys())
        for key in keys:
            if key in existing:
                with self._guard("drop label index"):
                    self.client.delete_payload_index(self.facets, key, wait=True)

    def _collection_info(self) -> Any:
        with self._guard("get_collection"):
            return self.client.get_collection(self.facets)

    @staticmethod
    def _set_payload_op(facet: str, ids: list[str], payload: dict[str, Any]) -> models.SetPayloadOperation:
        flt = models.Filter(must=[models.HasIdCondition(has_id=ids), _eq("facet", facet)])
        return models.SetPayloadOperation(set_payload=models.SetPayload(payload=payload, filter=flt))

    # ------------------------------------------------------------------ conversations

    def mark_conversations(self, records: Sequence[ConversationRecord], *, wait: bool = True) -> int:
        """Write conversation status points (whole payload; raw text only if ``keep_raw``)."""
        if not records:
            return 0
        points = [
            models.PointStruct(id=conversation_point_id(r.conversation_id), vector={},
                               payload=r.payload(self.keep_raw))
            for r in records
        ]
        with self._guard("upsert conversations"):
            self.client.upsert(self.conversations, points=points, wait=wait)
        return len(points)

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """Status payload plus ``facets`` ({facet: payload with id}); None if nothing is stored."""
        with self._guard("retrieve conversation"):
            found = self.client.retrieve(self.conversations, [conversation_point_id(conversation_id)],
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
            with self._guard("scroll conversation facets"):
                records, offset = self.client.scroll(
                    self.facets, scroll_filter=_match_filter(conversation_id=conversation_id),
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
        with self._guard("scroll content hash"):
            records, _ = self.client.scroll(self.facets, scroll_filter=_match_filter(content_hash=content_hash),
                                            limit=64, with_payload=True, with_vectors=False)
        by_conversation: dict[str, dict[str, dict[str, Any]]] = {}
        for r in records:
            payload = r.payload or {}
            values = by_conversation.setdefault(str(payload.get("conversation_id")), {})
            values[str(payload.get("facet"))] = {"value": payload.get("value"), "numeric": payload.get("numeric")}
        if not by_conversation:
            return None
        return max(by_conversation.values(), key=len)

    def delete_user(self, user_hash: str) -> dict[str, int]:
        """Delete every facet and conversation point of one user; returns how many of each went."""
        flt = _match_filter(user_hash=user_hash)
        removed: dict[str, int] = {}
        for name in (self.facets, self.conversations):
            with self._guard("delete user"):
                n = int(self.client.count(name, count_filter=flt, exact=True).count)
                self.client.delete(name, points_selector=models.FilterSelector(filter=flt), wait=True)
            removed[name] = n
        log.info("deleted user %s…: %s", user_hash[:8], removed)
        return removed

    # ------------------------------------------------------------------ state documents

    def get_state(self, key: str) -> dict[str, Any] | None:
        """The JSON document stored under ``key``, or None."""
        try:
            with self._guard("get state"):
                found = self.client.retrieve(self.state, [state_point_id(key)], with_payload=True)
        except CollectionMissing:
            return None
        if not found:
            return None
        raw = (found[0].payload or {}).get("doc_json")
        return None if raw is None else json.loads(raw)

    def put_state(self, key: str, doc: Mapping[str, Any]) -> None:
        """Store ``doc`` under ``key`` (last writer wins; guard concurrent writers with a lock).

        Kept as a JSON string so Qdrant's payload typing cannot alter it.
        """
        try:
            self._put_state(key, doc)
        except CollectionMissing:
            # State is written before any worker created the collections (a scheduler
            # starting first): the state collection needs no vectors, so make it now.
            self._create(self.state, {})
            self._put_state(key, doc)

    def _put_state(self, key: str, doc: Mapping[str, Any]) -> None:
        payload = {"kind": "state", "key": key, "doc_json": json.dumps(doc, separators=(",", ":")),
                   "updated_at": time.time()}
        with self._guard("put state"):
            self.client.upsert(self.state, points=[models.PointStruct(id=state_point_id(key), vector={},
                                                                       payload=payload)], wait=True)

    def states(self, prefix: str, *, max_age_s: float | None = None) -> dict[str, dict[str, Any]]:
        """Every state document whose key starts with ``prefix`` (e.g. ``worker:``), by key.

        ``max_age_s`` drops documents not rewritten for that long (a worker that stopped).
        Qdrant has no prefix index for keys, so this scrolls the (small) state collection once.
        """
        flt = models.Filter(must=[models.FieldCondition(key="kind", match=models.MatchValue(value="state"))])
        out: dict[str, dict[str, Any]] = {}
        offset: Any = None
        now = time.time()
        try:
            with self._guard("list states"):
                while True:
                    records, offset = self.client.scroll(self.state, scroll_filter=flt, limit=256, offset=offset,
                                                         with_payload=["key", "doc_json", "updated_at"],
                                                         with_vectors=False)
                    for r in records:
                        p = r.payload or {}
                        key, raw, updated = p.get("key"), p.get("doc_json"), p.get("updated_at")
                        if not (isinstance(key, str) and key.startswith(prefix) and isinstance(raw, str)):
                            continue
                        if max_age_s is not None and isinstance(updated, (int, float)) and now - updated > max_age_s:
                            continue
                        out[key] = json.loads(raw)
                    if offset is None:
                        break
        except CollectionMissing:
            return {}
        return out

    def delete_state(self, key: str) -> None:
        """Remove the document under ``key`` (no error if absent)."""
        with self._guard("delete state"):
            self.client.delete(self.state, points_selector=models.PointIdsList(points=[state_point_id(key)]),
                               wait=True)

    def put_centroids(self, facet: str, version: int, state_doc: Mapping[str, Any]) -> None:
        """Store an online k-means state (``OnlineKMeans.to_state()``) for ``facet`` and ``version``."""
        self.put_state(centroid_state_key(facet, version), state_doc)

    def get_centroids(self, facet: str, version: int | None = None) -> dict[str, Any] | None:
        """The stored online k-means state of ``facet`` at ``version`` (default: the current one)."""
        if version is None:
            version = self.current_version(facet)
            if version is None:
                return None
        return self.get_state(centroid_state_key(facet, version))

    def set_current_version(self, facet: str, version: int) -> bool:
        """Point readers at clustering ``version`` of ``facet`` (write its centroids first).

        Fenced by the version number: the pointer never moves backwards, so a run that lost its lease and
        comes back late cannot undo a newer version. False when a newer version is already current.
        """
        return self.put_fenced(current_version_key(facet), {"facet": facet, "version": int(version),
                                                            "published_at": time.time()}, fence=int(version))

    def current_version(self, facet: str) -> int | None:
        """The clustering version readers should use for ``facet``, or None before the first."""
        doc = self.get_state(current_version_key(facet))
        return None if doc is None else int(doc["version"])

    # ------------------------------------------------------------------ deletion requests

    def create_deletion(self, request_id: str, doc: Mapping[str, Any]) -> bool:
        """Store a deletion request unless one with this id exists; True if this call created it.

        A conditional upsert (like ``try_lock``): an existing point never matches the
        filter, so a repeated request keeps the first one's document and status.
        """
        pid = deletion_point_id(request_id)
        cond = models.Filter(must_not=[models.HasIdCondition(has_id=[pid])])
        try:
            self._put_deletion(request_id, doc, update_filter=cond)
        except CollectionMissing:
            self._create(self.state, {})
            self._put_deletion(request_id, doc, update_filter=cond)
        found = self.get_deletion(request_id)
        return found is not None and found == dict(doc)

    def put_deletion(self, request_id: str, doc: Mapping[str, Any]) -> None:
        """Overwrite a deletion request (the process that carries it out records its progress)."""
        self._put_deletion(request_id, doc)

    def _put_deletion(self, request_id: str, doc: Mapping[str, Any],
                      update_filter: models.Filter | None = None) -> None:
        payload = {"kind": DELETION_KIND, "key": request_id, "status": doc.get("status"), "token": doc.get("token"),
                   "doc_json": json.dumps(doc, separators=(",", ":")), "updated_at": time.time()}
        with self._guard("put deletion"):
            self.client.upsert(self.state, points=[models.PointStruct(id=deletion_point_id(request_id), vector={},
                                                                       payload=payload)],
                               update_filter=update_filter, wait=True)

    def get_deletion(self, request_id: str) -> dict[str, Any] | None:
        """The deletion request ``request_id``, or None."""
        try:
            with self._guard("get deletion"):
                found = self.client.retrieve(self.state, [deletion_point_id(request_id)], with_payload=True)
        except CollectionMissing:
            return None
        raw = (found[0].payload or {}).get("doc_json") if found else None
        return None if raw is None else json.loads(raw)

    def deletions(self, status: str | None = None) -> list[dict[str, Any]]:
        """Every deletion request (with ``status``, only those), oldest first."""
        return sorted((json.loads(p["doc_json"]) for p in self._deletion_payloads(status, ["doc_json"])),
                      key=lambda d: float(d.get("requested_at") or 0.0))

    def deny_tokens(self) -> set[str]:
        """The deletion tokens of every request, pending or done: users whose data must not be written again."""
        return {str(p["token"]) for p in self._deletion_payloads(None, ["token"]) if p.get("token")}

    def _deletion_payloads(self, status: str | None, fields: list[str]) -> list[dict[str, Any]]:
        flt = _match_filter(kind=DELETION_KIND, status=status)
        out: list[dict[str, Any]] = []
        offset: Any = None
        try:
            with self._guard("list deletions"):
                while True:
                    records, offset = self.client.scroll(self.state, scroll_filter=flt, limit=1024, offset=offset,
                                                         with_payload=fields, with_vectors=False)
                    out.extend(dict(r.payload or {}) for r in records)
                    if offset is None:
                        return out
        except CollectionMissing:
            return []

    # ------------------------------------------------------------------ fenced writes

    def put_fenced(self, key: str, doc: Mapping[str, Any], *, fence: int) -> bool:
        """Store ``doc`` under ``key`` unless a write with a higher ``fence`` got there first; True if written.

        The fence is a clustering version number, reserved once under the clustering lock
        (``reserve_version``), so it orders writers: a writer that lost its lease carries an older number and
        its late write is refused by Qdrant's conditional upsert (the check and the write are one operation
        on the document's point). A read-back of a fresh write id tells whether it applied.
        """
        write_id = uuid.uuid4().hex
        payload = {"kind": "state", "key": key, "doc_json": json.dumps(doc, separators=(",", ":")),
                   "fence": int(fence), "write_id": write_id, "updated_at": time.time()}
        cond = models.Filter(should=[models.FieldCondition(key="fence", range=models.Range(lte=int(fence))),
                                     _is_empty("fence")])
        return self._conditional_put(key, payload, cond, write_id)

    def reserve_version(self, floor: int = 0, *, attempts: int = 100) -> int:
        """A clustering version number no one got before, above ``floor`` (compare-and-set on a counter).

        Call it holding the clustering lock; the CAS still keeps two holders (a lease lost and retaken)
        from ever getting the same number, so version-scoped writes (centroids, labels, site) never collide.
        """
        for _ in range(attempts):
            doc = self.get_state(VERSION_COUNTER_KEY)
            last = int(doc["last"]) if doc else -1
            version = max(last, int(floor)) + 1
            write_id = uuid.uuid4().hex
            payload = {"kind": "state", "key": VERSION_COUNTER_KEY, "last": version, "write_id": write_id,
                       "doc_json": json.dumps({"last": version}), "updated_at": time.time()}
            # An absent counter point is inserted whatever the filter says; a present one only if unchanged.
            if self._conditional_put(VERSION_COUNTER_KEY, payload, models.Filter(must=[_eq("last", last)]),
                                     write_id):
                return version
            time.sleep(random.uniform(0.0, 0.02))  # lost a race: let the winner's write settle, unsynchronised
        raise StoreError(f"could not reserve a clustering version in {attempts} attempts (contention)")

    def _conditional_put(self, key: str, payload: dict[str, Any], cond: models.Filter, write_id: str) -> bool:
        pid = state_point_id(key)
        point = models.PointStruct(id=pid, vector={}, payload=payload)
        try:
            with self._guard("conditional put"):
                self.client.upsert(self.state, points=[point], update_filter=cond, wait=True)
        except CollectionMissing:
            self._create(self.state, {})
            with self._guard("conditional put"):
                self.client.upsert(self.state, points=[point], update_filter=cond, wait=True)
        with self._guard("conditional put read-back"):
            found = self.client.retrieve(self.state, [pid], with_payload=["write_id"])
        return bool(found) and (found[0].payload or {}).get("write_id") == write_id

    # ------------------------------------------------------------------ locks

    def acquire_lock(self, name: str, owner: str, ttl_s: float) -> str | None:
        """Take the lease ``name`` for ``ttl_s`` seconds; its token if taken, None if someone else holds it.

        The token names this holding: renew, check and release with it. The write is a conditional upsert
        (applies only if the lock point is absent or expired) and Qdrant applies a shard's updates one at a
        time, so on a single node two contenders cannot both win; a read-back of the token confirms it.

        Limits of a lease: expiry compares wall clocks of different hosts (keep them in sync, ``ttl_s`` far
        above the skew); a holder that stalls past ``ttl_s`` may overlap with the next one, which is why the
        clustering writes are fenced by their reserved version number (``put_fenced``); with replication and
        a write consistency below ``all`` a failover may lose a lock write; the embedded mode serves one
        process only.
        """
        now = time.time()
        token = uuid.uuid4().hex
        pid = lock_point_id(name)
        payload = {"kind": "lock", "key": name, "owner": owner, "token": token,
                   "acquired_at": now, "expires_at": now + float(ttl_s)}
        cond = models.Filter(must=[models.FieldCondition(key="expires_at", range=models.Range(lt=now))])
        with self._guard("lock"):
            self.client.upsert(self.state, points=[models.PointStruct(id=pid, vector={}, payload=payload)],
                               update_filter=cond, wait=True)
            found = self.client.retrieve(self.state, [pid], with_payload=True)
        held = bool(found) and (found[0].payload or {}).get("token") == token
        log.debug("lock %s for %s: %s", name, owner, "acquired" if held else "busy")
        return token if held else None

    def renew_lock(self, name: str, token: str, ttl_s: float) -> bool:
        """Extend the lease held with ``token`` by ``ttl_s`` from now; False if that holding is gone.

        Conditional on the token, so a holding that expired and was taken over is never extended.
        """
        pid = lock_point_id(name)
        renewal = uuid.uuid4().hex  # read back to tell whether this renewal applied (floats may not round-trip)
        flt = models.Filter(must=[models.HasIdCondition(has_id=[pid]), _eq("token", token)])
        with self._guard("renew lock"):
            self.client.set_payload(self.state, payload={"expires_at": time.time() + float(ttl_s),
                                                         "renewal": renewal}, points=flt, wait=True)
            found = self.client.retrieve(self.state, [pid], with_payload=True)
        doc = (found[0].payload or {}) if found else {}
        return doc.get("token") == token and doc.get("renewal") == renewal

    def check_lock(self, name: str, token: str) -> None:
        """Raise :class:`LockLost` unless the lease ``name`` is still held, unexpired, with ``token``."""
        holder = self.lock_holder(name)
        if holder is None or holder.get("token") != token:
            raise LockLost(f"lock {name!r} is no longer held with this token "
                           f"(holder: {None if holder is None else holder.get('owner')})")

    def release_lock(self, name: str, token: str) -> bool:
        """Drop the lease if still held with ``token`` (conditional delete); True if it was."""
        pid = lock_point_id(name)
        with self._guard("unlock"):
            found = self.client.retrieve(self.state, [pid], with_payload=True)
            mine = bool(found) and (found[0].payload or {}).get("token") == token
            flt = models.Filter(must=[models.HasIdCondition(has_id=[pid]), _eq("token", token)])
            self.client.delete(self.state, points_selector=models.FilterSelector(filter=flt), wait=True)
        return mine

    def lease(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        """Take the lock ``name`` and keep renewing it in the background; None if someone else holds it.

        With renewal, ``ttl_s`` does not have to outlast the longest job: it only bounds how long a holder
        that died (SIGKILL, lost host) blocks the next one. Release it with ``Lease.release()`` (or ``with``).
        """
        token = self.acquire_lock(name, owner, ttl_s)
        if token is None:
            return None
        return Lease(self, name, owner, token, ttl_s).start()

    def lock_holder(self, name: str) -> dict[str, Any] | None:
        """The current lease document (owner, token, expires_at) if unexpired, else None."""
        with self._guard("lock holder"):
            found = self.client.retrieve(self.state, [lock_point_id(name)], with_payload=True)
        if not found:
            return None
        doc = dict(found[0].payload or {})
        return doc if float(doc.get("expires_at", 0.0)) > time.time() else None


class Lease:
    """A held store lock, renewed every third of its TTL by a daemon thread until ``release``.

    If a renewal finds the holding gone (it expired while Qdrant was unreachable, or the clocks disagree),
    the lease is marked lost and ``check()`` raises :class:`LockLost`, so the holder stops before its next
    write instead of racing the new holder. ``check()`` also asks the store, so it holds at the moment of
    the write, not only at the last renewal. A renewal that fails because Qdrant is down is retried until
    the lease would have expired.
    """

    def __init__(self, store: QdrantStore, name: str, owner: str, token: str, ttl_s: float) -> None:
        self.store, self.name, self.owner, self.token, self.ttl_s = store, name, owner, token, float(ttl_s)
        self.expires_at = time.time() + self.ttl_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{name}", daemon=True)

    def start(self) -> Lease:
        self._thread.start()
        return self

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3.0):
            try:
                renewed = self.store.renew_lock(self.name, self.token, self.ttl_s)
            except StoreError as exc:
                if time.time() >= self.expires_at:
                    self.lost = f"not renewed before it expired ({exc})"
                    log.error("lock %s of %s lost: %s", self.name, self.owner, self.lost)
                    return
                log.warning("renewing lock %s failed (%s); retrying", self.name, exc)
                continue
            if not renewed:
                self.lost = f"taken over by {(self.store.lock_holder(self.name) or {}).get('owner')}"
                log.error("lock %s of %s lost: %s", self.name, self.owner, self.lost)
                return
            self.expires_at = time.time() + self.ttl_s

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lease is still ours (call before each write)."""
        if self.lost is not None:
            raise LockLost(f"lock {self.name!r} of {self.owner}: {self.lost}")
        if time.time() >= self.expires_at:
            raise LockLost(f"lock {self.name!r} of {self.owner}: expired (renewals failed)")
        self.store.check_lock(self.name, self.token)

    def release(self) -> bool:
        """Stop renewing and drop the lock if still ours; True if it was."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if self.lost is not None:
            return False
        return self.store.release_lock(self.name, self.token)


# --------------------------------------------------------------------------- helpers


def _eq(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _is_empty(key: str) -> models.IsEmptyCondition:
    return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))


def _label_filter(*, facet: str | None = None, cluster_id: int | None = None, version: int | None = None,
                  user_hash: str | None = None) -> models.Filter | None:
    """Points of ``facet`` (and ``user_hash``) in ``cluster_id`` under ``version`` (see ``label_field``).

    ``version`` without a cluster: every point labelled under it; a cluster without a version: the latest label.
    """
    must: list[Any] = [_eq(k, v) for k, v in (("facet", facet), ("user_hash", user_hash)) if v is not None]
    if version is not None and cluster_id is not None:
        must.append(_eq(label_field(version), int(cluster_id)))
    elif cluster_id is not None:
        must.append(_eq("cluster_id", int(cluster_id)))
    flt = models.Filter(must=must) if must else None
    if version is not None and cluster_id is None:
        flt = models.Filter(must=must, must_not=[_is_empty(label_field(version))])
    return flt


def _match_filter(**fields: Any) -> models.Filter | None:
    """AND of equality conditions for the fields that are not None."""
    must = [_eq(k, v) for k, v in fields.items() if v is not None]
    return models.Filter(must=must) if must else None


def _short(exc: BaseException) -> str:
    """One line for logs: gRPC errors print several lines, their ``details()`` is the useful part."""
    details = getattr(exc, "details", None)
    if callable(details):
        try:
            code = exc.code()  # type: ignore[attr-defined]
            return f"{type(exc).__name__}: {getattr(code, 'name', code)}: {details()}"[:300]
        except Exception:  # noqa: BLE001 - fall back to str()
            pass
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
