"""The site fixture with what the views need: metadata with a small group, a map, two versions, search centroids.

``tier`` is a declared metadata key: "pro" for a handful of users only, so a filter on it isolates fewer users
than the minimums in most clusters (the privacy tests' slice); "free" for everyone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clio_stream.domain.clusters import ClioResult, StoreLink
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.storage.published import PublishedVersions
from clio_stream.storage.store import QdrantStore
from clio_stream.views.layout import cluster_map, place_points
from tests.fixtures_site import REQUEST, make_site_fixture

PRO_USERS = {"user-03", "user-10"}  # two users: under a three-user minimum, never a visible slice on their own


def views_result(embedder: Any, *, renamed: bool = False) -> ClioResult:
    """The site fixture with ``tier`` metadata, a map from ``embedder``'s vectors of the leaf names, store links."""
    result = make_site_fixture().result.model_copy(deep=True)
    for conv in result.conversations:
        conv.metadata = {"source": "fixture", "tier": "pro" if conv.user_id in PRO_USERS else "free"}
    h = result.hierarchies[REQUEST]
    leaves = sorted(n.id for n in h.leaves())
    vectors = embedder.encode([h.nodes[n].name for n in leaves])
    layout = cluster_map(h, dict(zip(leaves, vectors)), method="tsne", seed=0)
    members = [(cid, vectors[i]) for i, nid in enumerate(leaves) for cid in h.nodes[nid].conversation_ids]
    result.maps[REQUEST] = place_points(layout, dict(zip(leaves, vectors)), [m[0] for m in members],
                                        np.asarray([m[1] for m in members]), 0)
    result.store_links[REQUEST] = StoreLink(version=1, clusters={nid: i for i, nid in enumerate(leaves)})
    if renamed:
        h.nodes["request-r0"].name = "Software engineering"
        moved = h.nodes["request-r1-m1-l0"].conversation_ids[:1]
        for nid in ("request-r1-m1-l0", "request-r1-m1", "request-r1"):
            h.nodes[nid].conversation_ids = [c for c in h.nodes[nid].conversation_ids if c not in moved]
    return result


def views_settings(publish_dir: Path, **overrides: Any) -> ClioSettings:
    """Minimums of three users and three conversations (the fixture's users are spread thinly), ``tier`` declared."""
    return ClioSettings(publish_dir=publish_dir, min_cluster_users=3, min_cluster_conversations=3,
                        metadata_keys=[{"name": "tier", "role": "viewer"}, {"name": "source", "role": "analyst"}],
                        kafka_bootstrap="127.0.0.1:1", show_progress=False, **overrides)


def publish_two_versions(settings: ClioSettings, embedder: Any) -> None:
    versions = PublishedVersions.at(settings.publish_dir)
    versions.publish(views_result(embedder), "1", settings=settings)
    versions.publish(views_result(embedder, renamed=True), "2", settings=settings)


def store_with_centroids(embedder: Any, result: ClioResult) -> QdrantStore:
    """An in-memory store holding the leaves' centroids (the leaf names embedded) as clustering version 1."""
    store = QdrantStore(":memory:")
    store.ensure_collections(int(embedder.dim))
    h = result.hierarchies[REQUEST]
    leaves: Sequence[str] = sorted(n.id for n in h.leaves())
    x = np.asarray(embedder.encode([h.nodes[n].name for n in leaves]), dtype=np.float32)
    model = OnlineKMeans.from_batch(x, np.arange(len(leaves)), centroids=x, version=1, facet=REQUEST)
    store.versions.put_centroids(REQUEST, 1, model.to_state())
    store.versions.set_current_version(REQUEST, 1)
    return store
