"""Clusters, facet hierarchies and the result of a Clio run: what the site and the API read."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from clio_stream.domain.conversation import Conversation, ConversationFacets


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
    parents alike), so sizes and statistics are always consistent with members.
    """

    id: str
    facet: str
    name: str
    summary: str
    level: int  # 0 = base cluster; parents count upwards
    parent_id: str | None = None
    children: list[str] = Field(default_factory=list)
    conversation_ids: list[str] = Field(default_factory=list)
    distinct_users: int = 0
    numeric: dict[str, NumericStats] = Field(default_factory=dict)
    hidden: bool = False  # below privacy minimums or withheld by the auditor
    hidden_reason: str | None = None
    trend: Trend | None = None
    audit_score: int | None = None  # the privacy auditor's 1-5 rating of this name and summary (not public)

    @property
    def size(self) -> int:
        return len(self.conversation_ids)

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


class ClioResult(BaseModel):
    """Everything ``run_clio`` produces; the site writer's and the API's input."""

    facets: list[dict]  # serialised Facet definitions (name, question, numeric, ...)
    conversations: list[Conversation]
    facet_values: list[ConversationFacets]
    hierarchies: dict[str, FacetHierarchy]  # facet name -> tree (facets with summary criteria only)
    settings: dict = Field(default_factory=dict)  # the settings that produced it (JSON-safe subset)
    stats: dict = Field(default_factory=dict)  # counts: skipped, duplicates, unparseable answers, timings
