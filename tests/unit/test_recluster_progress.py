"""Re-clustering progress: the fraction grows with each facet's points and stage, the ETA extrapolates, and a
failing store never fails the job."""

from __future__ import annotations

import pytest

from clio_stream.living.progress import WRITE_SHARE, JobProgress, eta, fraction_done


def test_fraction_weighs_facets_by_points_and_stages_in_order() -> None:
    points = {"Request": 300, "Task": 100}
    steps = [fraction_done(points, [], "Request", s) for s in ("warm start", "cluster and name", "finalise")]
    steps += [fraction_done(points, ["Request"], "Task", s) for s in ("warm start", "cluster and name", "finalise")]
    steps += [fraction_done(points, ["Request", "Task"], None, "write"), fraction_done(points, [], None, "done")]
    assert steps == sorted(steps) and steps[0] == 0.0 and steps[-1] == 1.0
    assert steps[3] == pytest.approx((1 - WRITE_SHARE) * 0.75)  # Request (3/4 of the points) finished


def test_eta_extrapolates_and_waits_for_a_first_share() -> None:
    assert eta(30.0, 0.0) is None
    assert eta(30.0, 0.25) == pytest.approx(90.0)


def test_job_reports_every_stage_and_survives_a_failing_store() -> None:
    written = []
    clock = iter([0.0, 10.0, 20.0, 30.0])
    job = JobProgress(3, {"Request": 10}, written.append, clock=lambda: next(clock))
    job.stage("warm start", "Request")
    first = job.stage("cluster and name", "Request")
    assert first.eta_s is not None and first.facet_index == 1 and first.finished_at is None
    job.facet_done("Request")
    done = job.stage("done")
    assert [d.stage for d in written] == ["warm start", "cluster and name", "done"] and done.finished_at == 30.0

    def broken(doc: object) -> None:
        raise RuntimeError("qdrant down")

    JobProgress(4, {"Request": 1}, broken, clock=lambda: 0.0).stage("warm start", "Request")  # logged, not raised


def test_each_stage_is_timed_until_the_next_one_starts() -> None:
    clock = iter([0.0, 1.0, 4.0, 4.5, 6.0, 6.25])
    job = JobProgress(5, {"Request": 10}, None, clock=lambda: next(clock))
    job.stage("warm start", "Request")
    job.stage("cluster and name", "Request")
    job.stage("finalise", "Request")
    job.facet_done("Request")
    job.stage("write")
    job.stage("done")
    assert [(t.facet, t.stage, t.seconds) for t in job.stage_times] == [
        ("Request", "warm start", 3.0), ("Request", "cluster and name", 0.5), ("Request", "finalise", 1.5),
        ("*", "write", 0.25)]


def test_a_pass_that_finds_more_points_than_the_job_started_with_raises_the_total(caplog) -> None:
    written = []
    job = JobProgress(6, {"Request": 32}, written.append, clock=lambda: 1.0)
    with caplog.at_level("INFO", logger="clio_stream.living.progress"):
        job.page("Request", 96, 1)  # workers stored 64 more while the pass ran
    assert "assigned 96 of 96 points" in caplog.text
    assert written[-1].points == 96 and written[-1].fraction <= 1.0
