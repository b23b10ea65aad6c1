"""The Qdrant connection every storage class shares: client, collection names, schema, health, point ids, filters.

Three collections, named ``{prefix}_facets``, ``{prefix}_conversations`` and ``{prefix}_state``
(see :mod:`clio_stream.storage.points`, :mod:`~clio_stream.storage.state`, :mod:`~clio_stream.storage.locks`,
:mod:`~clio_stream.storage.deletions` for what each holds).

Every client call runs under ``guard`` (:mod:`clio_stream.storage.errors`), so a Qdrant failure surfaces as
a ``StoreError``. Point ids are uuid5 of :data:`NAMESPACE` and a natural key, so replaying a Kafka
range overwrites the same points instead of adding duplicates.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qdrant_client import QdrantClient, models

from clio_stream.settings import ClioSettings
from clio_stream.storage.errors import CollectionMissing, StoreError, StoreUnavailable, translate_errors

log = logging.getLogger(__name__)

# Fixed forever: changing it would orphan every stored point.
NAMESPACE = uuid.UUID("6f1c2a52-3b4e-5d8a-9c71-0e2f4b6a8d13")
_SEP = "\x1f"

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


# Accept uncompressed gRPC answers only: by default the client offers gzip and the server then compresses every
# answer, which made reading vectors back 10-30x slower than the transfer itself (float32 barely compresses).
GRPC_OPTIONS: dict[str, Any] = {"grpc.compression_enabled_algorithms_bitset": 1}


def point_id(*parts: str) -> str:
    """Deterministic point id of a natural key (its parts joined by a separator no key contains)."""
    return str(uuid.uuid5(NAMESPACE, _SEP.join(parts)))


@dataclass(frozen=True)
class CollectionLayout:
    """How new collections keep their data (``qdrant_*`` settings; an existing collection keeps its own).

    clio-stream scrolls facet vectors and never searches them, so the HNSW graph (``hnsw_m``) is optional;
    ``int8`` keeps a quantised copy in RAM (a quarter of the float32 size) and, with ``vectors_on_disk``, the
    originals memory-mapped; ``payload_on_disk`` keeps payloads on disk (the indexed fields stay in RAM).

    ``shard_number`` applies to the facet and conversation collections, the two that grow with the store:
    they are what a Qdrant cluster must spread over its nodes (on one node a second shard did not speed up
    the assignment pass: docs/scaling.md section 6). The state collection (leases,
    versions, small documents) stays at one shard: it is small and gains nothing from being split. The
    embedded engine has no shards; it ignores this (like the rest of the layout).
    """

    quantization: str = "none"  # "none" or "int8"
    vectors_on_disk: bool = False
    payload_on_disk: bool = False
    hnsw_m: int = 16
    shard_number: int = 1

    def vectors(self, dim: int) -> models.VectorParams:
        return models.VectorParams(size=int(dim), distance=models.Distance.COSINE, on_disk=self.vectors_on_disk)

    def quantization_config(self) -> models.ScalarQuantization | None:
        if self.quantization != "int8":
            return None
        return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
            type=models.ScalarType.INT8, quantile=0.99, always_ram=True))


class QdrantConnection:
    """One Qdrant client (server over gRPC, or embedded for tests) and the names of its three collections."""

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
        metadata_index: tuple[str, ...] = (),
        client: QdrantClient | None = None,
        layout: CollectionLayout | None = None,
    ) -> None:
        """``location``: a server URL (``http://host:6333``), ``":memory:"`` or a folder (embedded).

        ``keep_raw`` decides whether raw conversations may be written at all.
        """
        self.location = location
        self.prefix = prefix
        self.prefer_grpc = prefer_grpc
        self.timeout_s = timeout_s
        self.keep_raw = keep_raw
        self.layout = layout or CollectionLayout()
        self.metadata_index = tuple(metadata_index)  # declared metadata keys to index (``metadata.<key>``)
        self.embedded = not location.startswith(("http://", "https://"))
        self.facets = f"{prefix}_facets"
        self.conversations = f"{prefix}_conversations"
        self.state = f"{prefix}_state"
        self.dim: int | None = None
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
                grpc_options=dict(GRPC_OPTIONS),  # a copy: the client adds its own keys to it
                **kwargs,
            )

    @staticmethod
    def options(settings: ClioSettings) -> dict[str, Any]:
        """Constructor arguments from the settings (``qdrant_*`` and ``store_raw_conversations``)."""
        return {
            "location": settings.qdrant_url or ":memory:",
            "prefix": settings.qdrant_prefix,
            "grpc_port": settings.qdrant_grpc_port,
            "prefer_grpc": settings.qdrant_prefer_grpc,
            "timeout_s": settings.qdrant_timeout_s,
            "api_key": settings.qdrant_api_key,
            "keep_raw": settings.store_raw_conversations,
            "layout": CollectionLayout(settings.qdrant_quantization, settings.qdrant_vectors_on_disk,
                                       settings.qdrant_payload_on_disk, settings.qdrant_hnsw_m,
                                       settings.qdrant_shard_number),
            "metadata_index": tuple(k.name for k in settings.metadata_keys if k.indexed),
        }

    def close(self) -> None:
        """Close the client's connections (and release an embedded store's folder lock)."""
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the Qdrant client failed", exc_info=True)

    guard = staticmethod(translate_errors)  # ``with conn.guard("op"):`` around every client call

    def health(self) -> bool:
        """True when Qdrant answers a cheap request."""
        try:
            with self.guard("health"):
                self.client.get_collections()
            return True
        except StoreError as exc:
            log.warning("qdrant health check failed: %s", exc)
            return False

    def collections_exist(self) -> bool:
        """Whether a worker has created the facet and state collections (raises when Qdrant cannot be asked)."""
        with self.guard("collection_exists"):
            return all(self.client.collection_exists(name) for name in (self.facets, self.state))

    def ensure_collections(self, dim: int) -> None:
        """Create the three collections and their payload indexes if missing (idempotent, race-safe)."""
        self.create(self.facets, self.layout.vectors(dim), layout=self.layout)
        self.create(self.conversations, {}, layout=self.layout)
        self.create(self.state, {})
        vectors = self.facet_collection_info().config.params.vectors
        size = getattr(vectors, "size", None)
        if size is not None and int(size) != int(dim):
            raise StoreError(f"{self.facets} holds {size}-d vectors but the embedder makes {dim}-d ones")
        self.dim = int(dim)
        if self.embedded:
            return  # the embedded engine ignores payload indexes (and warns about each)
        metadata = {f"metadata.{k}": models.PayloadSchemaType.KEYWORD for k in self.metadata_index}
        for name, schema in ((self.facets, {**_FACET_INDEXES, **metadata}),
                             (self.conversations, {**_CONVERSATION_INDEXES, **metadata}), (self.state, _STATE_INDEXES)):
            for key, kind in schema.items():
                with self.guard("create_payload_index"):
                    self.client.create_payload_index(name, key, field_schema=kind, wait=True)

    def create(self, name: str, vectors: models.VectorParams | dict[str, Any], *,
               layout: CollectionLayout | None = None) -> None:
        """Create collection ``name`` unless it exists (another replica may create it at the same time).

        ``layout``: quantisation, on-disk vectors and payload, HNSW degree, shards (None: Qdrant's defaults).
        An existing collection keeps its own (Qdrant cannot re-shard one in place).
        """
        with self.guard("collection_exists"):
            if self.client.collection_exists(name):
                return
        extra: dict[str, Any] = {}
        if layout is not None and not self.embedded:  # the embedded engine has none of these
            extra = {"on_disk_payload": layout.payload_on_disk, "shard_number": int(layout.shard_number)}
            if isinstance(vectors, models.VectorParams):
                extra.update(hnsw_config=models.HnswConfigDiff(m=layout.hnsw_m),
                             quantization_config=layout.quantization_config())
        try:
            with self.guard("create_collection"):
                self.client.create_collection(name, vectors_config=vectors, **extra)
            log.info("created Qdrant collection %s", name)
        except StoreUnavailable:
            raise
        except StoreError:
            # Another replica may have created it between our check and our create.
            with self.guard("collection_exists"):
                if not self.client.collection_exists(name):
                    raise

    def vector_size(self) -> int:
        """Dimension of the facet collection's vectors (as created)."""
        if self.dim is None:
            self.dim = int(self.facet_collection_info().config.params.vectors.size)
        return self.dim

    def facet_collection_info(self) -> Any:
        with self.guard("get_collection"):
            return self.client.get_collection(self.facets)

    def upsert_state_point(self, pid: str, payload: dict[str, Any], update_filter: models.Filter | None = None,
                           op: str = "put state") -> None:
        """Write one vectorless point of the state collection, creating the collection when it is missing.

        State is written before any worker created the collections (a scheduler or the API starting
        first): the state collection needs no vectors, so it is made on the spot.
        """
        point = models.PointStruct(id=pid, vector={}, payload=payload)
        try:
            with self.guard(op):
                self.client.upsert(self.state, points=[point], update_filter=update_filter, wait=True)
        except CollectionMissing:
            self.create(self.state, {})
            with self.guard(op):
                self.client.upsert(self.state, points=[point], update_filter=update_filter, wait=True)

    def state_payload(self, pid: str, op: str, fields: bool | list[str] = True) -> dict[str, Any] | None:
        """The payload of one state-collection point, or None (also when the collection is missing)."""
        try:
            with self.guard(op):
                found = self.client.retrieve(self.state, [pid], with_payload=fields)
        except CollectionMissing:
            return None
        return dict(found[0].payload or {}) if found else None

    def scroll_state(self, flt: models.Filter, fields: list[str], op: str) -> Iterator[dict[str, Any]]:
        """Payloads (``fields`` only) of every state point matching ``flt``; nothing when the collection is missing."""
        offset: Any = None
        try:
            while True:
                with self.guard(op):
                    records, offset = self.client.scroll(self.state, scroll_filter=flt, limit=256, offset=offset,
                                                         with_payload=fields, with_vectors=False)
                for r in records:
                    yield dict(r.payload or {})
                if offset is None:
                    return
        except CollectionMissing:
            return


# --------------------------------------------------------------------------- filters


def eq(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def is_empty(key: str) -> models.IsEmptyCondition:
    return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))


def match_filter(**fields: Any) -> models.Filter | None:
    """AND of equality conditions for the fields that are not None."""
    must = [eq(k, v) for k, v in fields.items() if v is not None]
    return models.Filter(must=must) if must else None


def from_time(start: float) -> models.Filter:
    """Points of conversations from ``start`` on, or without a conversation time (a clustering window)."""
    return models.Filter(should=[
        models.FieldCondition(key="timestamp", range=models.Range(gte=float(start))),
        models.IsNullCondition(is_null=models.PayloadField(key="timestamp")),
        is_empty("timestamp"),
    ])
