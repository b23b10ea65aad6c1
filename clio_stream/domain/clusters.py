"""Clusters, facet hierarchies and the result of a Clio run: what the site and the API read."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clio_stream.domain.conversation import Conversation, ConversationFacets
from clio_stream.llm.base import AskStats


class NumericStats(BaseModel):
    """Summary of a numeric facet over the members of one cluster."""

    facet: str
    count: int
    mean: float | None
    # histogram[i] counts members whose value is ``min_value + i``.
    min_value: int
    histogram: list[int]


class Trend(BaseModel):
    """How a cluster moves over time (clio_stream.stages.trends): counts per time window and growth since the last version.

    ``counts[i]`` counts members whose conversation time falls in ``[start + i*window_s, start + (i+1)*window_s)``;
    ``growth`` is members new since the previous version over members that were already there (None in a
    first version); ``emerging`` marks the fastest growers.
    """

    window_s: float
    start: float | None = None
    counts: list[int] = Field(default_factory=list)
    new_members: int = 0
    growth: float | None = None
    emerging: bool = False


class ClusterNode(BaseModel):
    """One node of a facet's hierarchy. Leaves are the base k-means clusters.

    ``conversation_ids`` lists every conversation under the node (leaves and
    parents alike), so sizes and statistics are always consistent with members;
    except when the re-clustering job ran on a sample of a larger window
    (``living.population``): then they list the sampled members, and ``count``,
    ``distinct_users``, ``numeric`` and ``trend`` are over the whole window.
    """

    id: str
    facet: str
    name: str
    summary: str
    level: int  # 0 = base cluster; parents count upwards
    parent_id: str | None = None
    children: list[str] = Field(default_factory=list)
    conversation_ids: list[str] = Field(default_factory=list)
    count: int | None = None  # members in the clustering window (None: ``conversation_ids`` are all of them)
    distinct_users: int = 0
    visible_users: int | None = None  # distinct users under visible children only (counted over the window)
    numeric: dict[str, NumericStats] = Field(default_factory=dict)
    hidden: bool = False  # below privacy minimums or withheld by the auditor
    hidden_reason: str | None = None
    trend: Trend | None = None
    audit_score: int | None = None  # the privacy auditor's 1-5 rating of this name and summary (not public)
    # Name check (stages.name_check): keywords shown beside the name, the rank at which the name
    # retrieves its own cluster among its siblings (1 = first), how close the name is to the members' centre
    # as a fraction of how close the members are to it, and whether it failed; a failed LLM name is
    # replaced by the keywords when there are any and kept in ``llm_name`` (not public: it was not audited).
    # A summary that fails the same check on its own is not shown; the LLM's is kept in ``llm_summary``.
    keywords: str | None = None
    name_rank: int | None = None
    name_closeness: float | None = None
    weak_name: bool = False
    llm_name: str | None = None
    llm_summary: str | None = None

    @property
    def given_name(self) -> str:
        """The name the LLM gave this node, before a failed name check showed its keywords instead: what a next
        version that keeps the node carries over, to be checked again against the members it has then."""
        return self.llm_name or self.name

    @property
    def given_summary(self) -> str:
        """The LLM's summary of this node, shown or not (see ``given_name``)."""
        return self.llm_summary if self.llm_summary is not None else self.summary

    @property
    def size(self) -> int:
        return len(self.conversation_ids) if self.count is None else self.count

    def public_fields(self) -> dict:
        """What may be shown about a visible node anywhere (site, API): no member ids, no hidden flags."""
        return {
            "id": self.id,
            "name": self.name,
            "summary": self.summary,
            "level": self.level,
            "size": self.size,
            "distinct_users": self.distinct_users,
            "numeric": {k: s.model_dump(exclude={"facet"}) for k, s in self.numeric.items()},
            "trend": None if self.trend is None else self.trend.model_dump(),
            "keywords": self.keywords,
            "weak_name": self.weak_name,
        }


class FacetHierarchy(BaseModel):
    """The tree of one facet: every node by id, and the ids of the roots."""

    facet: str
    nodes: dict[str, ClusterNode]
    root_ids: list[str]

    def leaves(self) -> list[ClusterNode]:
        return [n for n in self.nodes.values() if n.level == 0]

    def depth(self) -> int:
        """Number of levels, counting the base clusters as one."""
        return 1 + max((n.level for n in self.nodes.values()), default=-1)


class StoreLink(BaseModel):
    """How one facet's leaves stand for the store's online clusters: the API joins live Qdrant points through it."""

    version: int | None = None  # the clustering version the cluster ids belong to; None: the store's current one
    clusters: dict[str, int] = Field(default_factory=dict)  # level-0 node id -> online cluster id


class ClusterMap(BaseModel):
    """A 2-D layout of one facet's clusters, made at publish time (``views.layout``): node id -> (x, y) in [0, 1]."""

    method: str  # "tsne" or "pca"
    positions: dict[str, tuple[float, float]] = Field(default_factory=dict)
    # A sample of conversations placed among their clusters (conversation id, x, y): conversation-level, for analysts.
    points: list[tuple[str, float, float]] = Field(default_factory=list)


class RunStats(BaseModel):
    """Counts and timings of the run that produced a result (batch or re-clustering); shown, never joined on."""

    model_config = ConfigDict(extra="ignore")  # keys of older versions load and are dropped

    load: dict[str, int] = Field(default_factory=dict)  # data.LoadStats counts (batch)
    llm: AskStats = Field(default_factory=AskStats)  # what happened to the run's LLM prompts
    seconds: dict[str, float] = Field(default_factory=dict)  # stage -> wall time (batch)
    checkpoint_hits: list[str] = Field(default_factory=list)  # stages read from checkpoints (batch)
    unparseable_facet_values: dict[str, int] = Field(default_factory=dict)  # facet -> count (batch)
    audit: dict[str, dict[str, int | None]] = Field(default_factory=dict)  # facet -> node id -> audit score (batch)
    points: dict[str, int] = Field(default_factory=dict)  # facet -> points clustered (re-clustering)
    living: dict[str, dict[str, Any]] = Field(default_factory=dict)  # facet -> re-clustering report
    newest: float | None = None  # newest conversation time of the window (re-clustering): newer ones are new next


_LEGACY_LEAF_ID = re.compile(r"-l0-(\d+)$")


def _legacy_store_links(data: dict[str, Any]) -> dict[str, StoreLink]:
    """Store links of a result written before ``store_links`` existed (the one place that reads the old form).

    Old results said it in ``stats``: ``store_clusters`` ({node id: int}), ``cluster_versions`` ({facet: int}),
    ``version`` (an int: every facet's clustering version); without an explicit cluster a leaf id ending in
    ``-l0-<int>`` was taken as that cluster, under the store's current version.
    """
    stats = data.get("stats") if isinstance(data.get("stats"), dict) else {}
    explicit = {str(k): int(v) for k, v in dict(stats.get("store_clusters") or {}).items()}
    versions = {str(k): (None if v is None else int(v)) for k, v in dict(stats.get("cluster_versions") or {}).items()}
    common = stats.get("version")
    links: dict[str, StoreLink] = {}
    for name, h in dict(data.get("hierarchies") or {}).items():
        nodes = h.nodes if isinstance(h, FacetHierarchy) else dict(h.get("nodes") or {})
        clusters: dict[str, int] = {}
        for nid, node in nodes.items():
            if (node.level if isinstance(node, ClusterNode) else node.get("level")) != 0:
                continue
            if nid in explicit:
                clusters[nid] = explicit[nid]
            elif (m := _LEGACY_LEAF_ID.search(nid)) is not None:
                clusters[nid] = int(m.group(1))
        version = versions.get(name, common if isinstance(common, int) and not isinstance(common, bool) else None)
        if clusters or version is not None:
            links[name] = StoreLink(version=version, clusters=clusters)
    return links


class ClioResult(BaseModel):
    """Everything ``run_clio`` and the re-clustering job produce; the site writer's and the API's input."""

    facets: list[dict]  # serialised Facet definitions (name, question, numeric, ...)
    conversations: list[Conversation]
    facet_values: list[ConversationFacets]
    hierarchies: dict[str, FacetHierarchy]  # facet name -> tree (facets with summary criteria only)
    settings: dict = Field(default_factory=dict)  # the settings that produced it (JSON-safe subset)
    stats: RunStats = Field(default_factory=RunStats)
    store_links: dict[str, StoreLink] = Field(default_factory=dict)  # facet -> how its leaves join the store
    maps: dict[str, ClusterMap] = Field(default_factory=dict)  # facet -> 2-D layout of its clusters

    @model_validator(mode="before")
    @classmethod
    def _read_legacy_links(cls, data: Any) -> Any:
        if isinstance(data, dict) and "store_links" not in data:
            data = {**data, "store_links": _legacy_store_links(data)}
        return data
