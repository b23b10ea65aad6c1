"""When an assigned point is an outlier: the threshold from the warm start, and the recent outlier rate."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Used when the warm-start data is too small to estimate a percentile: unrelated
# sentence embeddings (mpnet, MiniLM) sit around cosine 0.0-0.2 from each other,
# while members of a facet cluster sit at 0.4-0.8 from their centroid.
DEFAULT_OUTLIER_SIMILARITY = 0.3
DEFAULT_OUTLIER_PERCENTILE = 1.0
MIN_POINTS_FOR_CALIBRATION = 20


@dataclass(frozen=True)
class OutlierThreshold:
    """Cosine distance beyond which a point is an outlier, and where that number came from."""

    distance: float
    source: str  # "default", "manual" or "p<percentile>"

    @property
    def similarity(self) -> float:
        return 1.0 - self.distance


DEFAULT_THRESHOLD = OutlierThreshold(1.0 - DEFAULT_OUTLIER_SIMILARITY, "default")


def calibrated_threshold(x: np.ndarray, own_unit_centroids: np.ndarray, *,
                         percentile: float = DEFAULT_OUTLIER_PERCENTILE,
                         min_points: int = MIN_POINTS_FOR_CALIBRATION) -> OutlierThreshold:
    """The ``percentile``-th similarity of unit rows ``x`` to their own (unit) centroids.

    With fewer than ``min_points`` members a percentile is noise, so the fallback
    constant is kept.
    """
    n = int(x.shape[0])
    if n < min_points:
        log.info("outlier threshold: %d points < %d, using fallback similarity %.2f",
                 n, min_points, DEFAULT_OUTLIER_SIMILARITY)
        return DEFAULT_THRESHOLD
    sims = np.einsum("ij,ij->i", x, own_unit_centroids)
    threshold = float(np.percentile(sims, percentile))
    log.info("outlier threshold calibrated on %d points: similarity %.4f (p%g)", n, threshold, percentile)
    return OutlierThreshold(1.0 - threshold, f"p{percentile:g}")


class RateWindow:
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
    def rate(self) -> float:
        return self._true / self._n if self._n else 0.0
