"""The drift monitor: ADWIN fires on a rise in assignment distance, not on a fall, and resets per version."""

from __future__ import annotations

import numpy as np

from clio_stream.online.drift import DriftMonitor, drift_since
from clio_stream.living.scheduler import Snapshot, Triggers, due
from clio_stream.settings import ClioSettings


def _distances(rng: np.random.Generator, mean: float, n: int) -> list[float]:
    return list(np.clip(rng.normal(mean, 0.03, n), 0, 2))


def test_a_rise_in_distance_is_detected_after_the_change_not_before() -> None:
    rng = np.random.default_rng(0)
    m = DriftMonitor(delta=0.002, min_increase=0.05)
    assert not m.update("Request", 1, _distances(rng, 0.2, 2000), now=100.0)  # stable stream: no false alarm
    assert m.update("Request", 1, _distances(rng, 0.6, 400), now=200.0)  # a topic the clusters do not cover
    snap = m.snapshot()["Request"]
    assert snap["detections"] >= 1 and snap["detected_at"] == 200.0
    assert snap["mean_after"] > snap["mean_before"] + 0.05


def test_a_fall_in_distance_is_not_drift() -> None:
    rng = np.random.default_rng(1)
    m = DriftMonitor(delta=0.002, min_increase=0.02)
    m.update("Task", 3, _distances(rng, 0.6, 1500))
    assert not m.update("Task", 3, _distances(rng, 0.1, 1500))  # the clusters fit better: no re-clustering
    assert m.snapshot()["Task"]["detections"] == 0


def test_a_new_clustering_version_starts_a_fresh_detector() -> None:
    rng = np.random.default_rng(2)
    m = DriftMonitor()
    m.update("Request", 1, _distances(rng, 0.2, 1000))
    m.update("Request", 2, _distances(rng, 0.6, 50))  # distances against new centroids are a new baseline
    snap = m.snapshot()["Request"]
    assert snap["version"] == 2 and snap["seen"] == 50 and snap["detections"] == 0


def test_drift_since_only_counts_detections_after_the_last_run() -> None:
    docs = [{"drift": {"Request": {"detected_at": 50.0}}}, {"drift": {}}, {}]
    assert drift_since(docs, "Request", None)
    assert drift_since(docs, "Request", 40.0)
    assert not drift_since(docs, "Request", 60.0)
    assert not drift_since(docs, "Task", None)


def test_drift_and_outliers_trigger_only_with_new_points() -> None:
    t = Triggers.from_settings(ClioSettings(), interval_s=10_000)
    base = dict(now=1000.0, last_run_at=900.0, points_at_last_run=1000)
    assert due(Snapshot(points_now=1005, drift_detected=True, **base), t) == "drift detected"
    assert due(Snapshot(points_now=1005, outlier_rate=0.5, **base), t).startswith("outlier rate")
    assert due(Snapshot(points_now=1000, drift_detected=True, **base), t) is None  # nothing new to re-cluster
    assert due(Snapshot(points_now=1005, outlier_rate=0.1, **base), t) is None


def test_triggers_come_from_settings_and_flags_override() -> None:
    s = ClioSettings(recluster_interval_s=60, recluster_new_fraction=0.5, recluster_min_points=7,
                     recluster_outlier_rate=0.4)
    assert Triggers.from_settings(s) == Triggers(interval_s=60, new_fraction=0.5, min_points=7, outlier_rate=0.4)
    assert Triggers.from_settings(s, interval_s=5, min_points=None).interval_s == 5
