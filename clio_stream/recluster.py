"""Re-clustering of what the streaming workers stored: the batch Clio stages over Qdrant's points.

One run: take the cluster-wide lock, scroll every hierarchy facet's vectors and
values, k-means them warm-started from the current centroids, name the
clusters and build the hierarchy with the same stage functions ``run_clio``
uses, apply the privacy rules, then write in an order that keeps every reader
on one complete version:

1. centroids of the new version (consumers cannot see them yet);
2. labels of the stored points (tagged with the new version);
3. the published version folder (result.json + static site), whose ``current``
   pointer the API and the dashboard follow;
4. the per-facet version pointers that the consumers follow — last.

A crash anywhere before step 3 leaves the previous version current; the next
run starts over (every write is idempotent).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clio_stream.clustering import kmeans
from clio_stream.embedding import EmbeddingBackend
from clio_stream.facets import Facet
from clio_stream.hierarchy import build_hierarchy, slug
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.naming import name_clusters
from clio_stream.online import OnlineKMeans, normalise_rows
from clio_stream.privacy import annotate, audit
from clio_stream.settings import ClioSettings
from clio_stream.store import QdrantStore
from clio_stream.types import ClioResult, ClusterNode, Conversation, ConversationFacets, FacetValue, Message

log = logging.getLogger(__name__)

LOCK_NAME = "clustering"  # shared with consumers.bootstrap: one clustering job at a time
LOCK_TTL_S = 3600.0


@dataclass
class StoredFacet:
    """One hierarchy facet's embedded values as stored: point ids, vectors, conversation ids, texts."""

    point_ids: list[str]
    vectors: np.ndarray
    conversation_ids: list[str]
    values: list[str]


@dataclass
class ReclusterReport:
    version: int
    points: dict[str, int] = field(default_factory=dict)
    clusters: dict[str, int] = field(default_factory=dict)
    llm_prompts: int = 0
    seconds: float = 0.0
    published: Path | None = None


def load_stored(store: QdrantStore, facets: Sequence[Facet]) -> tuple[dict[str, StoredFacet], dict[str, dict[str, Any]]]:
    """Vectors of hierarchy facets, and per conversation its facet payloads (for values, stats, users)."""
    stored: dict[str, StoredFacet] = {}
    per_conv: dict[str, dict[str, Any]] = {}
    for f in facets:
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        convs: list[str] = []
        values: list[str] = []
        for batch_ids, vectors, payloads in store.scroll_vectors(f.name):
            norms = np.linalg.norm(vectors, axis=1) if len(vectors) else []
            for pid, vec, norm, payload in zip(batch_ids, vectors, norms, payloads):
                cid = payload.get("conversation_id")
                if not cid:
                    continue
                entry = per_conv.setdefault(cid, {"user_hash": payload.get("user_hash"),
                                                  "timestamp": payload.get("timestamp"), "values": {}})
                entry["values"][f.name] = (payload.get("value"), payload.get("numeric"))
                if f.has_hierarchy and payload.get("value") and norm > 0:
                    ids.append(pid)
                    vecs.append(vec)
                    convs.append(cid)
                    values.append(payload["value"])
        if f.has_hierarchy:
            dim = vecs[0].shape[0] if vecs else 0
            stored[f.name] = StoredFacet(ids, normalise_rows(np.asarray(vecs, dtype=np.float32).reshape(len(vecs), dim)),
                                         convs, values)
    return stored, per_conv


def _warm_start(store: QdrantStore, facet: str, k: int) -> np.ndarray | None:
    """The current centroids when their number matches ``k`` (k-means then keeps cluster identity)."""
    doc = store.get_centroids(facet)
    if not doc:
        return None
    model = OnlineKMeans.from_state(doc)
    return model.unit_centroids if model.n_clusters == k else None


def recluster_once(
    store: QdrantStore,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    facets: Sequence[Facet],
    settings: ClioSettings,
    *,
    publish_dir: Path,
    owner: str | None = None,
) -> ReclusterReport | None:
    """Run one re-clustering; None when another process holds the lock or nothing is stored yet."""
    from clio_stream.publish import publish_version

    owner = owner or f"recluster-{socket.gethostname()}-{os.getpid()}"
    if not store.try_lock(LOCK_NAME, owner, LOCK_TTL_S):
        log.info("re-clustering skipped: %s holds the lock", store.lock_holder(LOCK_NAME))
        return None
    t0 = time.perf_counter()
    try:
        stored, per_conv = load_stored(store, facets)
        if not any(len(s.point_ids) for s in stored.values()):
            log.info("re-clustering skipped: nothing stored yet")
            return None
        tree = [f for f in facets if f.has_hierarchy and len(stored.get(f.name, StoredFacet([], np.zeros((0, 0)), [], [])).point_ids)]
        current = [store.current_version(f.name) for f in tree]
        version = max((v for v in current if v is not None), default=0) + 1
        report = ReclusterReport(version=version)
        stats = AskStats()

        conv_ids = sorted(per_conv)
        conversations = [Conversation(id=cid, messages=[Message(role="user", content="")],
                                      user_id=per_conv[cid]["user_hash"], timestamp=per_conv[cid]["timestamp"])
                         for cid in conv_ids]
        facet_values = [ConversationFacets(conversation_id=cid, values={
            f.name: FacetValue(facet=f.name, value=per_conv[cid]["values"].get(f.name, (None, None))[0],
                               numeric=per_conv[cid]["values"].get(f.name, (None, None))[1]) for f in facets})
            for cid in conv_ids]

        hierarchies = {}
        models: dict[str, tuple[OnlineKMeans, np.ndarray]] = {}
        for f in tree:
            s = stored[f.name]
            k = max(1, min(len(s.point_ids), int(settings.n_base_clusters(len(s.point_ids)))))
            labels, centres = kmeans(s.vectors, k, seed=settings.seed, args=settings.kmeans_args,
                                     init=_warm_start(store, f.name, k))
            names = name_clusters(f, s.values, s.vectors, labels, centres, llm, embedder, settings=settings,
                                  stats=stats)
            leaves = []
            for c, (summary, name) in enumerate(names):
                members = [s.conversation_ids[i] for i in np.flatnonzero(labels == c)]
                if members:
                    leaves.append(ClusterNode(id=f"{slug(f.name)}-l0-{c}", facet=f.name, name=name, summary=summary,
                                              level=0, conversation_ids=members))
            h = build_hierarchy(f, leaves, llm, embedder, settings=settings, stats=stats)
            annotate(h, conversations, facet_values, facets, min_conversations=settings.min_cluster_conversations,
                     min_users=settings.min_cluster_users, user_hash_key=settings.user_id_hash_key)
            if settings.audit_cluster_names:
                audit(h, llm, settings=settings, stats=stats)
            hierarchies[f.name] = h
            models[f.name] = (OnlineKMeans.from_batch(s.vectors, labels, centroids=centres, version=version,
                                                      facet=f.name), labels)
            report.points[f.name] = len(s.point_ids)
            report.clusters[f.name] = len(leaves)

        # 1-2. centroids and labels of the new version
        for f in tree:
            model, labels = models[f.name]
            s = stored[f.name]
            store.put_centroids(f.name, version, model.to_state())
            sims = np.einsum("ij,ij->i", s.vectors, model.unit_centroids[labels])
            store.set_labels(f.name, {pid: int(c) for pid, c in zip(s.point_ids, labels)}, version,
                             similarities={pid: float(v) for pid, v in zip(s.point_ids, sims)},
                             outliers={pid: bool(v < model.outlier_similarity) for pid, v in zip(s.point_ids, sims)})
        # 3. the published version (API and dashboard switch here)
        result = ClioResult(facets=[f.to_dict() for f in facets], conversations=conversations,
                            facet_values=facet_values, hierarchies=hierarchies, settings=settings.public_dict(),
                            stats={"llm": vars(stats), "points": report.points, "version": version})
        report.published = publish_version(result, publish_dir, str(version), settings=settings)
        # 4. consumers switch last
        for f in tree:
            store.set_current_version(f.name, version)
        report.llm_prompts = stats.prompts
        report.seconds = time.perf_counter() - t0
        store.put_state("recluster:last", {"version": version, "finished_at": time.time(), "seconds": report.seconds,
                                           "points": report.points, "clusters": report.clusters,
                                           "llm_prompts": report.llm_prompts})
        log.info("re-clustered as version %d in %.1f s: %s", version, report.seconds, report.clusters)
        return report
    finally:
        store.release_lock(LOCK_NAME, owner)
