"""When to re-cluster: a schedule, new data, drift, or an admin's request.

``due`` is a pure function of a small state snapshot, so every trigger is unit
tested without clocks or servers; ``ReclusterScheduler`` is the thread that
feeds it and runs the job. One run at a time across processes is the store
lock's job (see ``living.job.recluster_once``), not this thread's.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import SchedulerState

if TYPE_CHECKING:  # pragma: no cover
    from clio_stream.living.job import ReclusterReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Triggers:
    interval_s: float = 900.0  # wall-clock schedule
    new_fraction: float = 0.10  # new points since the last run, relative to the points then
    min_points: int = 30  # nothing is clustered before this many points exist
    outlier_rate: float = 0.25  # workers' recent outlier rate that counts as drift

    @classmethod
    def from_settings(cls, settings: ClioSettings, **overrides: Any) -> Triggers:
        """The settings' ``recluster_*`` values; ``overrides`` that are None are ignored (unset CLI flags)."""
        values = {"interval_s": settings.recluster_interval_s, "new_fraction": settings.recluster_new_fraction,
                  "min_points": settings.recluster_min_points, "outlier_rate": settings.recluster_outlier_rate}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class Snapshot:
    now: float
    last_run_at: float | None
    points_at_last_run: int
    points_now: int
    outlier_rate: float | None = None
    drift_detected: bool = False
    requested_at: float | None = None


def due(s: Snapshot, t: Triggers) -> str | None:
    """The reason to re-cluster now, or None."""
    if s.points_now < t.min_points:
        return None
    if s.requested_at is not None and (s.last_run_at is None or s.requested_at > s.last_run_at):
        return "requested"
    if s.last_run_at is None:
        return "first clustering"
    new = s.points_now - s.points_at_last_run
    if new <= 0:
        return None
    if new >= t.new_fraction * max(1, s.points_at_last_run):
        return f"new data ({new} points, {new / max(1, s.points_at_last_run):.0%})"
    if s.drift_detected:
        return "drift detected"
    if s.outlier_rate is not None and s.outlier_rate >= t.outlier_rate:
        return f"outlier rate {s.outlier_rate:.0%}"
    if s.now - s.last_run_at >= t.interval_s:
        return "schedule"
    return None


class ReclusterScheduler(threading.Thread):
    """Polls ``snapshot()`` every ``poll_s`` and calls ``run(reason)`` when ``due`` says so.

    ``recover()``, if given, runs first on every poll (``ReclusterService.recover``).
    """

    def __init__(self, snapshot: Callable[[], Snapshot], run: Callable[[str], ReclusterReport | None],
                 triggers: Triggers,
                 *, poll_s: float = 5.0, on_state: Callable[[SchedulerState], None] | None = None,
                 chores: Sequence[Callable[[], Any]] = (), recover: Callable[[], Any] | None = None) -> None:
        super().__init__(name="recluster-scheduler", daemon=True)
        self.snapshot_fn = snapshot
        self.run_fn = run
        self.triggers = triggers
        self.poll_s = poll_s
        self.on_state = on_state
        self.chores = list(chores)  # run every poll before the trigger check (user deletions)
        self.recover_fn = recover  # finishes a version a killed job committed, before any trigger is looked at
        self.stop_event = threading.Event()
        self.last_reason: str | None = None
        self.last_error: str | None = None
        self.runs = 0
        self.failures = 0
        self.last_run_seconds: float | None = None
        self.last_report: ReclusterReport | None = None  # the last run that published (stages, prompts, points)
        self.last_poll_at: float | None = None  # monotonic; liveness of this loop

    def run(self) -> None:  # noqa: D102 - threading.Thread API
        while not self.stop_event.is_set():
            self.last_poll_at = time.monotonic()
            self._run_chores()
            try:
                if self.recover_fn is not None:
                    self.recover_fn()
                snap = self.snapshot_fn()
                reason = due(snap, self.triggers)
                if reason:
                    log.info("re-clustering: %s", reason)
                    self.last_reason = reason
                    t0 = time.monotonic()
                    report = self.run_fn(reason)
                    self.last_run_seconds = time.monotonic() - t0
                    self.runs += 1
                    self.last_error = None
                    if report is not None:  # None: skipped (the lock is held elsewhere, nothing stored)
                        self.last_report = report
                if self.on_state:
                    snap = self.snapshot_fn() if reason else snap
                    last = snap.last_run_at
                    self.on_state(SchedulerState(
                        last_reason=self.last_reason, runs=self.runs, last_error=self.last_error, last_run_at=last,
                        next_run_at=None if last is None else last + self.triggers.interval_s, updated_at=time.time()))
            except Exception as exc:  # noqa: BLE001 - the scheduler must outlive a failed run
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("re-clustering failed; will retry at the next trigger")
            self.stop_event.wait(self.poll_s)

    def _run_chores(self) -> None:
        for chore in self.chores:
            try:
                chore()
            except Exception:  # noqa: BLE001 - a failed chore is retried at the next poll
                log.exception("scheduler chore %r failed; will retry at the next poll", chore)

    def stop(self) -> None:
        self.stop_event.set()
