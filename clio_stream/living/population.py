"""Cluster populations over the whole window: the sizes, users, numeric statistics and trends a version shows.

The hierarchy is built and named from a sample (``living.sample``); what it reports about each cluster comes
from the assignment pass (``living.assign_pass``), which labelled and counted every point of the window. A
node stands for the base clusters of the leaves under it, so its counts are sums over those clusters, and its
distinct users are estimated from the pass's sketches (``living.user_sketch``) and, where that estimate is
small enough for a privacy minimum to matter, counted exactly by Qdrant over their labels
(``Labels.distinct_users``), plus one for the anonymous user when any point has no user hash. These nodes carry ``count`` (``ClusterNode.size`` is then the
window's number, not the sample's), and the privacy minimums, trends and visibility use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy, NumericStats, Trend
from clio_stream.living.totals import ClusterTotals
from clio_stream.living.user_sketch import EXACT_USERS, estimate
from clio_stream.privacy.visibility import visible_node_ids
from clio_stream.storage.documents import AssignPlan
from clio_stream.storage.store import QdrantStore


@dataclass
class Populations:
    """One facet's pass totals under its plan, and the store to count distinct users in."""

    store: QdrantStore
    plan: AssignPlan
    totals: ClusterTotals
    exact_below: int = EXACT_USERS  # clusters estimated at no more users than this are counted exactly

    def users(self, clusters: Sequence[int]) -> int:
        """Distinct users among the points of ``clusters`` (the anonymous user counted once).

        The pass's sketch estimates them (``living.user_sketch``, 3 %); where the estimate is at most
        ``exact_below`` (at least four times the privacy minimum) Qdrant counts them exactly, so every minimum
        is checked against an exact number, while large clusters cost no query that grows with the store.
        """
        idx = np.asarray(list(clusters), dtype=np.int64)
        if not len(idx):
            return 0
        anonymous = int(self.totals.anonymous[idx].sum() > 0)
        guess = round(estimate(self.totals.users[idx])) if int(self.totals.counts[idx].sum()) else 0
        if guess > self.exact_below:
            return guess + anonymous
        most = 2 * self.exact_below
        named = self.store.labels.distinct_users(self.plan.facet, self.plan.version, idx.tolist(), most=most)
        return (named if named <= most else max(guess, most + 1)) + anonymous

    def set_node(self, node: ClusterNode, clusters: Sequence[int]) -> None:
        """Put the window's numbers of ``clusters`` on ``node``."""
        idx = np.asarray(list(clusters), dtype=np.int64)
        count = int(self.totals.counts[idx].sum())
        node.count = count
        node.distinct_users = self.users(idx)
        node.numeric = {name: _numeric(name, int(lo_bins[0]), self.totals.numeric[name][idx].sum(axis=0))
                        for name, lo_bins in self.plan.numeric.items()}
        new = int(self.totals.new[idx].sum())
        node.trend = Trend(window_s=self.plan.trend_window_s, start=self.plan.trend_start,
                           counts=[int(c) for c in self.totals.trend[idx].sum(axis=0)] if self.plan.trend_start
                           is not None else [],
                           new_members=new if self.plan.new_after is not None else 0,
                           growth=new / max(1, count - new) if self.plan.new_after is not None else None)

    def set_leaves(self, leaves: Sequence[ClusterNode], cluster_of: Mapping[str, int]) -> None:
        """Each leaf's numbers, from its base cluster (``cluster_of``: leaf id -> k-means index)."""
        for leaf in leaves:
            self.set_node(leaf, [cluster_of[leaf.id]])

    def set_hierarchy(self, hierarchy: FacetHierarchy, cluster_of: Mapping[str, int]) -> None:
        """Every parent's numbers (and a leaf's not set yet), from the base clusters of the leaves under it."""
        for node in hierarchy.nodes.values():
            if node.level > 0 or node.count is None:
                self.set_node(node, base_clusters_under(hierarchy, node, cluster_of))

    def set_visible_users(self, hierarchy: FacetHierarchy, cluster_of: Mapping[str, int]) -> None:
        """For a parent with something withheld below it: distinct users over its visible leaves only, what
        ``privacy.visibility.public_nodes`` shows instead of its whole count."""
        visible = visible_node_ids(hierarchy)
        for node in hierarchy.nodes.values():
            node.visible_users = None
            if node.level == 0 or node.id not in visible:
                continue
            under = _leaves_under(hierarchy, node)
            shown = [leaf for leaf in under if _visible_path(hierarchy, leaf, node, visible)]
            if len(shown) < len(under):
                node.visible_users = self.users([cluster_of[leaf.id] for leaf in shown if leaf.id in cluster_of])


def base_clusters_under(hierarchy: FacetHierarchy, node: ClusterNode, cluster_of: Mapping[str, int]) -> list[int]:
    """The k-means indices of the leaves under ``node`` (itself, for a leaf)."""
    return [cluster_of[leaf.id] for leaf in _leaves_under(hierarchy, node) if leaf.id in cluster_of]


def _leaves_under(hierarchy: FacetHierarchy, node: ClusterNode) -> list[ClusterNode]:
    if node.level == 0:
        return [node]
    out: list[ClusterNode] = []
    for cid in node.children:
        if cid in hierarchy.nodes:
            out.extend(_leaves_under(hierarchy, hierarchy.nodes[cid]))
    return out


def _visible_path(hierarchy: FacetHierarchy, leaf: ClusterNode, top: ClusterNode, visible: set[str]) -> bool:
    """Whether every node from ``leaf`` up to ``top`` is visible."""
    node: ClusterNode | None = leaf
    while node is not None and node.id != top.id:
        if node.id not in visible:
            return False
        node = hierarchy.nodes.get(node.parent_id) if node.parent_id else None
    return node is not None


def _numeric(facet: str, lowest: int, hist: np.ndarray) -> NumericStats:
    counts = [int(h) for h in hist]
    total = sum(counts)
    mean = sum((lowest + i) * h for i, h in enumerate(counts)) / total if total else None
    return NumericStats(facet=facet, count=total, mean=mean, min_value=lowest, histogram=counts)
