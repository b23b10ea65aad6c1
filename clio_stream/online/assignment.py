"""Assigning vectors to centroids: the nearest one by cosine or river's Euclidean, and where each vector went."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from clio_stream.domain.vectors import EPS, normalise_rows

Metric = Literal["cosine", "euclidean"]
VectorLike = np.ndarray | Sequence[float] | Mapping[int, float]
SCORE_CHUNK = 1024  # rows per matrix product, so the (m, k) score matrix stays in cache-sized pieces


class Assignment(NamedTuple):
    """Where one vector went: cluster index, cosine to its centroid, and whether that is too far."""

    cluster: int
    similarity: float
    is_outlier: bool


@dataclass(frozen=True)
class BatchAssignment:
    """Vectorised :class:`Assignment` for a batch of vectors."""

    labels: np.ndarray  # int64 (m,)
    similarities: np.ndarray  # float32 (m,)
    outliers: np.ndarray  # bool (m,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> Assignment:
        return Assignment(int(self.labels[i]), float(self.similarities[i]), bool(self.outliers[i]))


def as_unit_rows(x: VectorLike, dim: int) -> np.ndarray:
    """Unit float32 rows of dimension ``dim``; a 1-d vector or a river feature dict ``{index: value}`` is one row."""
    if isinstance(x, Mapping):
        arr = np.zeros((1, dim), np.float32)
        for key, value in x.items():
            arr[0, int(key)] = value
    else:
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {arr.shape}")
    return normalise_rows(arr)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """(labels, cosine similarity to the chosen centroid) of unit rows ``x`` against raw ``centroids``.

    Centroids are raw means (norm below 1), so cosine divides by their norms;
    "euclidean" picks as river does, and still reports the cosine.
    """
    if x.shape[0] > SCORE_CHUNK:
        parts = [nearest_centroids(x[i : i + SCORE_CHUNK], centroids, metric) for i in range(0, x.shape[0], SCORE_CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    g = x @ centroids.T  # (m, k) dot products
    sq = np.einsum("ij,ij->i", centroids, centroids)
    inv = 1.0 / np.maximum(np.sqrt(sq), EPS)
    if metric == "cosine":
        cos = g * inv
        labels = np.argmax(cos, axis=1)
        sims = cos[np.arange(len(labels)), labels]
    else:
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c.
        labels = np.argmin(sq - 2.0 * g, axis=1)
        sims = g[np.arange(len(labels)), labels] * inv[labels]
    return labels.astype(np.int64), sims.astype(np.float32)
