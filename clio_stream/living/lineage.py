"""Keeping a re-clustered hierarchy continuous with the previous one: patched upper levels, adopted parent ids, and
the lineage (old id -> successor) the API follows for old links.

Pure functions over hierarchies; ``centroid_of(members)`` gives the unit mean vector of members' stored values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from clio_stream.living.ids import IdAllocator
from clio_stream.living.matching import MatchThresholds, changed, match_clusters, successor

Centroid = Callable[[Iterable[str]], np.ndarray]  # members -> unit mean vector of their stored values


def place_leaves(
    leaves: Sequence[ClusterNode],
    old: FacetHierarchy,
    leaf_centroids: Mapping[str, np.ndarray],
    parent_centroids: Mapping[str, np.ndarray],
) -> dict[str, str]:
    """Leaf id -> level-1 parent id of ``old``, for patching the previous hierarchy.

    A surviving leaf stays under its previous parent; a new one goes under the parent
    that held most of its members before, or else the parent whose centroid is nearest.
    """
    parents = {nid: n for nid, n in old.nodes.items() if n.level == 1}
    parent_of_conv: dict[str, str] = {}
    for n in old.nodes.values():
        if n.level == 0 and n.parent_id in parents:
            for cid in n.conversation_ids:
                parent_of_conv[cid] = n.parent_id  # type: ignore[assignment]
    members = {pid: p.conversation_ids for pid, p in parents.items()}
    out: dict[str, str] = {}
    for leaf in leaves:
        prev = old.nodes.get(leaf.id)
        if prev is not None and prev.level == 0 and prev.parent_id in parents:
            out[leaf.id] = prev.parent_id  # type: ignore[assignment]
            continue
        votes = Counter(parent_of_conv[c] for c in leaf.conversation_ids if c in parent_of_conv)
        if votes:
            out[leaf.id] = votes.most_common(1)[0][0]  # ties: the first parent seen
            continue
        found = successor(leaf.conversation_ids, members, centroid=leaf_centroids.get(leaf.id),
                          candidate_centroids=parent_centroids)
        out[leaf.id] = str(found) if found is not None else next(iter(parents))
    return out


def patch_structure(leaves: Sequence[ClusterNode], placement: Mapping[str, str], old: FacetHierarchy) -> FacetHierarchy:
    """The previous hierarchy's upper levels over the new leaves: old parent ids, names and links; empty parents dropped.

    Members are recomputed bottom-up; children and roots are ordered by size, as ``build_hierarchy`` orders them.
    """
    nodes: dict[str, ClusterNode] = {leaf.id: leaf.model_copy(update={"parent_id": None}) for leaf in leaves}
    children: dict[str, list[str]] = {}
    for leaf in leaves:
        children.setdefault(placement[leaf.id], []).append(leaf.id)
    while children:
        above: dict[str, list[str]] = {}
        for pid in [p for p in old.nodes if p in children]:  # the old order: deterministic
            prev = old.nodes[pid]
            kids = sorted(children[pid], key=lambda c: -nodes[c].size)
            nodes[pid] = ClusterNode(id=pid, facet=prev.facet, name=prev.given_name, summary=prev.given_summary,
                                     level=prev.level, children=kids,
                                     conversation_ids=[c for k in kids for c in nodes[k].conversation_ids])
            for k in kids:
                nodes[k].parent_id = pid
            if prev.parent_id is not None and prev.parent_id in old.nodes:
                above.setdefault(prev.parent_id, []).append(pid)
        children = above
    roots = sorted((n for n in nodes.values() if n.parent_id is None), key=lambda n: -n.size)
    return FacetHierarchy(facet=old.facet, nodes=nodes, root_ids=[n.id for n in roots])


def adopt_parent_ids(
    h: FacetHierarchy,
    old: FacetHierarchy | None,
    ids: IdAllocator,
    centroid_of: Centroid,
    thresholds: MatchThresholds,
    known: set[str],
) -> tuple[FacetHierarchy, int]:
    """Give a freshly built hierarchy's parents stable ids: old ids where members match, fresh ones otherwise.

    A matched parent that barely changed also gets its old name back (names do not flicker).
    ``centroid_of(members) -> unit vector``. Returns the relabelled hierarchy and the number of names restored.
    """
    mapping: dict[str, str] = {}
    restored: dict[str, ClusterNode] = {}
    for level in range(1, h.depth()):
        new_p = {nid: n for nid, n in h.nodes.items() if n.level == level}
        old_p = {nid: n for nid, n in old.nodes.items() if n.level == level} if old is not None else {}
        matched: dict[str, str] = {}
        cos: dict[tuple[str, str], float] = {}
        if old_p and new_p:
            m = match_clusters({k: centroid_of(n.conversation_ids) for k, n in old_p.items()},
                               {k: set(n.conversation_ids) for k, n in old_p.items()},
                               {k: centroid_of(n.conversation_ids) for k, n in new_p.items()},
                               {k: set(n.conversation_ids) for k, n in new_p.items()},
                               min_similarity=thresholds.min_similarity, weight=thresholds.weight)
            matched = {str(k): str(v) for k, v in m.new_to_old.items()}
            cos = {(str(o), str(n)): v for (o, n), v in m.cosine.items()}
        for nid, node in new_p.items():
            if nid in matched:
                oid = matched[nid]
                mapping[nid] = oid
                if not changed(old_p[oid].conversation_ids, node.conversation_ids, cos[(oid, nid)], thresholds,
                               known=known):
                    restored[nid] = old_p[oid]
            else:
                mapping[nid] = ids.new(level)

    def rid(x: str | None) -> str | None:
        return None if x is None else mapping.get(x, x)

    nodes: dict[str, ClusterNode] = {}
    for nid, n in h.nodes.items():
        update: dict[str, Any] = {"id": rid(nid), "parent_id": rid(n.parent_id), "children": [rid(c) for c in n.children]}
        if nid in restored:
            update.update(name=restored[nid].given_name, summary=restored[nid].given_summary)
        nodes[rid(nid)] = n.model_copy(update=update)  # type: ignore[index]
    return FacetHierarchy(facet=h.facet, nodes=nodes, root_ids=[rid(r) for r in h.root_ids]), len(restored)  # type: ignore[misc]


def parent_lineage(old: FacetHierarchy, new: FacetHierarchy, centroid_of: Centroid) -> dict[str, str]:
    """Old parent id -> successor, for every old parent not in ``new``: the node of its level holding most of its members.

    When its level no longer exists, the successor is among the new top level.
    """
    out: dict[str, str] = {}
    by_level: dict[int, dict[str, list[str]]] = {}
    for nid, n in new.nodes.items():
        by_level.setdefault(n.level, {})[nid] = n.conversation_ids
    top = {r: new.nodes[r].conversation_ids for r in new.root_ids}
    cents: dict[str, np.ndarray] = {}
    for oid, o in old.nodes.items():
        if o.level == 0 or oid in new.nodes:
            continue
        cands = by_level.get(o.level) or top
        for k in cands:
            if k not in cents:
                cents[k] = centroid_of(cands[k])
        found = successor(o.conversation_ids, cands, centroid=centroid_of(o.conversation_ids),
                          candidate_centroids={k: cents[k] for k in cands})
        if found is not None:
            out[oid] = str(found)
    return out


def lineage_upwards(old: FacetHierarchy, new: FacetHierarchy, lineage: Mapping[str, str]) -> dict[str, str]:
    """``lineage`` completed for old nodes that found no successor (all their members gone): the nearest old
    ancestor that survives, or that ancestor's successor. An old link then lands on the broader topic."""
    out = dict(lineage)
    for oid, o in old.nodes.items():
        if oid in new.nodes or oid in out:
            continue
        seen = {oid}
        up = o.parent_id
        while up is not None and up in old.nodes and up not in seen:
            seen.add(up)
            if up in new.nodes:
                out[oid] = up
                break
            if up in out:
                out[oid] = out[up]
                break
            up = old.nodes[up].parent_id
    return out

