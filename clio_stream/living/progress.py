"""Progress of a re-clustering job, per facet and stage, with an ETA: in the log and in ``GET /v1/status``.

A re-clustering of a large store takes minutes to hours, in LLM naming and in the assignment pass over the
window. The job reports each stage (warm start, assign, cluster and name, finalise; then the write) of each
facet, and each page of the pass; the fraction done weighs every facet by its stored
points and each stage by a typical share of a facet's time, and the ETA extrapolates the elapsed time. The same
``ReclusterProgress`` document goes to the store so the API's status can show it; a failure to write it is
logged and never fails the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from clio_stream.storage.documents import RECLUSTER_PROGRESS, ReclusterProgress
from clio_stream.storage.state import StateDocuments

log = logging.getLogger(__name__)

#: Typical share of one facet's time per stage (measured shape: naming dominates with an LLM on a CPU).
STAGE_WEIGHTS: dict[str, float] = {"warm start": 0.05, "assign": 0.2, "cluster and name": 0.6, "finalise": 0.15}
PAGE_LOG_SHARE = 0.1  # the assignment pass logs each tenth of a facet's window
WRITE_SHARE = 0.05  # of the whole job: labels, centroids, the published folder


#: The facet label of stages that span every facet (the write at the end).
ALL_FACETS = "*"


@dataclass(frozen=True)
class StageTime:
    """How long one stage of one facet took in a finished run (``clio_recluster_stage_seconds``)."""

    facet: str
    stage: str
    seconds: float


def fraction_done(points: Mapping[str, int], done: list[str], facet: str | None, stage: str) -> float:
    """Fraction of the job finished when ``facet`` enters ``stage`` after the facets in ``done``."""
    total = sum(points.values()) or 1
    finished = sum(points[f] for f in done) / total
    if facet is None:  # the write at the end
        return 1.0 - WRITE_SHARE if stage == "write" else (1.0 if stage == "done" else 0.0)
    order = list(STAGE_WEIGHTS)
    before = sum(STAGE_WEIGHTS[s] for s in order[: order.index(stage)])
    return (1.0 - WRITE_SHARE) * (finished + points[facet] / total * before)


def eta(elapsed_s: float, fraction: float) -> float | None:
    """Remaining seconds by extrapolation; None until a first share of the work gives a rate."""
    return None if fraction <= 0.01 else elapsed_s * (1.0 - fraction) / fraction


class JobProgress:
    """Report a job's stages; ``write`` stores each ``ReclusterProgress`` (None: log only)."""

    def __init__(self, version: int, points: Mapping[str, int], write: Callable[[ReclusterProgress], None] | None,
                 *, owner: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.version, self.points, self._write, self.owner, self._clock = version, dict(points), write, owner, clock
        self.started_at = clock()
        self.done: list[str] = []
        self._logged_share = 0.0
        self._open: tuple[str, str, float] | None = None  # (facet, stage, started) of the stage under way
        self.stage_times: list[StageTime] = []

    def _close_open_stage(self, now: float) -> None:
        if self._open is not None:
            facet, stage, since = self._open
            self.stage_times.append(StageTime(facet, stage, max(0.0, now - since)))
            self._open = None

    def stage(self, stage: str, facet: str | None = None) -> ReclusterProgress:
        if facet is not None and self.done and self.done[-1] == facet:
            raise ValueError(f"facet {facet} already finished")
        now = self._clock()
        self._close_open_stage(now)
        if stage != "done":
            self._open = (facet if facet is not None else ALL_FACETS, stage, now)
        frac = fraction_done(self.points, self.done, facet, stage)
        doc = ReclusterProgress(
            version=self.version, owner=self.owner, stage=stage, facet=facet,
            facet_index=(len(self.done) + 1) if facet is not None else len(self.done), facets=len(self.points),
            points_done=sum(self.points[f] for f in self.done), points=sum(self.points.values()), fraction=frac,
            started_at=self.started_at, updated_at=now, eta_s=eta(now - self.started_at, frac),
            finished_at=now if stage == "done" else None)
        where = f"facet {facet} ({doc.facet_index}/{doc.facets}, {self.points[facet]} points)" if facet else "all facets"
        left = "" if doc.eta_s is None or stage == "done" else f", about {_duration(doc.eta_s)} left"
        log.info("re-clustering v%d: %s: %s; %.0f %% done%s", self.version, where, stage, 100 * frac, left)
        self._store(doc)
        return doc

    def page(self, facet: str, points: int, pages: int) -> None:
        """One more page of ``facet``'s assignment pass (``points`` assigned so far): stored, logged by the tenth.

        Workers keep storing while the pass runs, so it may assign more than the facet held when the job started:
        the total grows with it rather than reading "96 of 32"."""
        self.points[facet] = max(self.points.get(facet, 0), points)
        total = max(1, self.points[facet])
        share = min(1.0, points / total)
        now = self._clock()
        frac = fraction_done(self.points, self.done, facet, "assign") + \
            (1.0 - WRITE_SHARE) * total / (sum(self.points.values()) or 1) * STAGE_WEIGHTS["assign"] * share
        doc = ReclusterProgress(
            version=self.version, owner=self.owner, stage="assign", facet=facet, facet_index=len(self.done) + 1,
            facets=len(self.points), points_done=sum(self.points[f] for f in self.done), points=sum(self.points.values()),
            fraction=frac, started_at=self.started_at, updated_at=now, eta_s=eta(now - self.started_at, frac))
        if int(share / PAGE_LOG_SHARE) > int(self._logged_share / PAGE_LOG_SHARE):
            left = "" if doc.eta_s is None else f", about {_duration(doc.eta_s)} left"
            log.info("re-clustering v%d: facet %s: assigned %d of %d points (%d pages)%s", self.version, facet,
                     points, total, pages, left)
        self._logged_share = share
        self._store(doc)

    def facet_done(self, facet: str) -> None:
        self.done.append(facet)
        self._logged_share = 0.0

    def _store(self, doc: ReclusterProgress) -> None:
        if self._write is None:
            return
        try:
            self._write(doc)
        except Exception:  # noqa: BLE001 - progress is informative; the job must not fail for it
            log.warning("could not store re-clustering progress", exc_info=True)


def store_writer(states: StateDocuments) -> Callable[[ReclusterProgress], None]:
    """Writes progress documents into the state collection."""
    return lambda doc: states.write(RECLUSTER_PROGRESS, doc)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
