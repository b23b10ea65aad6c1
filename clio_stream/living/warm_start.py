"""Warm start of re-clustering: k-means begins at the current online centroids, so clusters stay where they were."""

from __future__ import annotations

import numpy as np

from clio_stream.domain.vectors import normalise_rows
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.storage.store import QdrantStore


def warm_start_centroids(x: np.ndarray, init: np.ndarray | None, counts: np.ndarray | None, k: int,
                         seed: int) -> np.ndarray | None:
    """``k`` starting centroids that keep the current ones, so k-means keeps clusters where they were.

    Fewer wanted: the ``k`` most populated current centroids. More wanted (the data
    grew): the current ones plus greedy k-means++ picks for the rest, which land
    where the current centroids cover the data worst (new topics). None when
    there is nothing to start from or too few distinct points.
    """
    if init is None or len(init) == 0 or k <= 0 or len(x) < k or init.shape[1] != x.shape[1]:
        return None
    init = normalise_rows(np.asarray(init, dtype=np.float32))
    if k <= len(init):
        order = np.argsort(-np.asarray(counts), kind="stable") if counts is not None and len(counts) == len(init) \
            else np.arange(len(init))
        return init[np.sort(order[:k])]
    rng = np.random.default_rng(seed)
    centres = [c for c in init]
    closest = np.clip(2.0 - 2.0 * (x @ init.T).max(axis=1), 0.0, None).astype(np.float64)
    n_local = 2 + int(np.log(k))
    for _ in range(k - len(init)):
        total = closest.sum()
        if total <= 1e-12:
            return None
        cand = rng.choice(len(x), size=min(n_local, len(x)), p=closest / total)
        dist = np.clip(2.0 - 2.0 * (x @ x[cand].T), 0.0, None)
        best = int(np.argmin(np.minimum(closest[:, None], dist).sum(axis=0)))
        centres.append(x[cand[best]])
        closest = np.minimum(closest, dist[:, best])
    return np.asarray(centres, dtype=np.float32)



def warm_start(store: QdrantStore, facet: str, x: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """Starting centroids for ``k`` clusters from the facet's current online model, if there is one."""
    doc = store.versions.get_centroids(facet)
    if not doc:
        return None
    model = OnlineKMeans.from_state(doc)
    return warm_start_centroids(x, model.unit_centroids, np.asarray(model.counts), k, seed)
