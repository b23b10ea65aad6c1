"""Re-clustering as a service: the snapshot/run logic shared by every way of running it.

``clio-stream up`` (a thread in the stack), ``clio-stream scheduler`` (a
long-running process) and ``clio-stream recluster`` (one run, e.g. a
Kubernetes CronJob) all go through ``ReclusterService``:

* ``snapshot()`` reads what the scheduler's triggers need from the store
  (points of the first hierarchy facet now and at the last run, the last run's
  finish time, an admin's pending request, and from the workers' metrics
  documents their outlier rates and ADWIN drift detections);
* ``run(reason)`` runs ``recluster_once`` with the settings' LLM and a lazily
  built embedder, under the store's cluster-wide lock;
* ``scheduler(triggers)`` builds the ``ReclusterScheduler`` thread that ties
  the two together and writes its state where ``GET /v1/status`` reads it;
* ``process_deletions()`` carries out pending user deletions: every poll of the
  scheduler, and every run of the CronJob, since this process is the one that
  owns the publish directory (clio_stream.privacy.deletion).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clio_stream.online.drift import drift_since
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import LAST_RUN, RECLUSTER_REQUEST, SCHEDULER_STATE, WORKER_METRICS, SchedulerState
from clio_stream.storage.store import QdrantStore

if TYPE_CHECKING:  # pragma: no cover
    from clio_stream.living.job import ReclusterReport

log = logging.getLogger(__name__)


def effective_settings(settings: ClioSettings) -> ClioSettings:
    """The settings with the OpenAI-compatible back-end chosen whenever a server URL is configured.

    A re-clustering process never starts its own vLLM engine when a server is
    there to ask: ``CLIO_LLM_BASE_URL`` alone is enough.
    """
    if settings.llm_base_url and settings.llm_backend != "openai":
        return settings.with_overrides(llm_backend="openai")
    return settings


class ReclusterService:
    """Store, and lazily the LLM and embedder, for re-clustering, with the scheduler's snapshot.

    The models are built on the first run, not at construction: a CronJob tick that finds nothing due, or a
    store that cannot be reached, must not first start an LLM engine (a minute and gigabytes in-process).
    """

    def __init__(self, settings: ClioSettings, *, facets: Sequence[Any] | None = None,
                 store: QdrantStore | None = None, llm: Any = None, embedder: Any = None,
                 publish_dir: Path | None = None) -> None:
        from clio_stream.domain.facets import main_facets
        from clio_stream.storage.published import PublishedVersions

        self.settings = settings
        self.facets = list(facets) if facets else list(main_facets)
        tree = [f for f in self.facets if f.has_hierarchy]
        # The trigger counts points of the first facet with a hierarchy (every one of them is written per
        # conversation, so any of them measures new data).
        self.trigger_facet = (tree or [f for f in main_facets if f.has_hierarchy])[0].name
        self._owns_store = store is None
        if store is None:
            store = QdrantStore.from_settings(settings)
        self.store = store
        self._owns_llm = llm is None
        self._llm = llm
        self._embedder = embedder
        self.publish_dir = Path(publish_dir) if publish_dir is not None else PublishedVersions.from_settings(settings).root
        self._collections_seen = False

    @property
    def llm(self) -> Any:
        """Built on first use (see the class docstring)."""
        if self._llm is None:
            from clio_stream.llm import make_llm

            self._llm = make_llm(self.settings)
        return self._llm

    @property
    def embedder(self) -> Any:
        """Built on first use: loading a sentence-transformers model costs seconds and memory."""
        if self._embedder is None:
            from clio_stream.embedding import make_embedder

            self._embedder = make_embedder(self.settings)
        return self._embedder

    def collections_exist(self) -> bool:
        """Whether a worker has created the store's collections yet (before that there is nothing to do).

        Raises when Qdrant cannot be asked: an outage is an error, not an empty store.
        """
        if not self._collections_seen:
            self._collections_seen = self.store.collections_exist()
        return self._collections_seen

    def snapshot(self) -> Any:
        """What ``scheduler.due`` decides on, read from the store."""
        from clio_stream.living.scheduler import Snapshot

        if not self.collections_exist():
            return Snapshot(now=time.time(), last_run_at=None, points_at_last_run=0, points_now=0)
        last = self.store.states.read(LAST_RUN)
        request = self.store.states.read(RECLUSTER_REQUEST)
        workers = list(self.store.states.read_all(WORKER_METRICS, max_age_s=self.settings.api_worker_stale_s).values())
        facet = self.trigger_facet
        rates = [w.outlier_rate[facet] for w in workers if facet in w.outlier_rate]
        last_at = None if last is None else last.finished_at
        return Snapshot(now=time.time(), last_run_at=last_at,
                        points_at_last_run=0 if last is None else last.points.get(facet, 0),
                        points_now=self.store.points.count(facet=facet),
                        outlier_rate=max(rates) if rates else None,
                        drift_detected=drift_since([w.model_dump() for w in workers], facet, last_at),
                        requested_at=None if request is None else request.requested_at)

    def run(self, reason: str = "manual") -> ReclusterReport | None:
        """One ``recluster_once``; its report, or None when skipped (lock held elsewhere, nothing stored)."""
        from clio_stream.living.job import recluster_once

        if not self.collections_exist():
            log.info("re-clustering skipped: no collections yet (no worker has started)")
            return None
        report = recluster_once(self.store, self.llm, self.embedder, self.facets, self.settings,
                                publish_dir=self.publish_dir)
        if report:
            log.info("published clustering version %d (%s)", report.version, reason)
        return report

    def process_deletions(self) -> Any:
        """Carry out pending user deletions (this process owns the publish directory); see clio_stream.privacy.deletion."""
        from clio_stream.privacy.deletion import process_deletions

        return process_deletions(self.store, self.settings, self.publish_dir)

    def recover(self) -> Any:
        """Finish a version a killed job committed but did not apply (one read when there is none).

        Polled by the scheduler, so readers do not wait for the next due run to see a committed version.
        """
        from clio_stream.living.versions import finish_pending, job_owner

        if not self.collections_exist():
            return None
        return finish_pending(self.store, self.publish_dir, job_owner("recluster"), self.settings.recluster_lock_ttl_s)

    def write_state(self, state: SchedulerState) -> None:
        self.store.states.write(SCHEDULER_STATE, state)

    def scheduler(self, triggers: Any, *, poll_s: float = 5.0) -> Any:
        """A ``ReclusterScheduler`` (not started) over this service's snapshot and run."""
        from clio_stream.living.scheduler import ReclusterScheduler

        return ReclusterScheduler(self.snapshot, self.run, triggers, poll_s=poll_s, on_state=self.write_state,
                                  chores=[self.process_deletions], recover=self.recover)

    def close(self) -> None:
        """Close what this service built itself."""
        for owned, thing in ((self._owns_llm, self._llm), (self._owns_store, self.store)):
            if owned and thing is not None and hasattr(thing, "close"):
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    log.debug("closing %r raised", thing, exc_info=True)

    def __enter__(self) -> "ReclusterService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
