"""The streaming core: one polled batch of records in, everything to write out.

``process_batch`` decodes the records, reuses the facet values of conversations
already processed with identical content, asks the LLM every facet question of
the rest in ONE batched call (a conversation's prompts adjacent, so vLLM's
prefix cache computes its text once), embeds the values of hierarchy facets in
one call, assigns them to the current online k-means clusters and gathers the
centroid deltas. It returns what the caller must write; it writes nothing and
never touches Kafka, so it runs in unit tests with fakes and an in-memory store.

The only I/O it does is reading: the store's content-hash lookup and the LLM
and embedder calls. Failures say whose fault they are: a failing LLM raises
:class:`consumers.llm_guard.LLMUnavailable` and a failing store :class:`clio_stream.storage.qdrant.StoreError`
(the caller backs off and retries the batch, never dead-letters it); an LLM that
refuses a prompt for good raises :class:`~consumers.llm_guard.RecordRejected` (the caller isolates the
record and dead-letters it). Records that do not decode never raise: they come
back as dead letters.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from clio_stream.stages.prepare import truncate_conversation
from clio_stream.embedding import EmbeddingBackend, embedding_text
from clio_stream.stages.extract import extract_facets
from clio_stream.domain.facets import Facet
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.online.assignment import Assignment
from clio_stream.online.deltas import CentroidDeltas
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.ops.faults import reach
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import FACETS_COPY, ConversationRecord, FacetPoint
from clio_stream.domain.conversation import FacetValue
from consumers.decoding import DeadLetter, DecodedBatch, DecodedConversation, RecordLike, decode_records, offset_ranges
from consumers.llm_guard import GuardedLLM
from consumers.status_records import conversation_record

log = logging.getLogger(__name__)


class StoreReader(Protocol):
    """The one store call the core makes (``QdrantStore.points`` fits)."""

    def find_by_content_hashes(self, content_hashes: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]: ...


@dataclass
class BatchOutcome:
    """Everything one batch produced, for the caller to write in order, then commit ``offsets``."""

    facet_points: list[FacetPoint]
    conversations: list[ConversationRecord]
    dead_letters: list[DeadLetter]
    deltas: list[CentroidDeltas]
    offsets: dict[tuple[str, int], tuple[int, int]]  # (topic, partition) -> (first, last) offset
    dead_lettered: list[ConversationRecord] = field(default_factory=list)  # marked pending, then dead-lettered
    duplicates: int = 0
    reused_by_hash: int = 0
    llm_calls: int = 0
    llm_prompts: int = 0
    unparseable: int = 0
    assigned: dict[str, int] = field(default_factory=dict)  # facet -> vectors assigned to a cluster
    outliers: dict[str, int] = field(default_factory=dict)  # facet -> of those, outliers
    seconds: float = 0.0
    llm_seconds: float = 0.0  # of ``seconds``: facet values (content-hash reuse and the LLM call)
    embed_seconds: float = 0.0  # of ``seconds``: embedding the values

    @property
    def processed(self) -> int:
        """Conversations stored by this batch (duplicates and dead letters excluded)."""
        return len(self.conversations)


# --------------------------------------------------------------------------- facet values


def _reusable(found: Mapping[str, Mapping[str, Any]] | None, facets: Sequence[Facet]) -> dict[str, FacetValue] | None:
    """Stored values usable as they are: every facet present with a value."""
    if not found:
        return None
    out: dict[str, FacetValue] = {}
    for f in facets:
        stored = found.get(f.name)
        if not stored or stored.get("value") is None:
            return None
        numeric = stored.get("numeric")
        out[f.name] = FacetValue(facet=f.name, value=str(stored["value"]),
                                 numeric=None if numeric is None else int(numeric))
    return out


def facet_values(
    items: Sequence[DecodedConversation],
    facets: Sequence[Facet],
    llm: GuardedLLM,
    store: StoreReader,
    settings: ClioSettings,
    stats: AskStats,
) -> tuple[dict[str, dict[str, FacetValue]], int]:
    """Facet values by content hash, and how many conversations needed no LLM call.

    Identical conversations (in the store, or earlier in this batch) share one
    answer: the LLM is asked once per distinct content.
    """
    by_hash: dict[str, dict[str, FacetValue]] = {}
    to_ask: list[DecodedConversation] = []
    asked: set[str] = set()
    stored = store.find_by_content_hashes([i.content_hash for i in items]) if settings.dedup and items else {}
    for item in items:
        h = item.content_hash
        if h in by_hash or h in asked:
            continue
        reuse = _reusable(stored.get(h), facets) if settings.dedup else None
        if reuse is not None:
            by_hash[h] = reuse
        else:
            to_ask.append(item)
            asked.add(h)
    if to_ask:
        truncated = [truncate_conversation(i.conversation, settings.max_conversation_tokens, llm.count_tokens)[0]
                     for i in to_ask]
        # batch_size covers the whole batch: one generate call (plus re-asks of unparseable answers).
        results = extract_facets(
            truncated, facets, llm, sampling=settings.llm_sampling_args, retries=settings.llm_max_retries,
            seed=settings.seed, batch_size=max(settings.llm_batch_size, len(to_ask) * len(facets)), stats=stats,
            prefix_group=settings.facet_prefix_group,
            settings=settings,
            layout=settings.facet_layout,
        )
        for item, cf in zip(to_ask, results):
            by_hash[item.content_hash] = cf.values
    return by_hash, len(items) - len(to_ask)


def embed_values(texts: Sequence[str], embedder: EmbeddingBackend) -> dict[str, np.ndarray]:
    """One ``encode`` call for the distinct texts; text -> unit vector."""
    unique = list(dict.fromkeys(t for t in texts if t))
    if not unique:
        return {}
    mat = np.asarray(embedder.encode(unique), dtype=np.float32)
    return {t: mat[i] for i, t in enumerate(unique)}


# --------------------------------------------------------------------------- clusters


def assign_facet(
    facet: Facet,
    rows: Sequence[int],
    vectors: np.ndarray,
    records: Sequence[RecordLike],
    model: OnlineKMeans,
    ranges: Mapping[tuple[str, int], tuple[int, int]],
) -> tuple[dict[int, Assignment], list[CentroidDeltas]]:
    """Assign ``vectors`` (one per row) with ``model``; deltas per source partition, keyed by record offsets.

    The model itself does not move: its centroids change only when the deltas
    come back from the shared topic, the same way on every replica. Each delta
    speaks for the partition's whole polled range, so a record that gave no
    value is known to have contributed nothing.
    """
    batch = model.assign_many(vectors)
    by_partition: dict[tuple[str, int], list[int]] = defaultdict(list)
    for k, row in enumerate(rows):
        by_partition[(records[row].topic, records[row].partition)].append(k)
    deltas: list[CentroidDeltas] = []
    for (topic, partition), ks in by_partition.items():
        idx = np.asarray(ks, dtype=np.int64)
        first, last = ranges[(topic, partition)]
        offsets = np.array([records[rows[k]].offset for k in ks], dtype=np.int64)
        deltas.extend(CentroidDeltas.for_records(facet.name, model.version, topic, partition, first, last, offsets,
                                                 batch.labels[idx], batch.rows[idx], batch.outliers[idx]))
    return {row: batch[k] for k, row in enumerate(rows)}, deltas


# --------------------------------------------------------------------------- the batch

RowValues = dict[tuple[int, str], FacetValue | None]  # (row of the decoded batch, facet) -> its value, if any


def values_by_row(items: Sequence[DecodedConversation], facets: Sequence[Facet],
                  by_hash: Mapping[str, Mapping[str, FacetValue]]) -> RowValues:
    """Each row's value of each facet: rows with the same content share one answer."""
    return {(row, f.name): by_hash[item.content_hash].get(f.name) for row, item in enumerate(items) for f in facets}


def rows_with_value(facet: Facet, n_rows: int, value_of: RowValues) -> list[int]:
    """The rows that gave ``facet`` a (non-empty) value: the only ones embedded and assigned."""
    return [r for r in range(n_rows) if (fv := value_of[(r, facet.name)]) is not None and fv.value]


def embed_tree_values(tree: Sequence[Facet], n_rows: int, value_of: RowValues,
                      embedder: EmbeddingBackend) -> dict[str, np.ndarray]:
    """The vectors of the hierarchy facets' values, in one embedder call: embedding text -> vector."""
    return embed_values([embedding_text(f, value_of[(r, f.name)].value)  # type: ignore[union-attr]
                         for f in tree for r in rows_with_value(f, n_rows, value_of)], embedder)


@dataclass
class BatchAssignments:
    """Where the batch's values went in the online clusters, and the centroid deltas that follow."""

    assignments: dict[tuple[int, str], Assignment] = field(default_factory=dict)  # (row, facet) -> its cluster
    versions: dict[str, int] = field(default_factory=dict)  # facet -> the clustering version assigned to
    deltas: list[CentroidDeltas] = field(default_factory=list)
    assigned: dict[str, int] = field(default_factory=dict)  # facet -> vectors assigned to a cluster
    outliers: dict[str, int] = field(default_factory=dict)  # facet -> of those, outliers


def assign_batch(tree: Sequence[Facet], records: Sequence[RecordLike], value_of: RowValues,
                 text_vectors: Mapping[str, np.ndarray], models: Mapping[str, OnlineKMeans],
                 ranges: Mapping[tuple[str, int], tuple[int, int]], dim: int) -> BatchAssignments:
    """Assign each hierarchy facet's values with its model; a facet without a usable model stays unassigned."""
    out = BatchAssignments()
    for f in tree:
        model = models.get(f.name)
        if model is None:
            continue
        if model.dim != dim:
            log.warning("facet %s: clustering v%d is %d-d but the embedder makes %d-d vectors; storing "
                        "unassigned", f.name, model.version, model.dim, dim)
            continue
        rows = rows_with_value(f, len(records), value_of)
        if not rows:
            continue
        mat = np.stack([text_vectors[embedding_text(f, value_of[(r, f.name)].value)] for r in rows])  # type: ignore
        found, facet_deltas = assign_facet(f, rows, mat, records, model, ranges)
        for row, a in found.items():
            out.assignments[(row, f.name)] = a
        out.versions[f.name] = model.version
        out.deltas.extend(facet_deltas)
        out.assigned[f.name] = len(found)
        out.outliers[f.name] = sum(1 for a in found.values() if a.is_outlier)
    return out


@dataclass
class BatchPoints:
    """What the batch stores: one point per conversation and facet, and each conversation's status record."""

    facet_points: list[FacetPoint]
    conversations: list[ConversationRecord]


def batch_points(items: Sequence[DecodedConversation], facets: Sequence[Facet], value_of: RowValues,
                 text_vectors: Mapping[str, np.ndarray], clusters: BatchAssignments, settings: ClioSettings,
                 dim: int) -> BatchPoints:
    """Every facet point (a zero vector where nothing was embedded) and ``processed`` record, with its facets copy."""
    zero = np.zeros(dim, dtype=np.float32)  # "not embedded": facets without a hierarchy, missing values
    points: list[FacetPoint] = []
    conversations: list[ConversationRecord] = []
    for row, item in enumerate(items):
        record = conversation_record(item, settings, "processed")
        conversations.append(record)
        first = len(points)
        for f in facets:
            fv = value_of[(row, f.name)] or FacetValue(facet=f.name, value=None)
            vec = text_vectors.get(embedding_text(f, fv.value)) if (f.has_hierarchy and fv.value) else None
            a = clusters.assignments.get((row, f.name))
            points.append(FacetPoint(
                conversation_id=item.conversation.id,
                facet=f.name,
                vector=zero if vec is None else vec,
                value=fv.value,
                numeric=fv.numeric,
                user_hash=record.user_hash,
                timestamp=item.conversation.timestamp,
                cluster_id=None if a is None else a.cluster,
                cluster_version=None if a is None else clusters.versions[f.name],
                similarity=None if a is None else a.similarity,
                outlier=False if a is None else a.is_outlier,
                content_hash=item.content_hash,
                metadata=record.extra.get("metadata"),
            ))
        record.extra[FACETS_COPY] = {p.facet: p.summary() for p in points[first:]}
    return BatchPoints(points, conversations)


def process_batch(
    records: Sequence[RecordLike],
    *,
    facets: Sequence[Facet],
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    store: StoreReader,
    models: Mapping[str, OnlineKMeans],
    settings: ClioSettings,
    decoded: DecodedBatch | None = None,
    models_lock: AbstractContextManager[Any] | None = None,
) -> BatchOutcome:
    """Turn polled records into facet points, status records, dead letters and centroid deltas.

    ``models`` maps a hierarchy facet's name to its current online k-means; a
    facet without one (no clustering published yet) is stored unassigned
    (``cluster_id`` None); ``models_lock`` is held while they are read (another
    thread merges deltas into them). ``decoded`` may pass the result of ``decode_records``
    when the caller already decoded the batch (to mark it pending).
    """
    t0 = time.perf_counter()
    facets = list(facets)
    decoded = decoded if decoded is not None else decode_records(records, max_bytes=settings.max_message_bytes)
    items = decoded.conversations
    ranges = offset_ranges(records)
    counting = GuardedLLM(llm)
    stats = AskStats()
    values, reused = facet_values(items, facets, counting, store, settings, stats)
    t_llm = time.perf_counter() - t0
    reach("consume.embed")

    tree = [f for f in facets if f.has_hierarchy]
    value_of = values_by_row(items, facets, values)
    t1 = time.perf_counter()
    text_vectors = embed_tree_values(tree, len(items), value_of, embedder)
    t_embed = time.perf_counter() - t1
    dim = int(embedder.dim)
    with models_lock or nullcontext():
        clusters = assign_batch(tree, [item.record for item in items], value_of, text_vectors, models, ranges, dim)
    stored = batch_points(items, facets, value_of, text_vectors, clusters, settings, dim)
    outcome = BatchOutcome(
        facet_points=stored.facet_points, conversations=stored.conversations,
        dead_letters=list(decoded.dead_letters), deltas=clusters.deltas, offsets=ranges,
        duplicates=decoded.duplicates, reused_by_hash=reused, llm_calls=counting.calls, llm_prompts=counting.prompts,
        unparseable=stats.unparseable, assigned=clusters.assigned, outliers=clusters.outliers,
        seconds=time.perf_counter() - t0, llm_seconds=t_llm, embed_seconds=t_embed)
    log.info("batch: %d records -> %d conversations (%d reused by hash, %d duplicates), %d dead letters, "
             "%d LLM calls, %.2f s", len(records), outcome.processed, reused, decoded.duplicates,
             len(outcome.dead_letters), counting.calls, outcome.seconds)
    return outcome
