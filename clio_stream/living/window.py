"""The clustering window and retention: which stored points a re-clustering covers, and which it deletes.

A re-clustering covers ``cluster_window_days`` back from the newest stored conversation time, not from now, so
a store filled from last year's logs still clusters its last month, and the job's cost follows the window
rather than the store. A point without a conversation time cannot be placed in time: it is always inside the
window, and retention never deletes it.

Retention counts back from now (``retention_days``, at least the window): before it samples, the job deletes
the facet and conversation points of older conversations, so no version it builds counts them; the versions
published before keep what they showed until they are pruned (``living.versions.PUBLISH_KEEP``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from qdrant_client import models

from clio_stream.settings import ClioSettings
from clio_stream.storage.qdrant import eq, from_time
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)

DAY_S = 86_400.0


@dataclass(frozen=True)
class Window:
    """Conversation times ``>= start`` (None: no bound), and the newest time stored when the job looked."""

    start: float | None
    newest: float | None

    def facet_filter(self, facet: str) -> models.Filter:
        """Points of ``facet`` inside the window (untimed points included)."""
        must: list[models.Condition] = [eq("facet", facet)]
        if self.start is not None:
            must.append(from_time(self.start))
        return models.Filter(must=must)


def newest_time(store: QdrantStore) -> float | None:
    """The newest conversation time of any stored facet point (None when no point has one)."""
    with store.guard("newest timestamp"):
        records, _ = store.client.scroll(
            store.facets, limit=1, with_payload=["timestamp"], with_vectors=False,
            order_by=models.OrderBy(key="timestamp", direction=models.Direction.DESC),
            scroll_filter=models.Filter(must=[models.FieldCondition(key="timestamp", range=models.Range(gte=0))]))
    if not records:
        return None
    value = (records[0].payload or {}).get("timestamp")
    return float(value) if isinstance(value, (int, float)) else None


def clustering_window(store: QdrantStore, settings: ClioSettings) -> Window:
    """The window of a re-clustering starting now."""
    newest = newest_time(store)
    if settings.cluster_window_days is None or newest is None:
        return Window(None, newest)
    return Window(newest - settings.cluster_window_days * DAY_S, newest)


def apply_retention(store: QdrantStore, settings: ClioSettings, now: float | None = None) -> int:
    """Delete facet and conversation points of conversations older than ``retention_days``; returns how many."""
    if settings.retention_days is None:
        return 0
    cutoff = (time.time() if now is None else now) - settings.retention_days * DAY_S
    old = models.Filter(must=[models.FieldCondition(key="timestamp", range=models.Range(lt=cutoff))])
    removed = 0
    for name in (store.facets, store.conversations):
        with store.guard("retention"):
            n = int(store.client.count(name, count_filter=old, exact=True).count)
            if n:
                store.client.delete(name, points_selector=models.FilterSelector(filter=old), wait=True)
        removed += n
    if removed:
        log.info("retention: deleted %d points of conversations older than %.1f days", removed,
                 settings.retention_days)
    return removed
