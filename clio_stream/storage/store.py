"""The one place callers get storage from: a Qdrant connection with one object per concern over it.

``store.points`` (facet points, conversation records), ``store.labels`` (version-scoped cluster labels),
``store.states`` (state documents, typed in :mod:`clio_stream.storage.documents`), ``store.versions``
(version numbers, centroids, current-version pointers), ``store.locks`` (leases) and ``store.deletions``
(user deletion requests) share the connection's client, collections and error translation; the
connection itself (``health``, ``ensure_collections``, ``close``) is the store.
"""

from __future__ import annotations

from functools import cached_property

from clio_stream.settings import ClioSettings
from clio_stream.storage.clustering_versions import ClusteringVersions
from clio_stream.storage.deletions import DeletionRequests
from clio_stream.storage.labels import Labels
from clio_stream.storage.locks import Locks
from clio_stream.storage.points import Points
from clio_stream.storage.qdrant import QdrantConnection
from clio_stream.storage.state import StateDocuments


class QdrantStore(QdrantConnection):
    """The project's only door to Qdrant (server over gRPC, or embedded for tests)."""

    @cached_property
    def points(self) -> Points:
        return Points(self)

    @cached_property
    def labels(self) -> Labels:
        return Labels(self)

    @cached_property
    def states(self) -> StateDocuments:
        return StateDocuments(self)

    @cached_property
    def versions(self) -> ClusteringVersions:
        return ClusteringVersions(self.states)

    @cached_property
    def locks(self) -> Locks:
        return Locks(self)

    @cached_property
    def deletions(self) -> DeletionRequests:
        return DeletionRequests(self)

    @classmethod
    def from_settings(cls, settings: ClioSettings) -> QdrantStore:
        """The store the settings describe (``qdrant_*``, ``store_raw_conversations``)."""
        return cls(**QdrantConnection.options(settings))

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
