"""Online k-means: assign each new facet embedding to a cluster the moment it arrives.

The periodic batch job clusters everything and publishes centroids (a clustering
``version``); between batch runs the consumers assign new vectors to the nearest
of those centroids and nudge the centroids towards them. This module holds that
state and the maths, in numpy, with river's estimator protocol
(``learn_one``/``predict_one``) so it can stand in for ``river.cluster.KMeans``
and be checked against it.

Vectors are unit-normalised float32 embeddings, so cosine similarity is a dot
product with the normalised centroid.

Update rules
------------
``rule="river"`` is river's ``cluster.KMeans`` rule, ``c += halflife * (x - c)``:
every point moves its centre by a fixed fraction of the gap, however many points
the centre already summarises. With ``halflife=0.5`` one odd conversation drags
a centre built from 10,000 members half-way towards itself, and the centre ends
up tracking the last few points rather than the cluster. It is offered for
compatibility and for the equivalence tests.

``rule="mean"`` (default) is MacQueen's count-based rule, ``c += (x - c) / n``:
the centre stays the exact running mean of its members, a point's pull shrinks
as the cluster grows, and, because a mean is a sum divided by a count, the
updates of many workers commute. That is what makes :class:`CentroidDeltas`
possible: replicas never drift their own copies; they ship (sum, count) per
cluster and any process merges them in any order, any number of times.

Assignment
----------
``metric="cosine"`` (default with ``rule="mean"``) picks the centroid with the
highest cosine similarity; centroids are stored as raw means (norm below 1) so
that merging stays a plain weighted mean. ``metric="euclidean"`` (default with
``rule="river"``) picks the smallest squared Euclidean distance, as river does.
Either way the reported similarity is the cosine to the assigned centroid, and a
point is an outlier when that similarity is below ``1 - outlier_distance``.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

if TYPE_CHECKING:  # river is only needed for the converters and the benchmark
    from river.cluster import KMeans as RiverKMeans

log = logging.getLogger(__name__)

Rule = Literal["mean", "river"]
Metric = Literal["cosine", "euclidean"]
VectorLike = np.ndarray | Sequence[float] | Mapping[int, float]

STATE_FORMAT = "clio-online-kmeans/1"
DELTA_FORMAT = "clio-centroid-deltas/1"
# Used when the warm-start data is too small to estimate a percentile: unrelated
# sentence embeddings (mpnet, MiniLM) sit around cosine 0.0-0.2 from each other,
# while members of a facet cluster sit at 0.4-0.8 from their centroid.
DEFAULT_OUTLIER_SIMILARITY = 0.3
DEFAULT_OUTLIER_PERCENTILE = 1.0
MIN_POINTS_FOR_CALIBRATION = 20
_EPS = 1e-12
_SCORE_CHUNK = 1024  # rows per matrix product when only assigning


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


# --------------------------------------------------------------------------- helpers


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


def group_sums(labels: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clusters, float64 row sums, counts) of ``x`` grouped by ``labels``.

    Sort + ``reduceat`` rather than ``np.add.at``: one pass, no per-row Python.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return (np.zeros(0, np.int64), np.zeros((0, x.shape[1]), np.float64), np.zeros(0, np.int64))
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    clusters = sorted_labels[starts]
    sums = np.add.reduceat(x[order].astype(np.float64, copy=False), starts, axis=0)
    counts = np.diff(np.r_[starts, labels.size]).astype(np.int64)
    return clusters, sums, counts


def make_batch_id(topic: str, partition: int, first_offset: int, last_offset: int, version: int) -> str:
    """Delta batch id from the Kafka records it covers: a redelivered range gets the same id."""
    return f"{topic}-{partition}-{first_offset}-{last_offset}-v{version}"


def _encode_array(a: np.ndarray, dtype: str) -> dict[str, Any]:
    arr = np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode("ascii")}


def _decode_array(doc: Mapping[str, Any] | Sequence[Any], dtype: str) -> np.ndarray:
    """Inverse of :func:`_encode_array`; plain nested lists are accepted too."""
    if isinstance(doc, Mapping):
        raw = base64.b64decode(doc["b64"])
        arr = np.frombuffer(raw, dtype=np.dtype(doc.get("dtype", dtype)).newbyteorder("<"))
        return arr.reshape(doc["shape"]).astype(dtype)
    return np.asarray(doc, dtype=dtype)


class _RateWindow:
    """Fraction of True among the last ``size`` flags (a ring buffer; O(1) per push)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._buf = np.zeros(self.size, dtype=bool)
        self._pos = 0
        self._n = 0
        self._true = 0

    def push(self, flags: np.ndarray) -> None:
        flags = np.asarray(flags, dtype=bool).ravel()[-self.size :]
        m = flags.size
        if m == 0:
            return
        idx = (self._pos + np.arange(m)) % self.size
        # Overwritten slots leave the count; never-filled slots hold False, so that is safe.
        self._true -= int(self._buf[idx].sum())
        self._buf[idx] = flags
        self._true += int(flags.sum())
        self._pos = (self._pos + m) % self.size
        self._n = min(self.size, self._n + m)

    @property
    def count(self) -> int:
        return self._n

    @property
    def rate(self) -> float:
        return self._true / self._n if self._n else 0.0


# --------------------------------------------------------------------------- deltas


@dataclass
class CentroidDeltas:
    """One worker's centroid updates since its last flush: per-cluster sum and count.

    For the mean rule a centroid is ``sum / count``, so batches from any number of
    workers commute. ``batch_id`` (see :func:`make_batch_id`) makes re-applying a
    redelivered batch a no-op; ``version`` ties the cluster indices to the
    clustering they were assigned under (a batch for an old version is dropped).
    """

    batch_id: str
    version: int
    dim: int
    clusters: np.ndarray  # int64 (m,)
    sums: np.ndarray  # float64 (m, dim)
    counts: np.ndarray  # int64 (m,)
    outliers: int = 0
    facet: str | None = None

    @property
    def n(self) -> int:
        """Number of vectors the batch summarises."""
        return int(self.counts.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (float64 sums base64-encoded), to ship through Kafka or Qdrant."""
        return {
            "format": DELTA_FORMAT,
            "batch_id": self.batch_id,
            "version": int(self.version),
            "dim": int(self.dim),
            "facet": self.facet,
            "clusters": [int(c) for c in self.clusters],
            "counts": [int(c) for c in self.counts],
            "sums": _encode_array(self.sums, "float64"),
            "outliers": int(self.outliers),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CentroidDeltas:
        """Inverse of :meth:`to_dict`."""
        if doc.get("format", DELTA_FORMAT) != DELTA_FORMAT:
            raise ValueError(f"unknown delta format {doc.get('format')!r}")
        dim = int(doc["dim"])
        sums = _decode_array(doc["sums"], "float64").reshape(-1, dim)
        return cls(
            batch_id=str(doc["batch_id"]),
            version=int(doc["version"]),
            dim=dim,
            clusters=np.asarray(doc["clusters"], dtype=np.int64),
            sums=sums,
            counts=np.asarray(doc["counts"], dtype=np.int64),
            outliers=int(doc.get("outliers", 0)),
            facet=doc.get("facet"),
        )


class DeltaAccumulator:
    """What one worker gathers between flushes, instead of moving its own centroids."""

    def __init__(self, n_clusters: int, dim: int, version: int, facet: str | None = None) -> None:
        self.n_clusters = int(n_clusters)
        self.dim = int(dim)
        self.version = int(version)
        self.facet = facet
        self._sums = np.zeros((self.n_clusters, self.dim), dtype=np.float64)
        self._counts = np.zeros(self.n_clusters, dtype=np.int64)
        self._outliers = 0

    @classmethod
    def for_model(cls, model: OnlineKMeans) -> DeltaAccumulator:
        """An empty accumulator matching ``model``'s shape, version and facet."""
        return cls(model.n_clusters, model.dim, model.version, model.facet)

    @property
    def n(self) -> int:
        return int(self._counts.sum())

    def add(self, labels: np.ndarray, x: np.ndarray, outliers: np.ndarray | None = None) -> None:
        """Add vectors ``x`` assigned to ``labels`` (vectors as they were assigned: unit length)."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.dim)
        clusters, sums, counts = group_sums(np.asarray(labels), x)
        if clusters.size and (clusters.min() < 0 or clusters.max() >= self.n_clusters):
            raise ValueError("cluster index out of range")
        self._sums[clusters] += sums
        self._counts[clusters] += counts
        if outliers is not None:
            self._outliers += int(np.count_nonzero(outliers))

    def add_one(self, label: int, x: np.ndarray, outlier: bool = False) -> None:
        """Add one vector."""
        self._sums[int(label)] += np.asarray(x, dtype=np.float64).reshape(self.dim)
        self._counts[int(label)] += 1
        self._outliers += int(bool(outlier))

    def flush(self, batch_id: str) -> CentroidDeltas | None:
        """The gathered deltas under ``batch_id`` (None when empty), then start afresh."""
        touched = np.flatnonzero(self._counts)
        if touched.size == 0:
            return None
        deltas = CentroidDeltas(
            batch_id=batch_id,
            version=self.version,
            dim=self.dim,
            clusters=touched.astype(np.int64),
            sums=self._sums[touched].copy(),
            counts=self._counts[touched].copy(),
            outliers=self._outliers,
            facet=self.facet,
        )
        self.reset()
        return deltas

    def reset(self, version: int | None = None) -> None:
        """Drop what was gathered (e.g. after a new clustering version made it meaningless)."""
        if version is not None:
            self.version = int(version)
        self._sums[:] = 0.0
        self._counts[:] = 0
        self._outliers = 0


# --------------------------------------------------------------------------- the model


class OnlineKMeans:
    """Nearest-centroid assignment plus incremental centroid updates, in numpy.

    State: ``centroids`` (k x d float32), ``counts`` (k), the clustering
    ``version``, ``outlier_distance`` and the ids of applied delta batches.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        *,
        counts: Sequence[int] | np.ndarray | None = None,
        rule: Rule = "mean",
        halflife: float = 0.5,
        metric: Metric | None = None,
        version: int = 0,
        outlier_distance: float | None = None,
        facet: str | None = None,
        normalize_inputs: bool = True,
        batch_size: int = 256,
        rate_window: int = 1000,
        max_applied_ids: int = 10_000,
    ) -> None:
        """``metric`` defaults to euclidean for river's rule (to match it) and cosine otherwise.

        ``batch_size`` bounds how stale the centroids may be inside ``learn_many``
        (1 = strictly sequential). ``outlier_distance`` None means the fallback
        constant until :meth:`calibrate_outliers` or :meth:`from_batch` sets it.
        """
        if rule not in ("mean", "river"):
            raise ValueError(f"rule must be 'mean' or 'river', not {rule!r}")
        metric = metric or ("euclidean" if rule == "river" else "cosine")
        if metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', not {metric!r}")
        c = np.array(centroids, dtype=np.float32, copy=True, order="C")
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise ValueError(f"centroids must be a non-empty k x d matrix, got shape {c.shape}")
        self._c = c
        k = c.shape[0]
        self._counts = np.zeros(k, np.int64) if counts is None else np.array(counts, dtype=np.int64).reshape(k)
        self.rule: Rule = rule
        self.halflife = float(halflife)
        self.metric: Metric = metric
        self.version = int(version)
        self.facet = facet
        self.normalize_inputs = normalize_inputs
        self.batch_size = max(1, int(batch_size))
        if outlier_distance is None:
            self.outlier_distance = 1.0 - DEFAULT_OUTLIER_SIMILARITY
            self.outlier_source = "default"
        else:
            self.outlier_distance = float(outlier_distance)
            self.outlier_source = "manual"
        # Persisted totals: points learned into this state (directly or via deltas).
        self.learned = 0
        self.learned_outliers = 0
        self.updates = 0  # delta batches applied
        self.max_applied_ids = int(max_applied_ids)
        self._applied: collections.OrderedDict[str, None] = collections.OrderedDict()
        # Runtime only: what this replica saw, for metrics.
        self._window = _RateWindow(rate_window)
        self.local_assigned = 0
        self.local_outliers = 0
        self._norms = np.empty(k, np.float32)
        self._sqnorms = np.empty(k, np.float32)
        self._refresh_norms(None)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_batch(
        cls,
        x: np.ndarray,
        labels: np.ndarray,
        *,
        centroids: np.ndarray | None = None,
        version: int = 0,
        percentile: float = DEFAULT_OUTLIER_PERCENTILE,
        outlier_distance: float | None = None,
        **kwargs: Any,
    ) -> OnlineKMeans:
        """Warm start from a batch clustering: member means, member counts, calibrated outliers.

        Centroids are the means of each cluster's members (what the mean rule
        keeps updating; the batch job's unit-length centroids point the same
        way). ``centroids`` supplies the cluster count and the centres of
        clusters that have no members.
        """
        x = normalise_rows(x)
        labels = np.asarray(labels, dtype=np.int64)
        if x.shape[0] != labels.shape[0]:
            raise ValueError("x and labels differ in length")
        k = int(centroids.shape[0]) if centroids is not None else int(labels.max()) + 1
        counts = np.bincount(labels, minlength=k).astype(np.int64)
        clusters, sums, n = group_sums(labels, x)
        if centroids is not None:
            cents = np.array(centroids, dtype=np.float32).reshape(k, x.shape[1])
        elif np.any(counts == 0):
            raise ValueError("a cluster has no members; pass its centroid in `centroids`")
        else:
            cents = np.zeros((k, x.shape[1]), np.float32)
        cents[clusters] = (sums / n[:, None]).astype(np.float32)
        model = cls(cents, counts=counts, version=version, outlier_distance=outlier_distance, **kwargs)
        if outlier_distance is None:
            model.calibrate_outliers(x, labels, percentile=percentile)
        return model

    @classmethod
    def from_river(
        cls,
        km: RiverKMeans,
        *,
        counts: Sequence[int] | None = None,
        rule: Rule = "river",
        **kwargs: Any,
    ) -> OnlineKMeans:
        """A model with the centres of a ``river.cluster.KMeans`` (integer feature keys 0..d-1)."""
        if getattr(km, "p", 2) != 2:
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
        return cls(cents, counts=counts, rule=rule, **kwargs)

    def to_river(self, seed: int | None = None) -> RiverKMeans:
        """A real ``river.cluster.KMeans`` with these centres (its random initial ones overwritten).

        River assigns by squared Euclidean distance and moves by ``halflife``, so
        it continues exactly like this model only with rule="river", metric="euclidean".
        """
        from river import cluster

        km = cluster.KMeans(n_clusters=self.n_clusters, halflife=self.halflife, p=2, seed=seed)
        # defaultdict(float) keeps river's "unknown feature" behaviour and pickles.
        km.centers = {
            i: collections.defaultdict(float, {j: float(v) for j, v in enumerate(row)})
            for i, row in enumerate(self._c.astype(np.float64))
        }
        return km

    def copy(self) -> OnlineKMeans:
        """An independent copy of the persisted state (runtime counters start at zero)."""
        return type(self).from_state(self.to_state(), normalize_inputs=self.normalize_inputs,
                                     batch_size=self.batch_size, rate_window=self._window.size)

    # ------------------------------------------------------------------ properties

    @property
    def n_clusters(self) -> int:
        return int(self._c.shape[0])

    @property
    def dim(self) -> int:
        return int(self._c.shape[1])

    @property
    def centroids(self) -> np.ndarray:
        """Read-only view of the raw centroids (means; not unit length)."""
        view = self._c.view()
        view.flags.writeable = False
        return view

    @property
    def unit_centroids(self) -> np.ndarray:
        """Centroids scaled to unit length (for cosine search elsewhere)."""
        return normalise_rows(self._c)

    @property
    def counts(self) -> np.ndarray:
        view = self._counts.view()
        view.flags.writeable = False
        return view

    @property
    def outlier_similarity(self) -> float:
        """Similarity below which a point counts as an outlier (``1 - outlier_distance``)."""
        return 1.0 - self.outlier_distance

    @property
    def outlier_rate(self) -> float:
        """Outlier fraction over this replica's last ``rate_window`` assignments."""
        return self._window.rate

    @property
    def outlier_rate_total(self) -> float:
        """Outlier fraction among all points learned into this state since the warm start."""
        return self.learned_outliers / self.learned if self.learned else 0.0

    def stats(self) -> dict[str, Any]:
        """Numbers for logs and metrics."""
        return {
            "version": self.version,
            "facet": self.facet,
            "k": self.n_clusters,
            "dim": self.dim,
            "rule": self.rule,
            "outlier_distance": self.outlier_distance,
            "outlier_rate": self.outlier_rate,
            "outlier_rate_window": self._window.count,
            "outlier_rate_total": self.outlier_rate_total,
            "learned": self.learned,
            "updates": self.updates,
            "local_assigned": self.local_assigned,
            "local_outliers": self.local_outliers,
        }

    # ------------------------------------------------------------------ internals

    def _refresh_norms(self, rows: np.ndarray | None) -> None:
        if rows is None:
            sq = np.einsum("ij,ij->i", self._c, self._c)
            self._sqnorms[:] = sq
            self._norms[:] = np.sqrt(sq)
            return
        sub = self._c[rows]
        sq = np.einsum("ij,ij->i", sub, sub)
        self._sqnorms[rows] = sq
        self._norms[rows] = np.sqrt(sq)

    def _as_matrix(self, x: VectorLike | np.ndarray) -> np.ndarray:
        if isinstance(x, Mapping):
            arr = np.zeros((1, self.dim), np.float32)
            for key, value in x.items():
                arr[0, int(key)] = value
        else:
            arr = np.asarray(x, dtype=np.float32)
            if arr.ndim == 1:
                arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"expected vectors of dimension {self.dim}, got shape {arr.shape}")
        return normalise_rows(arr) if self.normalize_inputs else np.ascontiguousarray(arr)

    def _score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, cosine similarity to the chosen centroid) for prepared rows ``x``.

        Large inputs go in chunks so the (m, k) score matrix stays in cache-sized pieces.
        """
        if x.shape[0] > _SCORE_CHUNK:
            parts = [self._score(x[i : i + _SCORE_CHUNK]) for i in range(0, x.shape[0], _SCORE_CHUNK)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        g = x @ self._c.T  # (m, k) dot products
        inv = 1.0 / np.maximum(self._norms, _EPS)
        if self.metric == "cosine":
            cos = g * inv
            labels = np.argmax(cos, axis=1)
            sims = cos[np.arange(len(labels)), labels]
        else:
            # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c.
            labels = np.argmin(self._sqnorms - 2.0 * g, axis=1)
            sims = g[np.arange(len(labels)), labels] * inv[labels]
        return labels.astype(np.int64), sims.astype(np.float32)

    def _score_one(self, x: np.ndarray) -> tuple[int, float]:
        g = self._c @ x  # (k,)
        if self.metric == "cosine":
            cos = g / np.maximum(self._norms, _EPS)
            label = int(np.argmax(cos))
            return label, float(cos[label])
        label = int(np.argmin(self._sqnorms - 2.0 * g))
        return label, float(g[label] / max(float(self._norms[label]), _EPS))

    def _observe(self, outliers: np.ndarray) -> None:
        self._window.push(outliers)
        self.local_assigned += int(outliers.size)
        self.local_outliers += int(np.count_nonzero(outliers))

    def _update(self, labels: np.ndarray, x: np.ndarray) -> None:
        """Move the centroids of ``labels`` towards ``x`` as if the rows came one by one."""
        if labels.size == 1:
            j = int(labels[0])
            row = x[0]
            if self.rule == "mean":
                self._counts[j] += 1
                self._c[j] += (row - self._c[j]) / np.float32(self._counts[j])
            else:
                self._counts[j] += 1
                self._c[j] += np.float32(self.halflife) * (row - self._c[j])
            self._refresh_norms(np.array([j]))
            return
        clusters, sums, n = group_sums(labels, x)
        if self.rule == "mean":
            old = self._counts[clusters]
            new = old + n
            merged = (self._c[clusters].astype(np.float64) * old[:, None] + sums) / new[:, None]
            self._c[clusters] = merged.astype(np.float32)
            self._counts[clusters] = new
        else:
            # Closed form of applying c += h (x - c) to a cluster's points in order:
            # c_m = (1-h)^m c_0 + sum_j h (1-h)^(m-j) x_j.
            h = self.halflife
            order = np.argsort(labels, kind="stable")
            sorted_labels = labels[order]
            starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
            sizes = np.diff(np.r_[starts, labels.size])
            rank = np.arange(labels.size) - np.repeat(starts, sizes)  # 0-based within cluster
            remaining = np.repeat(sizes, sizes) - 1 - rank  # later points in the same cluster
            weights = h * (1.0 - h) ** remaining
            weighted = np.add.reduceat(x[order].astype(np.float64) * weights[:, None], starts, axis=0)
            decay = (1.0 - h) ** sizes
            moved = self._c[clusters].astype(np.float64) * decay[:, None] + weighted
            self._c[clusters] = moved.astype(np.float32)
            self._counts[clusters] += sizes
        self._refresh_norms(clusters)

    # ------------------------------------------------------------------ river protocol

    def predict_one(self, x: VectorLike) -> int:
        """Index of the nearest centroid (no state change)."""
        return self._score_one(self._as_matrix(x)[0])[0]

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid per row (no state change)."""
        return self._score(self._as_matrix(x))[0]

    def learn_one(self, x: VectorLike) -> None:
        """Assign ``x`` and move its centroid (river's signature: returns nothing)."""
        self.learn_assign_one(x)

    def learn_predict_one(self, x: VectorLike) -> int:
        """Assign ``x``, move its centroid and return the cluster (as river's method of that name)."""
        return self.learn_assign_one(x).cluster

    def learn_many(self, x: np.ndarray) -> np.ndarray:
        """Assign and learn a batch; returns the labels (see ``learn_assign_many``)."""
        return self.learn_assign_many(x).labels

    # ------------------------------------------------------------------ assignment

    def assign_one(self, x: VectorLike) -> Assignment:
        """Cluster, similarity and outlier flag of ``x`` without moving any centroid.

        Counts towards the running outlier rate, so a worker that only assigns (and
        ships deltas) still reports it.
        """
        row = self._as_matrix(x)[0]
        label, sim = self._score_one(row)
        out = sim < self.outlier_similarity
        self._observe(np.array([out]))
        return Assignment(label, sim, bool(out))

    def assign_many(self, x: np.ndarray) -> BatchAssignment:
        """Vectorised :meth:`assign_one`."""
        mat = self._as_matrix(x)
        labels, sims = self._score(mat)
        outliers = sims < self.outlier_similarity
        self._observe(outliers)
        return BatchAssignment(labels, sims, outliers)

    def learn_assign_one(self, x: VectorLike) -> Assignment:
        """Assign ``x`` and update its centroid with the configured rule."""
        row = self._as_matrix(x)
        label, sim = self._score_one(row[0])
        out = sim < self.outlier_similarity
        self._observe(np.array([out]))
        self._update(np.array([label], np.int64), row)
        self.learned += 1
        self.learned_outliers += int(out)
        return Assignment(label, sim, bool(out))

    def learn_assign_many(self, x: np.ndarray) -> BatchAssignment:
        """Assign and learn a batch, ``batch_size`` rows at a time.

        Within a chunk every row is assigned against the centroids as they were
        at the start of the chunk; the centroid moves are then exactly those of
        feeding the chunk's rows one by one in order with those assignments.
        """
        mat = self._as_matrix(x)
        m = mat.shape[0]
        labels = np.empty(m, np.int64)
        sims = np.empty(m, np.float32)
        for start in range(0, m, self.batch_size):
            chunk = mat[start : start + self.batch_size]
            lab, sim = self._score(chunk)
            labels[start : start + len(chunk)] = lab
            sims[start : start + len(chunk)] = sim
            self._update(lab, chunk)
        outliers = sims < self.outlier_similarity
        self._observe(outliers)
        self.learned += m
        self.learned_outliers += int(np.count_nonzero(outliers))
        return BatchAssignment(labels, sims, outliers)

    # ------------------------------------------------------------------ outliers

    def calibrate_outliers(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        *,
        percentile: float = DEFAULT_OUTLIER_PERCENTILE,
        min_points: int = MIN_POINTS_FOR_CALIBRATION,
    ) -> float:
        """Set the threshold at the ``percentile``-th member-to-own-centroid similarity.

        With fewer than ``min_points`` members a percentile is noise, so the
        fallback constant is kept. Returns the outlier similarity in force.
        """
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size < min_points:
            self.outlier_distance = 1.0 - DEFAULT_OUTLIER_SIMILARITY
            self.outlier_source = "default"
            log.info("outlier threshold: %d points < %d, using fallback similarity %.2f",
                     labels.size, min_points, DEFAULT_OUTLIER_SIMILARITY)
            return self.outlier_similarity
        mat = self._as_matrix(x)
        unit = self._c[labels] / np.maximum(self._norms[labels], _EPS)[:, None]
        sims = np.einsum("ij,ij->i", mat, unit)
        threshold = float(np.percentile(sims, percentile))
        self.outlier_distance = 1.0 - threshold
        self.outlier_source = f"p{percentile:g}"
        log.info("outlier threshold calibrated on %d points: similarity %.4f (p%g)",
                 labels.size, threshold, percentile)
        return threshold

    def reset_outlier_rate(self) -> None:
        """Forget the running window (e.g. after loading a new clustering version)."""
        self._window = _RateWindow(self._window.size)
        self.local_assigned = 0
        self.local_outliers = 0

    # ------------------------------------------------------------------ shared state

    def has_applied(self, batch_id: str) -> bool:
        """Whether a delta batch with this id is already merged (within the remembered window)."""
        return batch_id in self._applied

    def apply_deltas(self, deltas: CentroidDeltas) -> bool:
        """Merge a worker's (sum, count) deltas; False if skipped (duplicate or stale version).

        Order-independent and idempotent for the remembered ids: ``max_applied_ids``
        must exceed the number of batches that can be redelivered (Kafka only
        redelivers what was not committed, so a few per partition).
        """
        if self.rule != "mean":
            raise ValueError("deltas commute only under rule='mean'; river's halflife updates do not")
        if deltas.batch_id in self._applied:
            log.debug("delta batch %s already applied; skipping", deltas.batch_id)
            return False
        if deltas.version != self.version:
            log.info("dropping delta batch %s for version %d (state is at version %d)",
                     deltas.batch_id, deltas.version, self.version)
            return False
        if deltas.dim != self.dim:
            raise ValueError(f"delta dimension {deltas.dim} != state dimension {self.dim}")
        clusters = np.asarray(deltas.clusters, dtype=np.int64)
        if clusters.size and (clusters.min() < 0 or clusters.max() >= self.n_clusters):
            raise ValueError("delta refers to a cluster index outside the state")
        counts = np.asarray(deltas.counts, dtype=np.int64)
        keep = counts > 0
        clusters, counts, sums = clusters[keep], counts[keep], np.asarray(deltas.sums, np.float64)[keep]
        if clusters.size:
            old = self._counts[clusters]
            new = old + counts
            merged = (self._c[clusters].astype(np.float64) * old[:, None] + sums) / new[:, None]
            self._c[clusters] = merged.astype(np.float32)
            self._counts[clusters] = new
            self._refresh_norms(clusters)
        self.learned += int(counts.sum())
        self.learned_outliers += int(deltas.outliers)
        self.updates += 1
        self._remember(deltas.batch_id)
        return True

    def _remember(self, batch_id: str) -> None:
        self._applied[batch_id] = None
        while len(self._applied) > self.max_applied_ids:
            self._applied.popitem(last=False)

    def to_state(self, encoding: Literal["base64", "list"] = "base64") -> dict[str, Any]:
        """JSON-safe snapshot (centroids as base64 little-endian float32 by default)."""
        cents: Any = _encode_array(self._c, "float32") if encoding == "base64" else self._c.tolist()
        return {
            "format": STATE_FORMAT,
            "facet": self.facet,
            "version": self.version,
            "rule": self.rule,
            "halflife": self.halflife,
            "metric": self.metric,
            "k": self.n_clusters,
            "dim": self.dim,
            "centroids": cents,
            "counts": [int(c) for c in self._counts],
            "outlier_distance": self.outlier_distance,
            "outlier_source": self.outlier_source,
            "learned": self.learned,
            "learned_outliers": self.learned_outliers,
            "updates": self.updates,
            "applied_ids": list(self._applied),
            "max_applied_ids": self.max_applied_ids,
            "saved_at": time.time(),
        }

    @classmethod
    def from_state(cls, doc: Mapping[str, Any], **kwargs: Any) -> OnlineKMeans:
        """Inverse of :meth:`to_state`; ``kwargs`` set the runtime-only options."""
        if doc.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {doc.get('format')!r}")
        k, dim = int(doc["k"]), int(doc["dim"])
        cents = _decode_array(doc["centroids"], "float32").reshape(k, dim)
        model = cls(
            cents,
            counts=doc["counts"],
            rule=doc.get("rule", "mean"),
            halflife=float(doc.get("halflife", 0.5)),
            metric=doc.get("metric"),
            version=int(doc.get("version", 0)),
            outlier_distance=float(doc["outlier_distance"]),
            facet=doc.get("facet"),
            max_applied_ids=int(doc.get("max_applied_ids", 10_000)),
            **kwargs,
        )
        model.outlier_source = str(doc.get("outlier_source", "manual"))
        model.learned = int(doc.get("learned", 0))
        model.learned_outliers = int(doc.get("learned_outliers", 0))
        model.updates = int(doc.get("updates", 0))
        for batch_id in doc.get("applied_ids", []):
            model._remember(str(batch_id))
        return model

    def __repr__(self) -> str:
        return (f"OnlineKMeans(k={self.n_clusters}, dim={self.dim}, rule={self.rule!r}, "
                f"metric={self.metric!r}, version={self.version}, facet={self.facet!r})")


# --------------------------------------------------------------------------- benchmark


def _random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalise_rows(rng.standard_normal((n, dim), dtype=np.float32))


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench(k: int = 1000, dim: int = 768, n: int = 20_000, n_one: int = 2_000,
          river_ks: Iterable[int] = (50, 500), river_points: Mapping[int, int] | None = None,
          seed: int = 0) -> dict[str, float]:
    """Vectors per second of this module against river's KMeans (few points for river: it is slow)."""
    rng = np.random.default_rng(seed)
    x = _random_unit(rng, n, dim)
    results: dict[str, float] = {}
    model = OnlineKMeans(_random_unit(rng, k, dim), counts=np.full(k, 10))
    model.learn_many(x[:512])  # warm up BLAS
    t0 = time.perf_counter()
    model.learn_many(x)
    results[f"numpy learn_many k={k} d={dim}"] = _rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.predict_many(x)
    results[f"numpy predict_many k={k} d={dim}"] = _rate(n, time.perf_counter() - t0)
    t0 = time.perf_counter()
    for row in x[:n_one]:
        model.learn_one(row)
    results[f"numpy learn_one k={k} d={dim}"] = _rate(n_one, time.perf_counter() - t0)
    try:
        import river  # noqa: F401
    except ImportError:  # pragma: no cover - river is a dependency
        log.warning("river not installed; skipping its benchmark")
        return results
    river_points = dict(river_points or {50: 40, 500: 6})
    for rk in river_ks:
        km = OnlineKMeans(_random_unit(rng, rk, dim), rule="river").to_river(seed=seed)
        pts = [dict(enumerate(row.astype(float))) for row in x[: river_points.get(rk, 10)]]
        t0 = time.perf_counter()
        for p in pts:
            km.learn_one(p)
        results[f"river KMeans.learn_one k={rk} d={dim}"] = _rate(len(pts), time.perf_counter() - t0)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clio_stream.online --bench``."""
    parser = argparse.ArgumentParser(prog="python -m clio_stream.online", description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true", help="print vectors/s against river's KMeans")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads (default 1: per-vector work gains nothing from more, "
                             "and on a busy 2-core box more threads are several times slower); 0 = library default")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.bench:
        parser.print_help()
        return 0
    limiter: Any = contextlib.nullcontext()
    if args.threads > 0:
        try:
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(limits=args.threads, user_api="blas")
        except ImportError:
            log.warning("threadpoolctl missing; set OPENBLAS_NUM_THREADS=%d yourself", args.threads)
    with limiter:
        for name, rate in bench(k=args.k, dim=args.dim, n=args.n).items():
            log.info("%-45s %12.1f vectors/s", name, rate)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
