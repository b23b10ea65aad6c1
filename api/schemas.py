"""Request and response models of the API (they are also its OpenAPI documentation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- errors


class ErrorOut(BaseModel):
    """Every error answer: a human-readable ``detail``; ``code`` for machine-readable validation failures."""

    detail: str
    code: str | None = None
    request_id: str | None = None


class BatchItemError(BaseModel):
    index: int
    id: str | None = None
    code: str
    reason: str


class BatchErrorOut(BaseModel):
    detail: str
    errors: list[BatchItemError]


# --------------------------------------------------------------------------- ingest


class TurnIn(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: str


class ConversationIn(BaseModel):
    """The Kafka message schema, as JSON. Only used to document the body: validation follows clio_stream.streaming.wire_format."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, max_length=256)
    user_id: str | None = Field(None, max_length=256)
    conversation: list[TurnIn] = Field(min_length=1)
    timestamp: float | str | None = Field(None, description="Epoch seconds or ISO 8601 (naive = UTC).")
    metadata: dict[str, Any] | None = None


class BatchIn(BaseModel):
    conversations: list[ConversationIn] = Field(min_length=1)


class AcceptedOut(BaseModel):
    id: str
    status: Literal["accepted"] = "accepted"


class BatchAcceptedOut(BaseModel):
    ids: list[str]
    accepted: int
    status: Literal["accepted"] = "accepted"


class ReclusterIn(BaseModel):
    reason: str | None = Field(None, max_length=500)


class ReclusterOut(BaseModel):
    requested_at: float
    requested_by: str
    status: Literal["requested"] = "requested"


class DeletionOut(BaseModel):
    """A user deletion request (clio_stream.privacy.requests.DeletionRequest without its token)."""

    request_id: str
    status: Literal["pending", "done"]
    requested_at: float
    requested_by: str
    facet_points: int = Field(description="Facet points deleted so far.")
    conversations: int = Field(description="Conversation points deleted so far.")
    scrubbed_at: float | None = Field(None, description="When the published versions were last scrubbed.")
    versions_scrubbed: list[str] = Field(default_factory=list, description="Published versions rewritten.")
    done_at: float | None = None


# --------------------------------------------------------------------------- clusters


class NumericOut(BaseModel):
    count: int
    mean: float | None
    min_value: int
    histogram: list[int]


class TrendOut(BaseModel):
    """Counts per time window (``window_s`` wide from ``start``) and growth since the previous version."""

    window_s: float
    start: float | None = None
    counts: list[int] = Field(default_factory=list)
    new_members: int = 0
    growth: float | None = Field(None, description="New members / members already there; None in a first version.")
    emerging: bool = False


class PathItem(BaseModel):
    id: str
    name: str


class ClusterSummary(BaseModel):
    """A visible cluster as it appears in lists and trees."""

    id: str
    name: str
    summary: str = Field(description="The LLM's description; empty when it did not point at this cluster's "
                         "members (the name check).")
    level: int
    size: int
    distinct_users: int
    numeric: dict[str, NumericOut] = Field(default_factory=dict)
    trend: TrendOut | None = None
    keywords: str | None = Field(None, description="Words frequent among this cluster's members and rare in "
                                 "the other clusters of its level, each written by at least the minimum of "
                                 "distinct users.")
    weak_name: bool = Field(False, description="The LLM's name did not point at this cluster's members (it "
                            "did not rank this cluster first among its level's, or sat far from the members' "
                            "centre); the name shown is then the keywords.")
    n_children: int = 0
    other_count: int = Field(0, description="Conversations in withheld children, as one aggregate.")


class TreeNode(ClusterSummary):
    children: list[TreeNode] = Field(default_factory=list)


class TreeOut(BaseModel):
    facet: str
    version: str
    total: int
    depth: int
    other_count: int = Field(description="Conversations in withheld top-level clusters, as one aggregate.")
    roots: list[TreeNode]


class TrendsOut(BaseModel):
    facet: str
    version: str
    window_s: float | None = Field(None, description="Width of one trend window in seconds.")
    start: float | None = Field(None, description="Start of the first window (Unix time).")
    emerging: list[ClusterSummary] = Field(description="Clusters flagged emerging, fastest growth first.")
    growing: list[ClusterSummary] = Field(description="Visible clusters with the largest growth since the "
                                          "previous version (up to `limit`), emerging or not.")


class ClusterOut(ClusterSummary):
    facet: str
    version: str
    parent_path: list[PathItem] = Field(description="Ancestors, root first.")
    children: list[ClusterSummary]
    successor_of: str | None = Field(
        None, description="Set when the id asked for is an older cluster id; this is its successor.")


class FacetOut(BaseModel):
    name: str
    question: str
    numeric: list[int] | None = None
    has_hierarchy: bool
    total: int | None = None
    depth: int | None = None
    clusters: int | None = Field(None, description="Visible clusters in the tree.")
    other_count: int | None = None


class FacetsOut(BaseModel):
    version: str | None
    published_at: float | None
    facets: list[FacetOut]


class MemberOut(BaseModel):
    conversation_id: str
    value: str | None = None
    timestamp: float | None = None
    similarity: float | None = None
    outlier: bool | None = None


class MembersOut(BaseModel):
    facet: str
    cluster_id: str
    version: str
    items: list[MemberOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next page; null at the end. A page may be short.")


# --------------------------------------------------------------------------- conversations


class FacetAnswer(BaseModel):
    value: str | None = None
    numeric: int | None = None
    withheld: bool = False
    cluster_id: str | None = None
    cluster_name: str | None = None
    path: list[PathItem] = Field(default_factory=list, description="Root first, ending with the cluster.")
    cluster_version: int | None = None


class MessageOut(BaseModel):
    role: str
    content: str


class ConversationOut(BaseModel):
    id: str
    status: Literal["processed", "pending"]
    timestamp: float | None = None
    version: str | None = Field(None, description="The published clustering version the clusters come from.")
    withheld: bool = Field(False, description="In a withheld cluster of some facet: then every facet, the time "
                           "and the messages are withheld, as on the site.")
    facets: dict[str, FacetAnswer] = Field(default_factory=dict)
    messages: list[MessageOut] | None = None


# --------------------------------------------------------------------------- status


class WorkerOut(BaseModel):
    id: str
    health: str | None = None
    health_reason: str | None = None
    processed: int | None = None
    consumer_lag: int | None = None
    updated_at: float | None = None


class ReclusterProgressOut(BaseModel):
    """A clustering job under way (``living.progress``): its stage, the facet it is on, how far, how long left."""

    version: int
    stage: str
    facet: str | None = None
    facet_index: int
    facets: int
    fraction: float = Field(description="Share of the job done, by stored points and stage weights.")
    started_at: float
    updated_at: float
    eta_s: float | None = Field(None, description="Seconds left, extrapolated from the elapsed time.")


class ChildOut(BaseModel):
    """A process of a running ``clio-stream up``, as its supervisor last saw it."""

    name: str
    alive: bool
    restarts: int
    last_exit_code: int | None = None
    last_exit_at: float | None = None


class StatusOut(BaseModel):
    version: str | None = None
    published_at: float | None = None
    cluster_versions: dict[str, int | None] = Field(default_factory=dict)
    ingest_rate_per_s: float | None = Field(None, description="Conversations/s averaged since each live worker started.")
    consumer_lag: int | None = Field(None, description="Sum of the live workers' backlogs on the partitions they own "
                                     "(high-water mark minus committed offset); `waiting` also counts partitions "
                                     "no live worker owns.")
    waiting: int | None = Field(None, description="Records on the conversation topic after the consumer group's "
                                "committed offsets, all partitions (measured every few seconds; null: unknown).")
    committed: int | None = Field(None, description="Records the consumer group has committed, all partitions.")
    processed: int | None = Field(None, description="Conversations the live workers processed since they started.")
    first_clustering_points: int = Field(0, description="Stored facet values needed before anything is clustered.")
    dlq_count: int | None = None
    workers: list[WorkerOut] = Field(default_factory=list)
    last_recluster_at: float | None = None
    next_recluster_at: float | None = None
    recluster_requested_at: float | None = None
    recluster_progress: ReclusterProgressOut | None = Field(
        None, description="The re-clustering job running now, if any (absent when none has reported lately).")
    llm_health: str | None = None
    up_children: list[ChildOut] | None = Field(
        None, description="Under `clio-stream up`: each supervised process, alive or not, and its restarts.")
    store_health: Literal["ok", "unavailable"] | None = None
    api_accepted: int = 0


class HealthOut(BaseModel):
    status: str
