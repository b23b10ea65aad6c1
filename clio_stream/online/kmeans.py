"""Online k-means: assign each new facet embedding to a cluster the moment it arrives.

The batch job publishes centroids (a clustering ``version``); between runs the
consumers assign new vectors to the nearest of them, and the centroids move only
through :class:`CentroidDeltas` merged alike on every replica. River's protocol
(``learn_one``/``predict_one``, batched ``learn_many``/``predict_many``) lets the
model stand in for ``river.cluster.KMeans`` and be checked against it.

``rule="mean"`` (default) keeps each centre the exact running mean of its members
(raw means, norm below 1), so a point's pull shrinks as the cluster grows and the
updates of many workers commute: that is what makes deltas possible. It assigns by
cosine. ``rule="river"`` is river's ``c += halflife * (x - c)`` with squared
Euclidean assignment, for compatibility and the equivalence tests. Either way the
reported similarity is the cosine to the assigned centroid, and a point is an
outlier below ``1 - outlier_distance``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from clio_stream.domain.vectors import normalise_rows
from clio_stream.online.arrays import decode_array, encode_array
from clio_stream.online.assignment import (
    BatchAssignment,
    Metric,
    Scorer,
    VectorLike,
    as_unit_rows,
)
from clio_stream.online.deltas import AppliedRecords, CentroidDeltas
from clio_stream.online.outliers import (
    DEFAULT_OUTLIER_PERCENTILE,
    DEFAULT_THRESHOLD,
    OutlierThreshold,
    RateWindow,
    calibrated_threshold,
)
from clio_stream.online.update_rules import halflife_step, mean_step, member_means

log = logging.getLogger(__name__)

Rule = Literal["mean", "river"]

STATE_FORMAT = "clio-online-kmeans/1"


def _read_only(a: np.ndarray) -> np.ndarray:
    """A view callers cannot write through: the state changes only via learning and deltas."""
    view = a.view()
    view.flags.writeable = False
    return view


class OnlineKMeans:
    """Nearest-centroid assignment plus incremental centroid updates, in numpy.

    State: ``centroids`` (k x d float32), ``counts`` (k), the clustering
    ``version``, the outlier threshold and, per source partition, the offset
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
        batch_size: int = 256,
        rate_window: int = 1000,
        max_applied_ranges: int = 1000,
    ) -> None:
        """``batch_size`` bounds how stale the centroids may be inside ``learn_many`` (1 = strictly sequential).

        ``outlier_distance`` None means the fallback constant until :meth:`from_batch` calibrates it.
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
        self._scorer: Scorer | None = None  # the centroids prepared for scoring, built on first use
        k = c.shape[0]
        self._counts = np.zeros(k, np.int64) if counts is None else np.array(counts, dtype=np.int64).reshape(k)
        self.rule: Rule = rule
        self.halflife = float(halflife)
        self.metric: Metric = metric
        self.version = int(version)
        self.facet = facet
        self.batch_size = max(1, int(batch_size))
        self.outlier = DEFAULT_THRESHOLD if outlier_distance is None else OutlierThreshold(float(outlier_distance),
                                                                                           "manual")
        # Persisted totals: points learned into this state (directly or via deltas).
        self.learned = 0
        self.learned_outliers = 0
        self.updates = 0  # deltas that added records
        self._applied = AppliedRecords(max_applied_ranges)
        self._window = RateWindow(rate_window)  # runtime only: what this replica assigned, for metrics

    @classmethod
    def from_batch(cls, x: np.ndarray, labels: np.ndarray, *, centroids: np.ndarray | None = None,
                   percentile: float = DEFAULT_OUTLIER_PERCENTILE, **kwargs: Any) -> OnlineKMeans:
        """Warm start from a batch clustering: member means, member counts, calibrated outliers.

        Centroids are the means of each cluster's members (what the mean rule
        keeps updating; the batch job's unit-length centroids point the same
        way). ``centroids`` supplies the cluster count and the centres of
        clusters that have no members. An ``outlier_distance`` in ``kwargs``
        overrides the calibration.
        """
        x = normalise_rows(x)
        labels = np.asarray(labels, dtype=np.int64)
        cents, counts = member_means(x, labels, centroids)
        model = cls(cents, counts=counts, **kwargs)
        if kwargs.get("outlier_distance") is None:
            model.outlier = calibrated_threshold(x, model.unit_centroids[labels], percentile=percentile)
        return model

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
        return _read_only(self._c)

    @property
    def unit_centroids(self) -> np.ndarray:
        """Centroids scaled to unit length (for cosine search elsewhere)."""
        return normalise_rows(self._c)

    @property
    def counts(self) -> np.ndarray:
        """Read-only view of the member counts (points learned into each centroid)."""
        return _read_only(self._counts)

    @property
    def outlier_similarity(self) -> float:
        """Similarity below which a point counts as an outlier (``1 - outlier_distance``)."""
        return self.outlier.similarity

    @property
    def outlier_rate(self) -> float:
        """Outlier fraction over this replica's last ``rate_window`` assignments (learned or only assigned)."""
        return self._window.rate

    # ------------------------------------------------------------------ river protocol and assignment

    def predict_one(self, x: VectorLike) -> int:
        """Index of the nearest centroid (no state change)."""
        return int(self._nearest(as_unit_rows(x, self.dim))[0][0])

    def predict_many(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid per row (no state change)."""
        return self._nearest(as_unit_rows(x, self.dim))[0]

    def learn_one(self, x: VectorLike) -> None:
        """Assign ``x`` and move its centroid (river's signature: returns nothing)."""
        self.learn_many(x)

    def learn_many(self, x: VectorLike, batch_size: int | None = None) -> np.ndarray:
        """Assign and learn a batch, ``batch_size`` rows at a time (default the model's; 0: all at once); returns the labels.

        Within a chunk every row is assigned against the centroids as they were
        at the start of the chunk (one matrix product); the centroid moves are then exactly those of
        feeding the chunk's rows one by one in order with those assignments.
        """
        mat = as_unit_rows(x, self.dim)
        step = self.batch_size if batch_size is None else (int(batch_size) or max(1, mat.shape[0]))
        labels = np.empty(mat.shape[0], np.int64)
        sims = np.empty(mat.shape[0], np.float32)
        for start in range(0, mat.shape[0], step):
            chunk = mat[start : start + step]
            labels[start : start + len(chunk)], sims[start : start + len(chunk)] = self._nearest(chunk)
            if self.rule == "mean":
                moved = mean_step(self._c, self._counts, labels[start : start + len(chunk)], chunk)
            else:
                moved = halflife_step(self._c, self._counts, labels[start : start + len(chunk)], chunk, self.halflife)
            self._centroids_moved(moved)
        outliers = self._observe(sims)
        self.learned += mat.shape[0]
        self.learned_outliers += int(np.count_nonzero(outliers))
        return labels

    def assign_many(self, x: np.ndarray) -> BatchAssignment:
        """Cluster, similarity and outlier flag per row, without moving any centroid (deltas do that).

        Counts towards the running outlier rate, so a worker that only assigns still reports it.
        """
        rows = as_unit_rows(x, self.dim)
        labels, sims = self._nearest(rows)
        return BatchAssignment(labels, sims, self._observe(sims), rows)

    def _nearest(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scorer = self._scorer
        if scorer is None:
            scorer = self._scorer = Scorer.of(self._c, self.metric)
        return scorer.nearest(x)

    def _observe(self, sims: np.ndarray) -> np.ndarray:
        """Outlier flags of ``sims``, pushed into the running window."""
        outliers = sims < self.outlier_similarity
        self._window.push(outliers)
        return outliers

    # ------------------------------------------------------------------ shared state

    def apply_deltas(self, deltas: CentroidDeltas) -> int:
        """Merge the records of ``deltas`` not merged yet; returns how many (0: stale version or all repeated).

        Exactly once per source record and order-independent: a record's
        contribution counts the first time any delta covering its offset is
        applied, whatever batch it travelled in. Raises :class:`DeltaRejected`
        (state untouched) when the delta does not fit this state.
        """
        return self.merge_deltas([deltas])[0]

    def check_delta(self, deltas: CentroidDeltas) -> None:
        """Raise unless ``deltas`` may merge into this model (a stale version may: it merges nothing).

        :class:`DeltaRejected` when it does not fit; ``ValueError`` under river's rule, whose updates do not commute.
        """
        self._check_rule()
        deltas.check_fits(self.facet, self.dim, self.n_clusters)

    def _check_rule(self) -> None:
        if self.rule != "mean":
            raise ValueError("deltas commute only under rule='mean'; river's halflife updates do not")

    def merge_deltas(self, deltas: Sequence[CentroidDeltas]) -> list[int]:
        """:meth:`apply_deltas` for many deltas at once: records merged per delta, in order.

        Every delta is checked first, so one that does not fit raises with the
        state untouched; the fresh rows of all of them then merge in one mean
        step, and the scorer is refreshed for the clusters that moved (what a worker
        does with a polled batch of deltas: a k-means over ~1,000 clusters sees
        about one row per cluster, and per-call costs dominate).
        """
        self._check_rule()
        current = [d.version == self.version for d in deltas]
        for d, ok in zip(deltas, current, strict=True):
            if ok:
                self.check_delta(d)
            else:
                log.info("dropping delta %s: state is at version %d", d.name, self.version)
        added: list[int] = []
        clusters: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        for d, ok in zip(deltas, current, strict=True):
            fresh = self._applied.take_fresh(d) if ok else None
            n = 0 if fresh is None else int(np.count_nonzero(fresh))
            added.append(n)
            if fresh is None or n == 0:
                continue
            if n < d.n:
                log.debug("delta %s: %d of %d records already applied", d.name, d.n - n, d.n)
            whole = n == d.n
            clusters.append(d.clusters if whole else d.clusters[fresh])
            vectors.append(d.vectors if whole else d.vectors[fresh])
            self.learned_outliers += int(np.count_nonzero(d.outliers if whole else d.outliers[fresh]))
            self.learned += n
            self.updates += 1
        if clusters:
            self._centroids_moved(mean_step(self._c, self._counts, np.concatenate(clusters), np.concatenate(vectors)))
        return added

    def _centroids_moved(self, clusters: np.ndarray) -> None:
        """Keep the prepared scorer in step with the centroids: only the rows of ``clusters`` changed."""
        if self._scorer is not None:
            self._scorer.refresh(self._c, clusters)

    def to_state(self, encoding: Literal["base64", "list"] = "base64") -> dict[str, Any]:
        """JSON-safe snapshot (centroids as base64 little-endian float32 by default)."""
        cents: Any = encode_array(self._c, "float32") if encoding == "base64" else self._c.tolist()
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
            "outlier_distance": self.outlier.distance,
            "outlier_source": self.outlier.source,
            "learned": self.learned,
            "learned_outliers": self.learned_outliers,
            "updates": self.updates,
            "applied": self._applied.to_list(),
            "max_applied_ranges": self._applied.max_ranges,
            "saved_at": time.time(),
        }

    @classmethod
    def from_state(cls, doc: Mapping[str, Any], **kwargs: Any) -> OnlineKMeans:
        """Inverse of :meth:`to_state`; ``kwargs`` set the runtime-only options (``batch_size``, ``rate_window``)."""
        if doc.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {doc.get('format')!r}")
        k, dim = int(doc["k"]), int(doc["dim"])
        model = cls(
            decode_array(doc["centroids"], "float32").reshape(k, dim),
            counts=doc["counts"],
            rule=doc.get("rule", "mean"),
            halflife=float(doc.get("halflife", 0.5)),
            metric=doc.get("metric"),
            version=int(doc.get("version", 0)),
            facet=doc.get("facet"),
            **kwargs,
        )
        model.outlier = OutlierThreshold(float(doc["outlier_distance"]), str(doc.get("outlier_source", "manual")))
        model.learned = int(doc.get("learned", 0))
        model.learned_outliers = int(doc.get("learned_outliers", 0))
        model.updates = int(doc.get("updates", 0))
        model._applied = AppliedRecords.from_list(doc.get("applied", []), int(doc.get("max_applied_ranges", 1000)))
        return model

    def __repr__(self) -> str:
        return (f"OnlineKMeans(k={self.n_clusters}, dim={self.dim}, rule={self.rule!r}, "
                f"metric={self.metric!r}, version={self.version}, facet={self.facet!r})")
