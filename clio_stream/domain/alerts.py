"""Alert rules (settings) and the alerts they fire: what an operator is told when a cluster appears or grows.

Rules are evaluated at each publish over the visible clusters only (``clio_stream.views.alerts``); an alert
fires once per (rule, facet, cluster) for the life of the deployment, whatever re-clusterings follow.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, Field

AlertKind = Literal["new_cluster", "emerging", "growth", "mean_above", "members_in_window"]


class AlertRule(BaseModel):
    """One condition over published clusters.

    * ``new_cluster``: a visible cluster whose id was never published before (nor is a successor of one);
    * ``emerging``: a cluster flagged emerging by the trends stage;
    * ``growth``: growth since the previous version at least ``threshold`` (0.5 = +50 %);
    * ``mean_above``: mean of the numeric facet ``numeric_facet`` at least ``threshold``;
    * ``members_in_window``: at least ``threshold`` conversations in the last ``windows`` trend windows.
    """

    name: str = Field(min_length=1, max_length=80)
    kind: AlertKind
    facet: str | None = Field(None, description="Only this hierarchy facet; None: every one.")
    threshold: float | None = None
    numeric_facet: str | None = None
    windows: int = Field(1, ge=1)
    level: int | None = Field(0, description="Only clusters of this level (0 = base clusters); None: any level.")


class Alert(BaseModel):
    """One fired alert, as delivered to webhooks and listed by ``GET /v1/alerts`` (public cluster fields only)."""

    id: str
    rule: str
    kind: AlertKind
    facet: str
    cluster_id: str
    cluster_name: str
    cluster_summary: str = ""
    path: list[str] = Field(default_factory=list)  # ancestor names, root first
    size: int
    distinct_users: int
    value: float | None = None  # what crossed the threshold (growth, mean, members), if any
    threshold: float | None = None
    version: str
    fired_at: float
    delivered: bool = False
    delivered_to: list[str] = Field(default_factory=list)  # tags of the webhooks that answered 2xx
    attempts: int = 0
    last_error: str | None = None


def alert_id(rule: str, facet: str, cluster_id: str) -> str:
    """The one id of (rule, facet, cluster): the key that makes an alert fire once, and the receivers' dedup key."""
    return hashlib.sha256(f"{rule}\x1f{facet}\x1f{cluster_id}".encode()).hexdigest()[:32]
