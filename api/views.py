"""What the API may show of a published version: visible clusters only, built once per version.

Privacy rules (the same as the static site's):

* a node is visible when it is reachable from a visible root through visible
  nodes only; anything else is answered exactly like an unknown id (404);
* a parent reports the conversations of its withheld children only as one
  aggregate ``other_count``; its users, numeric statistics and trend are
  aggregated over its visible children only (``privacy.public_nodes``);
* a conversation inside a withheld node of any facet is withheld as a whole,
  as on the site: no value or cluster in any facet, no raw messages.

Everything derived from the (immutable) version is computed once and kept in
``PublishedVersion.cache``; the tree answers are pre-serialised bytes.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from clio_stream.privacy import public_nodes, user_identity, visible_node_ids, withheld_nodes
from clio_stream.publish import PublishedVersion, list_versions, read_lineage
from clio_stream.domain.clusters import ClusterNode, FacetHierarchy

log = logging.getLogger(__name__)

_LEAF_ID_RE = re.compile(r"-l0-(\d+)$")
VIEW_KEY = "api.view"
_view_lock = threading.Lock()


@dataclass
class FacetView:
    """One hierarchy facet of a version, indexed for the routes."""

    name: str
    hierarchy: FacetHierarchy
    visible: set[str]
    visible_roots: list[str]
    total: int
    other_count: int
    cluster_version: int | None
    store_cluster: dict[str, int]  # level-0 node id -> online cluster id in the store
    node_of_cluster: dict[int, str]  # the inverse
    public: dict[str, ClusterNode] = field(default_factory=dict)  # visible node id -> node as shown to anyone
    tree_json: bytes = b""

    def node(self, node_id: str) -> ClusterNode | None:
        """The node if it is visible, else None (hidden and unknown look the same)."""
        return self.hierarchy.nodes.get(node_id) if node_id in self.visible else None

    def visible_children(self, node: ClusterNode) -> list[ClusterNode]:
        return [self.hierarchy.nodes[c] for c in node.children if c in self.visible]

    def withheld_count(self, node: ClusterNode) -> int:
        hidden = [self.hierarchy.nodes[c] for c in node.children if c in self.hierarchy.nodes and c not in self.visible]
        return len({cid for n in hidden for cid in n.conversation_ids})

    def path(self, node: ClusterNode) -> list[ClusterNode]:
        """Ancestors of ``node``, root first (all visible, since ``node`` is)."""
        out: list[ClusterNode] = []
        seen = {node.id}
        parent = node.parent_id
        while parent is not None and parent in self.hierarchy.nodes and parent not in seen:
            seen.add(parent)
            out.append(self.hierarchy.nodes[parent])
            parent = self.hierarchy.nodes[parent].parent_id
        return out[::-1]

    def leaves_under(self, node: ClusterNode) -> list[ClusterNode]:
        """Visible level-0 nodes under ``node`` (itself if it is one), depth first, in child order."""
        out: list[ClusterNode] = []
        stack = [node]
        while stack:
            n = stack.pop()
            kids = self.visible_children(n)
            if not n.children:
                out.append(n)
            stack.extend(reversed(kids))
        return out

    def leaf_for(self, cluster_id: Any, cluster_version: Any) -> str | None:
        """The level-0 node id (visible or not) a stored point's cluster maps to, or None."""
        if cluster_id is None:
            return None
        if self.cluster_version is not None and cluster_version is not None and int(cluster_version) != self.cluster_version:
            return None  # labelled under another clustering version: the mapping does not apply
        return self.node_of_cluster.get(int(cluster_id))


@dataclass
class VersionView:
    """A published version as the API shows it."""

    version: str
    published_at: float | None
    facets: list[dict[str, Any]]
    facet_views: dict[str, FacetView]
    withheld: dict[str, set[str]]  # conversation id -> facets in which it sits in a withheld node
    lineage: dict[str, str]
    values: dict[str, dict[str, Any]] = field(default_factory=dict)  # conversation id -> facet -> FacetValue

    def resolve(self, facet: str, cluster_id: str) -> tuple[ClusterNode, str | None] | None:
        """The visible node for ``cluster_id``, following lineage for old ids: (node, old id or None)."""
        fv = self.facet_views.get(facet)
        if fv is None:
            return None
        node = fv.node(cluster_id)
        if node is not None:
            return node, None
        seen = {cluster_id}
        current = cluster_id
        while current in self.lineage:
            current = self.lineage[current]
            if current in seen:
                return None
            seen.add(current)
            node = fv.node(current)
            if node is not None:
                return node, cluster_id
            if current in fv.hierarchy.nodes:
                return None  # the successor exists but is withheld: same answer as unknown
        return None


def view_of(published: PublishedVersion, publish_dir: Any) -> VersionView:
    """The view of ``published``, built on first use and then cached with it."""
    cached = published.cache.get(VIEW_KEY)
    if cached is not None:
        return cached
    with _view_lock:
        cached = published.cache.get(VIEW_KEY)
        if cached is None:
            cached = build_view(published, publish_dir)
            published.cache[VIEW_KEY] = cached
    return cached


def build_view(published: PublishedVersion, publish_dir: Any = None) -> VersionView:
    """Index every hierarchy facet of ``published`` and serialise its tree."""
    result = published.result
    stats = result.stats or {}
    explicit_clusters = {str(k): int(v) for k, v in dict(stats.get("store_clusters") or {}).items()}
    explicit_versions = {str(k): (None if v is None else int(v))
                         for k, v in dict(stats.get("cluster_versions") or {}).items()}
    common = stats.get("version")  # the re-clustering job labels every facet with one version number
    if isinstance(common, int) and not isinstance(common, bool):
        explicit_versions = {name: explicit_versions.get(name, common) for name in result.hierarchies}
    withheld: dict[str, set[str]] = {}
    facet_views: dict[str, FacetView] = {}
    users = {c.id: user_identity(c) for c in result.conversations}
    for name, hierarchy in result.hierarchies.items():
        fv = _facet_view(name, hierarchy, explicit_clusters, explicit_versions.get(name))
        fv.public = public_nodes(hierarchy, users)
        for node in withheld_nodes(hierarchy):
            for cid in node.conversation_ids:
                withheld.setdefault(cid, set()).add(name)
        facet_views[name] = fv
    view = VersionView(
        version=published.version,
        published_at=published.published_at,
        facets=list(result.facets),
        facet_views=facet_views,
        withheld=withheld,
        lineage=_all_lineage(published, publish_dir),
        values={cf.conversation_id: cf.values for cf in result.facet_values},
    )
    for fv in facet_views.values():
        fv.tree_json = json.dumps(_tree(view, fv), ensure_ascii=False, separators=(",", ":")).encode()
    log.info("indexed version %s: %s", view.version,
             ", ".join(f"{n} {len(f.visible)}/{len(f.hierarchy.nodes)} visible" for n, f in facet_views.items()))
    return view


def _facet_view(name: str, hierarchy: FacetHierarchy, explicit_clusters: dict[str, int],
                cluster_version: int | None) -> FacetView:
    visible = visible_node_ids(hierarchy)
    roots = [r for r in hierarchy.root_ids if r in visible]
    all_roots = [hierarchy.nodes[r] for r in hierarchy.root_ids if r in hierarchy.nodes]
    hidden_roots = [r for r in all_roots if r.id not in visible]
    store_cluster: dict[str, int] = {}
    for nid, node in hierarchy.nodes.items():
        if node.level != 0:
            continue
        if nid in explicit_clusters:
            store_cluster[nid] = explicit_clusters[nid]
        elif (m := _LEAF_ID_RE.search(nid)) is not None:
            store_cluster[nid] = int(m.group(1))
    return FacetView(
        name=name,
        hierarchy=hierarchy,
        visible=visible,
        visible_roots=roots,
        total=len({cid for r in all_roots for cid in r.conversation_ids}),
        other_count=len({cid for r in hidden_roots for cid in r.conversation_ids}),
        cluster_version=cluster_version,
        store_cluster=store_cluster,
        node_of_cluster={v: k for k, v in store_cluster.items()},
    )


def _all_lineage(published: PublishedVersion, publish_dir: Any) -> dict[str, str]:
    """Lineage of the retained versions merged, oldest first, so chains of renames resolve."""
    merged: dict[str, str] = {}
    if publish_dir is not None:
        for name in list_versions(publish_dir):
            if name == published.version:
                continue
            try:
                merged.update(read_lineage(publish_dir, name))
            except (OSError, ValueError):  # an unreadable old version only loses its lineage
                log.warning("could not read lineage of version %s", name, exc_info=True)
    merged.update(published.lineage)
    return merged


def summary(fv: FacetView, node: ClusterNode) -> dict[str, Any]:
    """The public fields of a visible node (no member ids, no hidden children)."""
    return {
        **fv.public[node.id].public_fields(),
        "n_children": len(fv.visible_children(node)),
        "other_count": fv.withheld_count(node),
    }


def _tree(view: VersionView, fv: FacetView) -> dict[str, Any]:
    def build(node: ClusterNode) -> dict[str, Any]:
        out = summary(fv, node)
        out["children"] = [build(c) for c in fv.visible_children(node)]
        return out

    return {
        "facet": fv.name,
        "version": view.version,
        "total": fv.total,
        "depth": fv.hierarchy.depth(),
        "other_count": fv.other_count,
        "roots": [build(fv.hierarchy.nodes[r]) for r in fv.visible_roots],
    }
