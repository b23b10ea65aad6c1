"""Per-cluster totals of the assignment pass: counts that add, so pages, shards and processes merge by addition.

For each base cluster of one facet: its points in the window, those without a user hash (they count as one
anonymous user), those newer than the previous version (growth), per trend window, and per value of each
numeric facet (joined by conversation). Distinct users do not add; they are counted by Qdrant from the labels
(``living.population``) and, above what Qdrant counts exactly, estimated from each cluster's HyperLogLog
registers kept here (``living.user_sketch``), which merge by maximum instead.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clio_stream.living.user_sketch import M, add_users, user_keys
from clio_stream.storage.documents import AssignPlan


@dataclass
class ClusterTotals:
    """Totals of ``k`` clusters under one plan; every array is indexed by cluster first."""

    counts: np.ndarray  # (k,)
    anonymous: np.ndarray  # (k,) points without a user hash
    new: np.ndarray  # (k,) points newer than the plan's ``new_after``
    trend: np.ndarray  # (k, trend_windows) points per trend window
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # facet -> (k, bins) points per value
    users: np.ndarray = field(default_factory=lambda: np.zeros((0, M), np.uint8))  # (k, M) HyperLogLog registers

    @classmethod
    def zeros(cls, k: int, plan: AssignPlan) -> ClusterTotals:
        z = np.zeros(k, np.int64)
        return cls(z.copy(), z.copy(), z.copy(), np.zeros((k, plan.trend_windows), np.int64),
                   {name: np.zeros((k, int(lo_bins[1])), np.int64) for name, lo_bins in plan.numeric.items()},
                   np.zeros((k, M), np.uint8))

    @property
    def k(self) -> int:
        return int(self.counts.shape[0])

    def add(self, other: ClusterTotals) -> ClusterTotals:
        """This plus ``other`` (same plan), in place; returns self."""
        self.counts += other.counts
        self.anonymous += other.anonymous
        self.new += other.new
        self.trend += other.trend
        for name, hist in other.numeric.items():
            self.numeric[name] += hist
        np.maximum(self.users, other.users, out=self.users)
        return self

    def add_points(self, plan: AssignPlan, labels: np.ndarray, timestamps: Sequence[float | None],
                   users: Sequence[str | None], numeric: Mapping[str, Sequence[int | None]]) -> None:
        """Count assigned points: ``labels`` (cluster per point) and, aligned with it, their conversation times,
        user hashes (None: the anonymous user) and each numeric facet's value of their conversation."""
        k = self.k
        self.counts += np.bincount(labels, minlength=k)
        anonymous = np.array([not u for u in users], dtype=bool)
        self.anonymous += np.bincount(labels[anonymous], minlength=k)
        add_users(self.users, labels[~anonymous], user_keys([u for u in users if u]))
        times = np.array([np.nan if t is None else float(t) for t in timestamps], dtype=np.float64)
        timed = ~np.isnan(times)
        if plan.new_after is not None:
            self.new += np.bincount(labels[timed & (times > plan.new_after)], minlength=k)
        if plan.trend_start is not None:
            slot = np.floor((times[timed] - plan.trend_start) / plan.trend_window_s)
            inside = (slot >= 0) & (slot < plan.trend_windows)
            np.add.at(self.trend, (labels[timed][inside], slot[inside].astype(np.int64)), 1)
        for name, (lowest, bins) in plan.numeric.items():
            values = np.array([-1 if v is None else int(v) - lowest for v in numeric.get(name, ())], dtype=np.int64)
            if len(values) != len(labels):
                continue
            ok = (values >= 0) & (values < bins)
            np.add.at(self.numeric[name], (labels[ok], values[ok]), 1)

    def to_doc(self) -> dict[str, Any]:
        """JSON-safe (zlib-compressed little-endian int64), for the shard's progress document."""
        return {"counts": _pack(self.counts), "anonymous": _pack(self.anonymous), "new": _pack(self.new),
                "trend": _pack(self.trend), "numeric": {n: _pack(h) for n, h in self.numeric.items()},
                "users": _pack(self.users, "u1")}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> ClusterTotals:
        return cls(_unpack(doc["counts"]), _unpack(doc["anonymous"]), _unpack(doc["new"]), _unpack(doc["trend"]),
                   {n: _unpack(h) for n, h in dict(doc.get("numeric") or {}).items()},
                   _unpack(doc["users"], "u1").astype(np.uint8))


def trend_start(newest: float | None, window_s: float, windows: int) -> float | None:
    """Start of the first of ``windows`` aligned trend windows ending with ``newest`` (``stages.trends``' grid)."""
    if newest is None:
        return None
    return (math.floor(newest / window_s) - windows + 1) * window_s


def _pack(a: np.ndarray, dtype: str = "<i8") -> dict[str, Any]:
    arr = np.ascontiguousarray(a, dtype=dtype)
    return {"shape": list(arr.shape), "z64": base64.b64encode(zlib.compress(arr.tobytes(), 1)).decode("ascii")}


def _unpack(doc: Mapping[str, Any], dtype: str = "<i8") -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(doc["z64"]))
    return np.frombuffer(raw, dtype=dtype).reshape(doc["shape"]).astype(np.int64 if dtype == "<i8" else np.uint8)
