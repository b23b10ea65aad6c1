"""What the API may show of a published version: visible clusters only, built once per version.

Privacy is ``privacy.visibility``'s rule, the same as the static site's: a node that is not visible is
answered exactly like an unknown id (404); a parent reports its withheld children only as one aggregate
``other_count`` and aggregates its users, numeric statistics and trend over its visible children only; a
conversation inside a withheld node of any facet is withheld as a whole (no value or cluster in any facet,
no raw messages).

Everything derived from the (immutable) version is computed once; ``ApiContext`` keeps it per version
(``api.deps.VersionMemo``); the tree answers are pre-serialised bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from clio_stream.domain.clusters import ClusterNode, StoreLink
from clio_stream.privacy.visibility import FacetVisibility, user_identities, withheld_by_conversation
from clio_stream.storage.published import PublishedVersion, PublishedVersions

log = logging.getLogger(__name__)

_SCRIPT_RE = re.compile(r"<script>(.*?)</script>", re.DOTALL)


@dataclass
class FacetView(FacetVisibility):
    """One hierarchy facet of a version as the routes read it: its visibility plus the join to the store."""

    cluster_version: int | None = None  # the clustering version the store's labels must carry; None: current
    store_cluster: dict[str, int] = field(default_factory=dict)  # level-0 node id -> online cluster id in the store
    node_of_cluster: dict[int, str] = field(default_factory=dict)  # the inverse
    tree_json: bytes = b""

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


def build_view(published: PublishedVersion, versions: PublishedVersions | None = None) -> VersionView:
    """Index every hierarchy facet of ``published`` and serialise its tree (``versions``: for older lineage)."""
    result = published.result
    users = user_identities(result)
    facet_views = {name: FacetView.of(name, h, users, **_store_join(h.nodes, result.store_links.get(name)))
                   for name, h in result.hierarchies.items()}
    view = VersionView(
        version=published.version,
        published_at=published.published_at,
        facets=list(result.facets),
        facet_views=facet_views,
        withheld=withheld_by_conversation(facet_views.values()),
        lineage=_all_lineage(published, versions),
        values={cf.conversation_id: cf.values for cf in result.facet_values},
    )
    for fv in facet_views.values():
        fv.tree_json = json.dumps(_tree(view, fv), ensure_ascii=False, separators=(",", ":")).encode()
    log.info("indexed version %s: %s", view.version,
             ", ".join(f"{n} {len(f.visible)}/{len(f.hierarchy.nodes)} visible" for n, f in facet_views.items()))
    return view


def _store_join(nodes: dict[str, ClusterNode], link: StoreLink | None) -> dict[str, Any]:
    """The FacetView fields that join its leaves to the store's clusters (none without a link)."""
    if link is None:
        return {}
    store_cluster = {nid: c for nid, c in link.clusters.items() if nid in nodes and nodes[nid].level == 0}
    return {"cluster_version": link.version, "store_cluster": store_cluster,
            "node_of_cluster": {v: k for k, v in store_cluster.items()}}


def _all_lineage(published: PublishedVersion, versions: PublishedVersions | None) -> dict[str, str]:
    """Lineage of the retained versions merged, oldest first, so chains of renames resolve."""
    merged: dict[str, str] = {}
    if versions is not None:
        for name in versions.list_versions():
            if name == published.version:
                continue
            try:
                merged.update(versions.read_lineage(name))
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


def dashboard_page(published: PublishedVersion, poll_s: float) -> tuple[str, str]:
    """The served index.html (with the API meta tag) and its CSP (``ApiContext.pages`` keeps it per version)."""
    return served_page((published.site_dir / "index.html").read_text(encoding="utf-8"), poll_s)


def live_page(poll_s: float) -> tuple[str, str]:
    """The page served before the first version: ingest progress from ``/v1/status`` (``site/static/live.html``)."""
    from importlib import resources

    return served_page(resources.files("clio_stream.site").joinpath("static/live.html").read_text(encoding="utf-8"),
                       poll_s)


def served_page(page: str, poll_s: float) -> tuple[str, str]:
    """``page`` with the API meta tag, and the CSP that allows exactly its inline scripts (by hash)."""
    poll_ms = int(poll_s * 1000)
    meta = f'<meta name="clio-api" content="/v1" data-poll-ms="{poll_ms}">'
    page = page.replace("<head>", "<head>\n" + meta, 1)
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() + "'"
        for s in _SCRIPT_RE.findall(page))
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src 'self' data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page, csp
