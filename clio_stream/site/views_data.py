"""The views the static site carries beside its tree, written at publish time: per facet the cluster map and
every visible cluster's breakdown, and what changed since the previous version.

Everything here is an aggregate a viewer may read (``data_file_role``: viewer): visible clusters only, every
breakdown bucket under ``privacy.visibility.shown_buckets``, metadata keys declared for viewers only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from clio_stream.domain.clusters import ClioResult
from clio_stream.privacy.visibility import Minimums, ResultVisibility
from clio_stream.views.breakdowns import breakdown
from clio_stream.views.diff import diff_results
from clio_stream.views.slices import SliceIndex

CHANGES_FILE = "views/changes.json.gz"
WriteJson = Callable[[str, dict[str, Any]], None]


def map_nodes(result: ClioResult, visibility: ResultVisibility, facet: str) -> list[dict[str, Any]]:
    """The visible clusters of ``facet`` placed on its map: position, size, growth, means, path (root first)."""
    shown = visibility.facets[facet]
    layout = result.maps.get(facet)
    if layout is None:
        return []
    out = []
    for nid in shown.visible:
        if nid not in layout.positions:
            continue
        node = shown.public[nid]
        path, parent = [], node.parent_id
        while parent is not None and parent in shown.hierarchy.nodes:
            path.append(parent)
            parent = shown.hierarchy.nodes[parent].parent_id
        x, y = layout.positions[nid]
        out.append({"id": nid, "name": node.name, "level": node.level, "parent_id": node.parent_id,
                    "path": path[::-1], "x": round(x, 4), "y": round(y, 4), "size": node.size,
                    "distinct_users": node.distinct_users,
                    "growth": None if node.trend is None else node.trend.growth,
                    "emerging": bool(node.trend and node.trend.emerging),
                    "means": {k: s.mean for k, s in node.numeric.items()}})
    out.sort(key=lambda n: (-n["level"], -n["size"], n["id"]))
    return out


def write_views(write: WriteJson, result: ClioResult, visibility: ResultVisibility, *, minimums: Minimums,
                metadata_keys: Sequence[str], previous: tuple[str, ClioResult, dict[str, str]] | None,
                version: str) -> dict[str, Any]:
    """Write the map and breakdown files of every hierarchy facet and the changes file; the manifest's entry."""
    index = SliceIndex.of(result, visibility.facets, list(visibility.withheld), metadata_keys, minimums)
    entry: dict[str, Any] = {"maps": {}, "breakdowns": {}, "changes": None, "metadata_keys": list(metadata_keys)}
    for i, f in enumerate(result.facets):
        name = str(f.get("name"))
        if name not in visibility.facets:
            continue
        shown = visibility.facets[name]
        if result.maps.get(name) is not None:
            rel = f"views/map-f{i}.json.gz"
            write(rel, {"facet": name, "method": result.maps[name].method, "nodes": map_nodes(result, visibility, name)})
            entry["maps"][name] = rel
        rel = f"views/breakdowns-f{i}.json.gz"
        rows = index.node_rows[name]
        write(rel, {"facet": name, "nodes": {nid: breakdown(index, rows[nid], name, result.facets, visibility.facets,
                                                           metadata_keys) for nid in shown.visible}})
        entry["breakdowns"][name] = rel
    if previous is not None:
        old_version, old, lineage = previous
        write(CHANGES_FILE, diff_results(old, result, lineage, old_version=old_version, new_version=version))
        entry["changes"] = CHANGES_FILE
    return entry
