"""Clustering versions as stored: version numbers handed out once, each version's centroids, the current pointer."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from qdrant_client import models

from clio_stream.storage.documents import (
    VERSION_COUNTER,
    CurrentVersion,
    VersionCounter,
    centroid_state_key,
    current_version_key,
)
from clio_stream.storage.errors import StoreError
from clio_stream.storage.qdrant import eq
from clio_stream.storage.state import STATE_KIND, StateDocuments, parse, to_json


class ClusteringVersions:
    """Version reservation, online k-means states per (facet, version) and the per-facet version pointers."""

    def __init__(self, states: StateDocuments) -> None:
        self.states = states

    def reserve(self, floor: int = 0, *, attempts: int = 100) -> int:
        """A clustering version number no one got before, above ``floor`` (compare-and-set on a counter).

        Call it holding the clustering lock; the CAS still keeps two holders (a lease lost and retaken)
        from ever getting the same number, so version-scoped writes (centroids, labels, site) never collide.
        """
        for _ in range(attempts):
            counter = self.states.read(VERSION_COUNTER)
            last = counter.last if counter else -1
            version = max(last, int(floor)) + 1
            write_id = uuid.uuid4().hex
            payload = {"kind": STATE_KIND, "key": VERSION_COUNTER.key, "last": version, "write_id": write_id,
                       "doc_json": to_json(VersionCounter(last=version)), "updated_at": time.time()}
            # An absent counter point is inserted whatever the filter says; a present one only if unchanged.
            if self.states.put_if(VERSION_COUNTER.key, payload, models.Filter(must=[eq("last", last)]), write_id):
                return version
            time.sleep(random.uniform(0.0, 0.02))  # lost a race: let the winner's write settle, unsynchronised
        raise StoreError(f"could not reserve a clustering version in {attempts} attempts (contention)")

    def last_reserved(self) -> int | None:
        """The last version number handed out, or None before the first."""
        counter = self.states.read(VERSION_COUNTER)
        return None if counter is None else counter.last

    def put_centroids(self, facet: str, version: int, state_doc: Mapping[str, Any]) -> None:
        """Store an online k-means state (``OnlineKMeans.to_state()``) for ``facet`` and ``version``."""
        self.states.put(centroid_state_key(facet, version).key, state_doc)

    def get_centroids(self, facet: str, version: int | None = None) -> dict[str, Any] | None:
        """The stored online k-means state of ``facet`` at ``version`` (default: the current one).

        Its header is checked (``CentroidStateHeader``); a state that does not fit is logged and treated as absent.
        """
        if version is None:
            version = self.current_version(facet)
            if version is None:
                return None
        ref = centroid_state_key(facet, version)
        raw = self.states.get(ref.key)
        return raw if parse(ref.model, ref.key, raw) is not None else None

    def set_current_version(self, facet: str, version: int) -> bool:
        """Point readers at clustering ``version`` of ``facet`` (write its centroids first).

        Fenced by the version number: the pointer never moves backwards, so a run that lost its lease and
        comes back late cannot undo a newer version. False when a newer version is already current.
        """
        pointer = CurrentVersion(facet=facet, version=int(version), published_at=time.time())
        return self.states.put_fenced(current_version_key(facet).key, pointer, fence=int(version))

    def current_version(self, facet: str) -> int | None:
        """The clustering version readers should use for ``facet``, or None before the first."""
        pointer = self.states.read(current_version_key(facet))
        return None if pointer is None else pointer.version
