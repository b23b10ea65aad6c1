from clio_stream.living.scheduler import Snapshot, Triggers, due

T = Triggers(interval_s=100, new_fraction=0.1, min_points=10, outlier_rate=0.3)


def snap(**kw):
    base = dict(now=1000.0, last_run_at=950.0, points_at_last_run=100, points_now=100)
    return Snapshot(**{**base, **kw})


def test_nothing_before_min_points_even_if_requested():
    assert due(snap(points_now=5, last_run_at=None, points_at_last_run=0, requested_at=999), T) is None


def test_first_clustering_and_request():
    assert due(snap(last_run_at=None, points_at_last_run=0), T) == "first clustering"
    assert due(snap(requested_at=990.0), T) == "requested"
    assert due(snap(requested_at=900.0), T) is None  # already served by the run at 950


def test_new_data_fraction():
    assert due(snap(points_now=109), T) is None
    assert due(snap(points_now=110), T).startswith("new data")


def test_drift_and_outliers_need_new_points():
    assert due(snap(points_now=101, drift_detected=True), T) == "drift detected"
    assert due(snap(points_now=101, outlier_rate=0.5), T).startswith("outlier rate")
    assert due(snap(drift_detected=True), T) is None  # nothing new since the last run


def test_schedule():
    assert due(snap(points_now=101, now=1049.0), T) is None
    assert due(snap(points_now=101, now=1050.0), T) == "schedule"
    assert due(snap(now=5000.0), T) is None  # no new points: the schedule has nothing to do


def test_chores_run_every_poll_and_a_failing_one_does_not_stop_the_loop():
    """User deletions ride on the scheduler's loop (clio_stream.living.service): a failure is retried."""
    import threading

    from clio_stream.living.scheduler import ReclusterScheduler

    calls: list[str] = []
    enough = threading.Event()

    def failing() -> None:
        calls.append("failing")
        raise RuntimeError("Qdrant went away")

    def counting() -> None:
        calls.append("counting")
        if calls.count("counting") >= 3:
            enough.set()

    empty = Snapshot(now=0.0, last_run_at=None, points_at_last_run=0, points_now=0)
    sched = ReclusterScheduler(lambda: empty, lambda reason: None, Triggers(), poll_s=0.01, chores=[failing, counting])
    sched.start()
    try:
        assert enough.wait(10)
    finally:
        sched.stop()
        sched.join(10)
    assert calls[:4] == ["failing", "counting", "failing", "counting"]
