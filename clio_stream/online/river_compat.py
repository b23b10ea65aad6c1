"""Converters between :class:`OnlineKMeans` and ``river.cluster.KMeans``, for the equivalence tests and benchmarks.

River assigns by squared Euclidean distance and moves by ``halflife``, so the two
continue alike only with ``rule="river"``, ``metric="euclidean"``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from clio_stream.online.kmeans import OnlineKMeans, Rule

if TYPE_CHECKING:  # river is imported only when a conversion runs
    from river.cluster import KMeans as RiverKMeans


def from_river(km: RiverKMeans, *, counts: Sequence[int] | None = None, rule: Rule = "river",
               **kwargs: Any) -> OnlineKMeans:
    """A model with the centres of a river KMeans (integer feature keys 0..d-1)."""
    if km.p != 2:
        raise ValueError("only river KMeans with p=2 (squared Euclidean) has a numpy equivalent")
    keys = sorted({key for centre in km.centers.values() for key in centre})
    if not keys or any(not isinstance(key, (int, np.integer)) for key in keys):
        raise ValueError("river centres must use integer feature keys 0..d-1")
    dim = int(keys[-1]) + 1
    ids = sorted(km.centers)
    cents = np.zeros((len(ids), dim), np.float32)
    for row, cid in enumerate(ids):
        for key, value in dict(km.centers[cid]).items():
            cents[row, int(key)] = value
    kwargs.setdefault("halflife", km.halflife)
    return OnlineKMeans(cents, counts=counts, rule=rule, **kwargs)


def to_river(model: OnlineKMeans, seed: int | None = None) -> RiverKMeans:
    """A real river KMeans with the model's centres (its random initial ones overwritten)."""
    from river import cluster

    km = cluster.KMeans(n_clusters=model.n_clusters, halflife=model.halflife, p=2, seed=seed)
    # defaultdict(float) keeps river's "unknown feature" behaviour and pickles.
    km.centers = {
        i: collections.defaultdict(float, {j: float(v) for j, v in enumerate(row)})
        for i, row in enumerate(model.centroids.astype(np.float64))
    }
    return km
