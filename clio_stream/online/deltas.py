"""Centroid deltas: the vectors a worker assigned, keyed by source record, so every replica merges each once.

Replicas never drift their own copies of the centroids: they ship what they
assigned and any process merges it (``OnlineKMeans.apply_deltas``, or
``merge_deltas`` for a batch) in any order, each record exactly once however
often it is redelivered. This module holds the
delta, its validation (a record on the deltas topic may be hostile), its wire
dict, and the offset ranges that say which records are merged.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clio_stream.domain.vectors import row_norms
from clio_stream.online.arrays import encode_array

DELTA_FORMAT = "clio-centroid-deltas/2"
# Bounds a delta must respect: a hostile one must not cost memory or mark far-away offsets applied.
MAX_DELTA_RECORDS = 10_000
MAX_DELTA_SPAN = 1_000_000  # offsets one delta may speak for (a polled range, dead letters included)
MAX_DIM = 65_536
NORM_TOLERANCE = 1e-3  # rows are unit embeddings as assigned
DELTA_CHUNK_BYTES = 512 * 1024  # under Kafka's default 1 MiB message limit
_MAX_INT = (1 << 63) - 1


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
    names its record's offset. ``OnlineKMeans.apply_deltas`` adds the rows
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
        # float32 dot products are exact to ~1e-6 here, far inside the tolerance. Every norm is finite when all
        # values are and none overflows (squares are never negative), so only a bad delta pays a second pass.
        norms = row_norms(vectors)
        if not np.all(np.isfinite(norms)) and not np.all(np.isfinite(vectors)):
            raise DeltaRejected("vectors hold NaN or infinity")
        if not np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE):  # an overflowed (inf) norm fails here too
            raise DeltaRejected(f"vectors are not unit length (norms {norms.min():.4g}..{norms.max():.4g})")

    @classmethod
    def for_records(cls, facet: str, version: int, topic: str, partition: int, first: int, last: int,
                    offsets: np.ndarray, clusters: np.ndarray, vectors: np.ndarray,
                    outliers: np.ndarray) -> list[CentroidDeltas]:
        """Deltas of the assigned records of one polled range, split to stay under ``DELTA_CHUNK_BYTES``.

        ``vectors`` are the unit rows as they were assigned (``BatchAssignment.rows``: normalised once, by the
        assignment). Rows are sorted by offset. The chunks' ranges tile ``[first, last]``, so the whole polled
        range is marked.
        """
        offsets = np.array(offsets, dtype=np.int64)  # copies: a delta never shares the caller's arrays
        clusters = np.array(clusters, dtype=np.int64)
        outliers = np.array(outliers, dtype=bool)
        vectors = np.array(vectors, dtype=np.float32)
        if np.any(offsets[1:] < offsets[:-1]):  # a worker's polled records come in order: no gather then
            order = np.argsort(offsets, kind="stable")
            offsets, vectors, clusters, outliers = offsets[order], vectors[order], clusters[order], outliers[order]
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

    def check_fits(self, facet: str | None, dim: int, n_clusters: int) -> None:
        """Raise :class:`DeltaRejected` unless this delta fits a model of ``facet`` (None: any), ``dim``, ``n_clusters``."""
        if facet is not None and self.facet != facet:
            raise DeltaRejected(f"delta for facet {self.facet!r} sent to the model of {facet!r}")
        if self.dim != dim:
            raise DeltaRejected(f"delta dimension {self.dim} != state dimension {dim}")
        if int(self.clusters.max()) >= n_clusters:
            raise DeltaRejected(f"cluster index {int(self.clusters.max())} outside [0, {n_clusters})")

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
            "vectors": encode_array(self.vectors, "float32"),
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



class AppliedRecords:
    """Which source records' deltas a model has merged, per (topic, partition): the exactly-once bookkeeping."""

    def __init__(self, max_ranges: int = 1000) -> None:
        self.max_ranges = int(max_ranges)
        self._ranges: dict[tuple[str, int], OffsetRanges] = {}

    def take_fresh(self, deltas: CentroidDeltas) -> np.ndarray:
        """Mask of the delta's rows not merged before; its whole offset range counts as merged from now on."""
        applied = self._ranges.setdefault((deltas.topic, deltas.partition), OffsetRanges(max_ranges=self.max_ranges))
        fresh = ~applied.contains(deltas.offsets)
        applied.add(deltas.first, deltas.last)
        return fresh

    def to_list(self) -> list[dict[str, Any]]:
        """The state document's ``applied`` entries."""
        return [{"topic": t, "partition": p, "ranges": r.to_list()} for (t, p), r in self._ranges.items()]

    @classmethod
    def from_list(cls, entries: Iterable[Mapping[str, Any]], max_ranges: int = 1000) -> AppliedRecords:
        """Inverse of :meth:`to_list`."""
        out = cls(max_ranges)
        for entry in entries:
            out._ranges[(str(entry["topic"]), int(entry["partition"]))] = OffsetRanges(entry["ranges"], max_ranges)
        return out
