"""Assigning vectors to centroids: the nearest one by cosine or river's Euclidean, and where each vector went."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from clio_stream.domain.vectors import EPS, normalise_rows

Metric = Literal["cosine", "euclidean"]
VectorLike = np.ndarray | Sequence[float] | Mapping[int, float]
SCORE_CHUNK = 8192  # rows per matrix product: a batch is one product; a bulk load stays within ~32 MB of scores


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
    rows: np.ndarray  # float32 (m, d): the unit rows as assigned, what the deltas carry (normalised once)

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


@dataclass(frozen=True)
class Scorer:
    """Centroids prepared for scoring: one matrix product per batch gives every row's best cluster.

    ``matrix`` is (k, d), the centroids' own layout: unit centroids for cosine (so the product is the
    cosine and the argmax needs no further pass over the (m, k) scores), raw centroids for river's
    Euclidean (whose ``half_sq`` is subtracted in place). The product takes it transposed (BLAS reads
    it as is: same scores as a (d, k) copy, and a rebuild after every delta merge skips that copy).
    Built once (``OnlineKMeans`` caches it) and refreshed where the centroids moved.
    """

    matrix: np.ndarray  # (k, d) float32
    inv_norm: np.ndarray  # (k,) 1 / ||c||
    half_sq: np.ndarray | None  # (k,) ||c||^2 / 2, Euclidean only
    metric: Metric

    @classmethod
    def of(cls, centroids: np.ndarray, metric: Metric) -> Scorer:
        c = np.asarray(centroids, dtype=np.float32)
        sq = np.einsum("ij,ij->i", c, c)
        inv = (1.0 / np.maximum(np.sqrt(sq), EPS)).astype(np.float32)
        if metric == "cosine":
            return cls(c * inv[:, None], inv, None, metric)
        return cls(c.copy(), inv, (0.5 * sq).astype(np.float32), metric)

    def refresh(self, centroids: np.ndarray, rows: np.ndarray) -> None:
        """Prepare ``rows`` of ``centroids`` again, in place, after only they moved (a delta merge touches some
        clusters: rebuilding all of them cost as much as a sixth of assigning a batch of 1,024 at k=1,000)."""
        fresh = Scorer.of(centroids[rows], self.metric)
        self.matrix[rows] = fresh.matrix
        self.inv_norm[rows] = fresh.inv_norm
        if self.half_sq is not None and fresh.half_sq is not None:
            self.half_sq[rows] = fresh.half_sq

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, cosine to the chosen centroid) of unit rows ``x``; one product per ``SCORE_CHUNK`` rows."""
        m = x.shape[0]
        labels = np.empty(m, np.int64)
        sims = np.empty(m, np.float32)
        for lo in range(0, m, SCORE_CHUNK):
            g = x[lo : lo + SCORE_CHUNK] @ self.matrix.T  # (rows, k): cosines, or dot products
            rows = np.arange(g.shape[0])
            if self.half_sq is None:
                best = np.argmax(g, axis=1)
                sims[lo : lo + len(best)] = g[rows, best]
            else:
                # argmin ||x - c||^2 = argmax (x.c - ||c||^2 / 2); ||x||^2 is the same for every c.
                g -= self.half_sq
                best = np.argmax(g, axis=1)
                sims[lo : lo + len(best)] = (g[rows, best] + self.half_sq[best]) * self.inv_norm[best]
            labels[lo : lo + len(best)] = best
        return labels, sims


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, metric: Metric) -> tuple[np.ndarray, np.ndarray]:
    """(labels, cosine similarity to the chosen centroid) of unit rows ``x`` against raw ``centroids``.

    Centroids are raw means (norm below 1), so cosine divides by their norms;
    "euclidean" picks as river does, and still reports the cosine.
    """
    return Scorer.of(centroids, metric).nearest(x)
