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
possible: replicas never drift their own copies; they ship the vectors they
assigned, keyed by source record, and any process merges them in any order,
each record exactly once however often it is redelivered.

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

from clio_stream.domain.vectors import normalise_rows

if TYPE_CHECKING:  # river is only needed for the converters and the benchmark
    from river.cluster import KMeans as RiverKMeans

log = logging.getLogger(__name__)

Rule = Literal["mean", "river"]
Metric = Literal["cosine", "euclidean"]
VectorLike = np.ndarray | Sequence[float] | Mapping[int, float]

STATE_FORMAT = "clio-online-kmeans/1"
DELTA_FORMAT = "clio-centroid-deltas/2"
# Bounds a delta must respect: a hostile one must not cost memory or mark far-away offsets applied.
MAX_DELTA_RECORDS = 10_000
MAX_DELTA_SPAN = 1_000_000  # offsets one delta may speak for (a polled range, dead letters included)
MAX_DIM = 65_536
NORM_TOLERANCE = 1e-3  # rows are unit embeddings as assigned
DELTA_CHUNK_BYTES = 512 * 1024  # under Kafka's default 1 MiB message limit
_MAX_INT = (1 << 63) - 1
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


class DeltaRejected(ValueError):
    """A centroid delta that must never be applied (malformed or hostile); the message says why."""


def _strict_int(value: Any, name: str, lo: int = 0, hi: int = _MAX_INT) -> int:
    """``value`` as an int in [lo, hi]; bools, floats and strings are refused (JSON gives real ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DeltaRejected(f"{name} is not an integer: {value!r:.40}")
    if int(value) < lo:
        raise DeltaRejected(f"{name} {int(value)} below {lo}")
    if int(value) > hi:
        raise DeltaRejected(f"{name} {int(value)} above {hi}")
    return int(value)


def _int_list(values: Any, name: str) -> np.ndarray:
    if not isinstance(values, list):
        raise DeltaRejected(f"{name} is not a list")
    return np.array([_strict_int(v, name) for v in values], dtype=np.int64)


def _bool_list(values: Any, name: str) -> np.ndarray:
    if not isinstance(values, list) or not all(isinstance(v, bool) for v in values):
        raise DeltaRejected(f"{name} is not a list of booleans")
    return np.array(values, dtype=bool)


def _strict_vectors(doc: Any, rows: int, dim: int) -> np.ndarray:
    """The base64 float32 matrix of a delta, refusing any other dtype or shape (no silent casts)."""
    if not isinstance(doc, Mapping) or doc.get("dtype") != "float32" or not isinstance(doc.get("b64"), str):
        raise DeltaRejected("vectors are not a base64 float32 array")
    if doc.get("shape") != [rows, dim]:
        raise DeltaRejected(f"vectors have shape {doc.get('shape')!r:.40}, expected [{rows}, {dim}]")
    try:
        raw = base64.b64decode(doc["b64"], validate=True)
    except ValueError as exc:
        raise DeltaRejected(f"vectors are not valid base64: {exc}") from exc
    if len(raw) != rows * dim * 4:
        raise DeltaRejected(f"vectors hold {len(raw)} bytes, expected {rows * dim * 4}")
    return np.frombuffer(raw, dtype="<f4").reshape(rows, dim).astype(np.float32)


@dataclass(frozen=True, eq=False)
class CentroidDeltas:
    """The vectors one worker assigned from one run of source offsets, one unit vector per record.

    The identity of a delta is its source records, not the batch that happened
    to poll them: ``[first, last]`` is the offset range of ``topic``/``partition``
    it speaks for (records in it without a row contributed nothing) and each row
    names its record's offset. :meth:`OnlineKMeans.apply_deltas` adds the rows
    whose offsets it has not applied yet for this facet and version, then marks
    the whole range applied, so a redelivery over a different range (a sub- or
    super-range after a failed commit or a rebalance) adds only what is new.
    Per-record rows rather than per-cluster sums make that overlap subtractable.

    Construction validates everything that does not depend on the receiving
    model (:class:`DeltaRejected` otherwise): a delta object is never hostile.
    Each record weighs exactly one, so there is no count to forge.
    """

    facet: str
    version: int
    topic: str
    partition: int
    first: int
    last: int
    offsets: np.ndarray  # int64 (m,), strictly increasing, inside [first, last]
    clusters: np.ndarray  # int64 (m,)
    vectors: np.ndarray  # float32 (m, dim), unit length
    outliers: np.ndarray  # bool (m,)

    def __post_init__(self) -> None:
        for name in ("facet", "topic"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or len(value) > 256:
                raise DeltaRejected(f"{name} is not a non-empty string")
        _strict_int(self.version, "version")
        _strict_int(self.partition, "partition", hi=1 << 31)
        first, last = _strict_int(self.first, "first"), _strict_int(self.last, "last")
        if not first <= last <= first + MAX_DELTA_SPAN:
            raise DeltaRejected(f"offset range [{first}, {last}] is empty or spans more than {MAX_DELTA_SPAN}")
        m = int(np.asarray(self.offsets).shape[0]) if np.ndim(self.offsets) == 1 else -1
        if m < 1 or m > MAX_DELTA_RECORDS:
            raise DeltaRejected(f"{m} records (need 1..{MAX_DELTA_RECORDS})")
        if np.shape(self.clusters) != (m,) or np.shape(self.outliers) != (m,):
            raise DeltaRejected(f"lengths differ: {m} offsets, clusters {np.shape(self.clusters)}, "
                                f"outliers {np.shape(self.outliers)}")
        if np.ndim(self.vectors) != 2 or np.shape(self.vectors)[0] != m or not 1 <= np.shape(self.vectors)[1] <= MAX_DIM:
            raise DeltaRejected(f"vectors have shape {np.shape(self.vectors)}, expected ({m}, dim)")
        offsets = np.asarray(self.offsets, dtype=np.int64)
        if np.any(np.diff(offsets) <= 0):
            raise DeltaRejected("offsets are not strictly increasing (a record counted twice?)")
        if offsets[0] < first or offsets[-1] > last:
            raise DeltaRejected(f"offsets {offsets[0]}..{offsets[-1]} outside the range [{first}, {last}]")
        if np.any(np.asarray(self.clusters) < 0):
            raise DeltaRejected("negative cluster index")
        vectors = np.asarray(self.vectors, dtype=np.float32)
        if not np.all(np.isfinite(vectors)):
            raise DeltaRejected("vectors hold NaN or infinity")
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        if np.any(np.abs(norms - 1.0) > NORM_TOLERANCE):
            raise DeltaRejected(f"vectors are not unit length (norms {norms.min():.4g}..{norms.max():.4g})")

    @classmethod
    def for_records(cls, facet: str, version: int, topic: str, partition: int, first: int, last: int,
                    offsets: np.ndarray, clusters: np.ndarray, vectors: np.ndarray,
                    outliers: np.ndarray) -> list[CentroidDeltas]:
        """Deltas of the assigned records of one polled range, split to stay under ``DELTA_CHUNK_BYTES``.

        Rows are sorted by offset and normalised (as they were assigned). The
        chunks' ranges tile ``[first, last]``, so the whole polled range is marked.
        """
        order = np.argsort(np.asarray(offsets, dtype=np.int64), kind="stable")
        offsets = np.asarray(offsets, dtype=np.int64)[order]
        vectors = normalise_rows(np.asarray(vectors, dtype=np.float32)[order])
        clusters = np.asarray(clusters, dtype=np.int64)[order]
        outliers = np.asarray(outliers, dtype=bool)[order]
        row_bytes = vectors.shape[1] * 16 // 3 + 32  # base64 float32 row, offset, cluster, flag
        per_chunk = max(1, min(MAX_DELTA_RECORDS, (DELTA_CHUNK_BYTES - 512) // row_bytes))
        out: list[CentroidDeltas] = []
        start = first
        for i in range(0, offsets.size, per_chunk):
            j = min(offsets.size, i + per_chunk)
            end = last if j == offsets.size else int(offsets[j - 1])
            out.append(cls(facet, int(version), topic, int(partition), int(start), int(end), offsets[i:j],
                           clusters[i:j], vectors[i:j], outliers[i:j]))
            start = end + 1
        return out

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n(self) -> int:
        """Number of records the delta carries."""
        return int(self.offsets.shape[0])

    @property
    def name(self) -> str:
        """For logs: where the delta's records come from."""
        return f"{self.facet}/v{self.version}/{self.topic}[{self.partition}]@{self.first}-{self.last}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (vectors as base64 little-endian float32), to ship through Kafka."""
        return {
            "format": DELTA_FORMAT,
            "facet": self.facet,
            "version": int(self.version),
            "topic": self.topic,
            "partition": int(self.partition),
            "first": int(self.first),
            "last": int(self.last),
            "dim": self.dim,
            "offsets": [int(o) for o in self.offsets],
            "clusters": [int(c) for c in self.clusters],
            "outliers": [bool(o) for o in self.outliers],
            "vectors": _encode_array(self.vectors, "float32"),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> CentroidDeltas:
        """Inverse of :meth:`to_dict`; anything else raises :class:`DeltaRejected` with the reason."""
        if not isinstance(doc, Mapping):
            raise DeltaRejected(f"not a JSON object but {type(doc).__name__}")
        if doc.get("format") != DELTA_FORMAT:
            raise DeltaRejected(f"unknown delta format {doc.get('format')!r:.60}")
        missing = [k for k in ("facet", "version", "topic", "partition", "first", "last", "dim", "offsets",
                               "clusters", "outliers", "vectors") if k not in doc]
        if missing:
            raise DeltaRejected(f"missing fields {missing}")
        offsets = _int_list(doc["offsets"], "offsets")
        dim = _strict_int(doc["dim"], "dim", lo=1, hi=MAX_DIM)
        if offsets.size > MAX_DELTA_RECORDS:
            raise DeltaRejected(f"{offsets.size} records (need 1..{MAX_DELTA_RECORDS})")
        return cls(
            facet=doc["facet"], version=doc["version"], topic=doc["topic"], partition=doc["partition"],
            first=doc["first"], last=doc["last"], offsets=offsets,
            clusters=_int_list(doc["clusters"], "clusters"), outliers=_bool_list(doc["outliers"], "outliers"),
            vectors=_strict_vectors(doc["vectors"], offsets.size, dim),
        )


class OffsetRanges:
    """Disjoint, sorted, inclusive offset ranges: which source offsets of one partition are applied.

    A partition processed in order gives adjacent polled ranges that merge, so
    this stays a handful of ranges. Past ``max_ranges`` the oldest gap is closed
    (its offsets count as applied): forgetting errs towards skipping, never
    towards applying twice.
    """

    def __init__(self, ranges: Iterable[Sequence[int]] = (), max_ranges: int = 1000) -> None:
        self.max_ranges = max(1, int(max_ranges))
        self._ranges: list[tuple[int, int]] = []
        for lo, hi in ranges:
            self.add(int(lo), int(hi))

    def contains(self, offsets: np.ndarray) -> np.ndarray:
        """Boolean mask: which ``offsets`` lie inside an applied range."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if not self._ranges:
            return np.zeros(offsets.shape, dtype=bool)
        starts = np.array([lo for lo, _ in self._ranges], dtype=np.int64)
        ends = np.array([hi for _, hi in self._ranges], dtype=np.int64)
        idx = np.searchsorted(starts, offsets, side="right") - 1
        return (idx >= 0) & (offsets <= ends[np.maximum(idx, 0)])

    def add(self, first: int, last: int) -> None:
        """Mark ``[first, last]`` applied, merging overlapping and adjacent ranges."""
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted([*self._ranges, (int(first), int(last))]):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        while len(merged) > self.max_ranges:
            merged[0:2] = [(merged[0][0], merged[1][1])]
        self._ranges = merged

    def to_list(self) -> list[list[int]]:
        return [[lo, hi] for lo, hi in self._ranges]


# --------------------------------------------------------------------------- the model


class OnlineKMeans:
    """Nearest-centroid assignment plus incremental centroid updates, in numpy.

    State: ``centroids`` (k x d float32), ``counts`` (k), the clustering
    ``version``, ``outlier_distance`` and, per source partition, the offset
    ranges whose deltas are applied.
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
        max_applied_ranges: int = 1000,
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
        self.updates = 0  # deltas that added records
        self.max_applied_ranges = int(max_applied_ranges)
        self._applied: dict[tuple[str, int], OffsetRanges] = {}  # (topic, partition) -> applied source offsets
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
        if self.rule == "mean":
            self._merge_sums(*group_sums(labels, x))
            return
        # Closed form of applying c += h (x - c) to a cluster's points in order:
        # c_m = (1-h)^m c_0 + sum_j h (1-h)^(m-j) x_j.
        h = self.halflife
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        clusters = sorted_labels[starts]
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

    def _merge_sums(self, clusters: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> None:
        """Fold per-cluster (sum, count) into the running means: the mean rule, in any order."""
        if clusters.size == 0:
            return
        old = self._counts[clusters]
        new = old + counts
        merged = (self._c[clusters].astype(np.float64) * old[:, None] + sums) / new[:, None]
        self._c[clusters] = merged.astype(np.float32)
        self._counts[clusters] = new
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

    def has_applied(self, topic: str, partition: int, offset: int) -> bool:
        """Whether deltas covering this source record are merged (for this state's facet and version)."""
        ranges = self._applied.get((topic, int(partition)))
        return ranges is not None and bool(ranges.contains(np.array([offset]))[0])

    def check_deltas(self, deltas: CentroidDeltas) -> None:
        """Raise :class:`DeltaRejected` unless ``deltas`` fits this state (facet, dimension, cluster indices)."""
        if self.facet is not None and deltas.facet != self.facet:
            raise DeltaRejected(f"delta for facet {deltas.facet!r} sent to the model of {self.facet!r}")
        if deltas.dim != self.dim:
            raise DeltaRejected(f"delta dimension {deltas.dim} != state dimension {self.dim}")
        if int(deltas.clusters.max()) >= self.n_clusters:
            raise DeltaRejected(f"cluster index {int(deltas.clusters.max())} outside [0, {self.n_clusters})")

    def apply_deltas(self, deltas: CentroidDeltas) -> int:
        """Merge the records of ``deltas`` not merged yet; returns how many (0: stale version or all repeated).

        Exactly once per source record and order-independent: a record's
        contribution counts the first time any delta covering its offset is
        applied, whatever batch it travelled in. Raises :class:`DeltaRejected`
        (state untouched) when the delta does not fit this state.
        """
        if self.rule != "mean":
            raise ValueError("deltas commute only under rule='mean'; river's halflife updates do not")
        if deltas.version != self.version:
            log.info("dropping delta %s: state is at version %d", deltas.name, self.version)
            return 0
        self.check_deltas(deltas)
        key = (deltas.topic, deltas.partition)
        applied = self._applied.setdefault(key, OffsetRanges(max_ranges=self.max_applied_ranges))
        fresh = ~applied.contains(deltas.offsets)
        applied.add(deltas.first, deltas.last)
        n = int(np.count_nonzero(fresh))
        if n < deltas.n:
            log.debug("delta %s: %d of %d records already applied", deltas.name, deltas.n - n, deltas.n)
        if n == 0:
            return 0
        self._merge_sums(*group_sums(deltas.clusters[fresh], deltas.vectors[fresh]))
        self.learned += n
        self.learned_outliers += int(np.count_nonzero(deltas.outliers[fresh]))
        self.updates += 1
        return n

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
            "applied": [{"topic": t, "partition": p, "ranges": r.to_list()} for (t, p), r in self._applied.items()],
            "max_applied_ranges": self.max_applied_ranges,
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
            max_applied_ranges=int(doc.get("max_applied_ranges", 1000)),
            **kwargs,
        )
        model.outlier_source = str(doc.get("outlier_source", "manual"))
        model.learned = int(doc.get("learned", 0))
        model.learned_outliers = int(doc.get("learned_outliers", 0))
        model.updates = int(doc.get("updates", 0))
        for entry in doc.get("applied", []):
            model._applied[(str(entry["topic"]), int(entry["partition"]))] = OffsetRanges(
                entry["ranges"], max_ranges=model.max_applied_ranges)
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
