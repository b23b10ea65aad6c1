"""Stage: base clusters (k-means over one facet's value embeddings), and the vector helpers naming shares.

The number of base clusters is decided here once (``base_cluster_count``) for the batch run, the
bootstrap and the re-clustering job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.cluster import KMeans

from clio_stream.domain.vectors import normalise_rows
from clio_stream.settings import ClioSettings


def kmeans(x: np.ndarray, k: int, *, seed: int, args: dict[str, Any] | None = None,
           init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and unit-length centroids of spherical-ish k-means on unit vectors.

    ``init`` warm-starts from known centroids (re-clustering keeps cluster identity).
    """
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, x.shape[1] if x.ndim == 2 else 0), dtype=np.float32)
    k = max(1, min(k, n))
    if k == n:
        return np.arange(n), normalise_rows(x.copy())
    kwargs = dict(args or {})
    if init is not None and len(init) == k:
        kwargs.update(init=init, n_init=1)
    model = KMeans(n_clusters=k, random_state=seed, **kwargs)
    labels = model.fit_predict(x)
    return labels.astype(np.int64), normalise_rows(model.cluster_centers_.astype(np.float32))


def base_cluster_count(settings: ClioSettings, n_points: int) -> int:
    """How many base clusters ``n_points`` values get: the settings' rule, kept within 1..n_points."""
    return max(1, min(n_points, int(settings.n_base_clusters(n_points))))


def base_clusters(x: np.ndarray, settings: ClioSettings, *,
                  init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and unit centroids of the base clusters of unit vectors ``x`` (``init``: warm start)."""
    return kmeans(x, base_cluster_count(settings, len(x)), seed=settings.seed, args=settings.kmeans_args, init=init)


def most_central(vectors: np.ndarray) -> int:
    """Index of the vector closest to the mean: the sample that best represents the rest."""
    if len(vectors) == 1:
        return 0
    centre = normalise_rows(vectors.mean(axis=0, keepdims=True))[0]
    return int(np.argmax(vectors @ centre))


def nearest_outside(x: np.ndarray, labels: np.ndarray, centre: np.ndarray, cluster: int, m: int) -> np.ndarray:
    """Indices of the ``m`` points nearest to ``centre`` that are not in ``cluster``."""
    outside = np.flatnonzero(labels != cluster)
    if m <= 0 or len(outside) == 0:
        return np.zeros(0, dtype=np.int64)
    sims = x[outside] @ centre
    order = np.argsort(-sims)[:m]
    return outside[order]
