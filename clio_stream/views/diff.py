"""What changed between two published versions: clusters new, vanished, merged and split, and size changes.

Only what each version shows is compared (``privacy.visibility``): a cluster withheld in a version does not
exist in it here. Merges come from the lineage (several shown ids with one successor); a split is a shown base
cluster whose conversations now sit mostly in two or more shown base clusters (member overlap decides, no
count of it is reported). Sizes are the public sizes of each version.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from clio_stream.domain.clusters import ClioResult, ClusterNode
from clio_stream.privacy.visibility import FacetVisibility, result_visibility

SPLIT_SHARE = 0.25  # a part of a split holds at least this share of the old cluster's conversations
MAX_ITEMS = 50


def _item(node: ClusterNode, fv: FacetVisibility | None = None, **extra: Any) -> dict[str, Any]:
    """A cluster as the diff lists it; with ``fv``, the ids of its ancestors there (root first), to open it."""
    path: list[str] = []
    parent = node.parent_id
    while fv is not None and parent is not None and parent in fv.hierarchy.nodes and parent not in path:
        path.append(parent)
        parent = fv.hierarchy.nodes[parent].parent_id
    return {"id": node.id, "name": node.name, "level": node.level, "size": node.size, "path": path[::-1], **extra}


def _resolve(cid: str, lineage: Mapping[str, str], shown: set[str]) -> str | None:
    seen = {cid}
    while cid in lineage:
        cid = lineage[cid]
        if cid in shown:
            return cid
        if cid in seen:
            return None
        seen.add(cid)
    return None


def facet_diff(old: FacetVisibility, new: FacetVisibility, lineage: Mapping[str, str]) -> dict[str, Any]:
    """The changes of one facet's shown clusters from ``old`` to ``new``."""
    before, after = set(old.visible), set(new.visible)
    successor = {cid: _resolve(cid, lineage, after) for cid in before - after}
    succeeded = {s for s in successor.values() if s is not None}
    into: dict[str, list[str]] = {}
    for cid, s in successor.items():
        if s is not None:
            into.setdefault(s, []).append(cid)
    merged = []
    for target, sources in into.items():
        olds = sources + ([target] if target in before else [])
        if len(olds) >= 2:
            merged.append(_item(new.public[target], new, **{"from": [{"id": o, "name": old.public[o].name} for o in olds]}))
    new_leaf_of = {c: n.id for n in (new.hierarchy.nodes[i] for i in after) if not n.children
                   for c in n.conversation_ids}
    split = []
    for cid in before:
        node = old.hierarchy.nodes[cid]
        if node.children or not node.conversation_ids:
            continue
        votes = Counter(new_leaf_of[c] for c in node.conversation_ids if c in new_leaf_of)
        parts = [n for n, v in votes.most_common() if v >= SPLIT_SHARE * node.size]
        if len(parts) >= 2:
            split.append(_item(old.public[cid], into=[{"id": p, "name": new.public[p].name} for p in parts]))
    changes = []
    for cid in before & after:
        a, b = old.public[cid], new.public[cid]
        if a.size != b.size or a.name != b.name:
            changes.append(_item(b, new, old_size=a.size, change=b.size - a.size,
                                 **({"old_name": a.name} if a.name != b.name else {})))
    changes.sort(key=lambda d: (-abs(d["change"]), d["id"]))
    fresh = sorted((new.public[c] for c in after - before - succeeded), key=lambda n: (-n.size, n.id))
    gone = sorted((old.public[c] for c in before - after if successor[c] is None), key=lambda n: (-n.size, n.id))
    return {"new": [_item(n, new) for n in fresh][:MAX_ITEMS], "vanished": [_item(n) for n in gone][:MAX_ITEMS],
            "merged": merged[:MAX_ITEMS], "split": split[:MAX_ITEMS], "size_changes": changes[:MAX_ITEMS],
            "total_before": old.total, "total_after": new.total}


def diff_results(old: ClioResult, new: ClioResult, lineage: Mapping[str, str], *, old_version: str,
                 new_version: str) -> dict[str, Any]:
    """Per hierarchy facet shown in either version, its changes (``facet_diff``); ``lineage``: old id -> successor."""
    a, b = result_visibility(old).facets, result_visibility(new).facets
    facets = {}
    for name in dict.fromkeys([*b, *a]):
        empty_old = a.get(name) or FacetVisibility.of(name, b[name].hierarchy.model_copy(update={"root_ids": []}), {})
        empty_new = b.get(name) or FacetVisibility.of(name, a[name].hierarchy.model_copy(update={"root_ids": []}), {})
        facets[name] = facet_diff(empty_old, empty_new, lineage)
    return {"from": old_version, "to": new_version, "facets": facets}
