"""The state documents processes share through the store: one pydantic model and one key for each.

Workers, the re-clustering scheduler, clustering jobs and the API never share memory; they leave small
JSON documents in the state collection for each other. Each document's shape and key is defined here
once: writers write the model, readers parse with it (:meth:`clio_stream.storage.state.StateDocuments.read`
logs and skips a document that does not fit, so one bad writer cannot take a reader down).

Unknown fields are ignored, so a reader survives a newer writer that adds one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from clio_stream.domain.alerts import Alert

Doc = TypeVar("Doc", bound=BaseModel)


class StateDocument(BaseModel):
    """Base of every shared document: unknown fields ignored, known ones validated."""

    model_config = ConfigDict(extra="ignore")


@dataclass(frozen=True)
class DocKey(Generic[Doc]):
    """Where one document lives and what it holds."""

    key: str
    model: type[Doc]


@dataclass(frozen=True)
class DocPrefix(Generic[Doc]):
    """A family of documents of one model, one per ``prefix + name`` (e.g. one per worker)."""

    prefix: str
    model: type[Doc]

    def of(self, name: str) -> DocKey[Doc]:
        return DocKey(f"{self.prefix}{name}", self.model)


# --------------------------------------------------------------------------- documents


class WorkerMetricsDoc(StateDocument):
    """A worker's counters (``consumers.metrics.WorkerMetrics``), rewritten after each batch; read by the status
    and by the scheduler's drift and outlier triggers."""

    worker_id: str
    processed: int = 0
    dead_lettered: int = 0
    reused_by_hash: int = 0
    duplicates: int = 0
    llm_calls: int = 0
    llm_prompts: int = 0
    unparseable: int = 0
    batches: int = 0
    failed_batches: int = 0
    commit_failures: int = 0
    denied_dropped: int = 0
    deltas_published: int = 0
    deltas_applied: int = 0
    deltas_rejected: int = 0
    busy_seconds: float = 0.0
    llm_seconds: float = 0.0
    embed_seconds: float = 0.0
    store_write_seconds: float = 0.0
    last_batch_seconds: float | None = None
    last_batch_records: int = 0
    dead_lettered_by_code: dict[str, int] = Field(default_factory=dict)
    outlier_rate: dict[str, float] = Field(default_factory=dict)  # per facet, recent
    cluster_versions: dict[str, int] = Field(default_factory=dict)
    drift: dict[str, dict[str, Any]] = Field(default_factory=dict)  # clio_stream.online.drift.DriftMonitor.snapshot()
    consumer_lag: int | None = None
    health: str = "starting"
    health_reason: str | None = None
    started_at: float | None = None
    conversations_per_s: float | None = None
    updated_at: float = Field(default_factory=time.time)

    def drift_detected_at(self, facet: str) -> float | None:
        """When this worker's drift detector for ``facet`` last fired (None if never)."""
        at = (self.drift.get(facet) or {}).get("detected_at")
        return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None


class LastRun(StateDocument):
    """The last applied clustering run (written by the clustering write path, read by the scheduler and status)."""

    version: int
    finished_at: float
    seconds: float = 0.0
    points: dict[str, int] = Field(default_factory=dict)  # per facet, at the run: the new-data trigger's base
    clusters: dict[str, int] = Field(default_factory=dict)
    llm_prompts: int = 0
    leaves_reused: int = 0
    leaves_renamed: int = 0
    id_survival: float | None = None
    lineage: int = 0


class ReclusterRequest(StateDocument):
    """An admin's (or a deletion's) request for a re-clustering soon; the scheduler runs when it is newer than the
    last run."""

    requested_at: float
    requested_by: str | None = None
    reason: str | None = None


class SchedulerState(StateDocument):
    """What the re-clustering scheduler last did and plans (read by ``GET /v1/status``)."""

    last_reason: str | None = None
    runs: int = 0
    last_error: str | None = None
    last_run_at: float | None = None
    next_run_at: float | None = None
    updated_at: float = Field(default_factory=time.time)


class IdCounters(StateDocument):
    """Next free node number per hierarchy level of one facet (``IdAllocator``): an id never names two clusters."""

    next: dict[int, int] = Field(default_factory=dict)


class VersionCounter(StateDocument):
    """The last clustering version number handed out (compare-and-set: never handed out twice)."""

    last: int


class CurrentVersion(StateDocument):
    """The pointer to a facet's current clustering version (workers and the API switch on it)."""

    facet: str
    version: int
    published_at: float = Field(default_factory=time.time)


class CentroidStateHeader(StateDocument):
    """The header of a stored online k-means state (``OnlineKMeans.to_state``); the arrays ride along unparsed."""

    format: str
    facet: str | None = None
    version: int = 0
    k: int
    dim: int


class LockHolder(StateDocument):
    """The document of a held lease (its point in the state collection)."""

    key: str
    owner: str
    token: str
    acquired_at: float
    expires_at: float
    renewal: str | None = None


# --------------------------------------------------------------------------- keys

class ReclusterProgress(StateDocument):
    """Where a running clustering job is (``living.progress.JobProgress``), rewritten at each stage; the status
    shows it while ``finished_at`` is None and ``updated_at`` is recent."""

    version: int
    owner: str | None = None
    stage: str
    facet: str | None = None
    facet_index: int = 0  # 1-based while a facet is being processed
    facets: int = 0
    points_done: int = 0  # points of the facets already finished
    points: int = 0
    fraction: float = 0.0  # of the whole job, by points and stage weights
    started_at: float
    updated_at: float
    eta_s: float | None = None
    finished_at: float | None = None


class ChildStatus(StateDocument):
    """One process ``clio-stream up`` supervises (``devstack.supervisor``)."""

    name: str
    alive: bool
    restarts: int = 0
    started_at: float | None = None
    last_exit_code: int | None = None
    last_exit_at: float | None = None


class UpChildren(StateDocument):
    """The children of a running ``clio-stream up``, rewritten every few seconds; shown by ``GET /v1/status``."""

    children: list[ChildStatus] = Field(default_factory=list)
    updated_at: float


class AlertLog(StateDocument):
    """Alerts fired so far (``views.alerts``), rewritten at each publish under that version's fence: the ids that
    never fire again, the clusters ever published (what "new" is measured against), the recent alerts."""

    fired: list[str] = Field(default_factory=list)  # alert ids (rule, facet, cluster), every one ever fired
    known: dict[str, list[str]] = Field(default_factory=dict)  # facet -> cluster ids published before
    alerts: list[Alert] = Field(default_factory=list)  # the most recent, oldest first
    version: str | None = None  # the last published version evaluated
    updated_at: float = Field(default_factory=time.time)


WORKER_METRICS = DocPrefix("worker:", WorkerMetricsDoc)
LAST_RUN = DocKey("recluster:last", LastRun)
RECLUSTER_REQUEST = DocKey("recluster_request", ReclusterRequest)
SCHEDULER_STATE = DocKey("scheduler", SchedulerState)
RECLUSTER_PROGRESS = DocKey("recluster:progress", ReclusterProgress)
UP_CHILDREN = DocKey("up:children", UpChildren)
ALERT_LOG = DocKey("alerts:log", AlertLog)
VERSION_COUNTER = DocKey("clustering:last_reserved", VersionCounter)
COMMIT_KEY = "clustering:committed"  # the clustering write path's commit record (clio_stream.living.versions.Commit)
CLUSTERING_LOCK = "clustering"  # one clustering job at a time: re-clustering, bootstrap, deletion's rewrites


def id_counter_key(facet: str) -> DocKey[IdCounters]:
    """The node-id counters of ``facet``'s hierarchy."""
    return DocKey(f"idcounter:{facet}", IdCounters)


def current_version_key(facet: str) -> DocKey[CurrentVersion]:
    """The pointer to ``facet``'s current clustering version."""
    return DocKey(f"current_version/{facet}", CurrentVersion)


def centroid_state_key(facet: str, version: int) -> DocKey[CentroidStateHeader]:
    """The online k-means state of ``facet`` at clustering ``version``."""
    return DocKey(f"centroids/{facet}/v{int(version)}", CentroidStateHeader)
