"""Breakdowns: inside one cluster, how its conversations spread over every other facet and declared metadata key.

Clio's analysts break a cluster down by another facet (languages inside a topic, concern inside a task). Every
bucket is a slice and follows ``privacy.visibility.shown_buckets``: buckets under the minimums are merged into
one "other" count, itself kept at or above the minimums. A hierarchy facet is broken down by its visible
top-level clusters; a numeric facet by its values; a plain facet by its values; metadata by value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clio_stream.privacy.visibility import FacetVisibility, shown_buckets
from clio_stream.views.slices import SliceIndex

MAX_BUCKETS = 12  # more distinct shown values than this: the smallest join "other"


def root_labels(index: SliceIndex, fv: FacetVisibility) -> tuple[np.ndarray, dict[str, str]]:
    """Per row, the visible top-level cluster of ``fv`` holding it (None: none), and cluster name -> id."""
    labels = np.full(index.table.n, None, dtype=object)
    ids: dict[str, str] = {}
    for rid in fv.visible_roots:
        node = fv.hierarchy.nodes[rid]
        labels[index.node_rows[fv.name][rid]] = node.name
        ids[node.name] = rid
    return labels, ids


def breakdown(index: SliceIndex, rows: np.ndarray, facet: str, facets: Sequence[Mapping[str, Any]],
              visibility: Mapping[str, FacetVisibility], metadata_keys: Sequence[str]) -> list[dict[str, Any]]:
    """Every dimension's distribution over ``rows`` (one cluster's shown conversations), safe to show."""
    table, users = index.table, index.table.users[rows]
    dims: list[tuple[str, str, np.ndarray, dict[str, str]]] = []
    for f in facets:
        name = str(f.get("name"))
        if name == facet:
            continue
        if name in visibility:
            labels, ids = root_labels(index, visibility[name])
            dims.append((name, "cluster", labels[rows], ids))
        elif f.get("numeric"):
            col = table.numeric[name][rows]
            dims.append((name, "numeric", np.array([None if np.isnan(v) else str(int(v)) for v in col],
                                                   dtype=object), {}))
        else:
            dims.append((name, "value", table.labels[name][rows], {}))
    for key in metadata_keys:
        if key in table.metadata:
            dims.append((f"metadata.{key}", "metadata", table.metadata[key][rows], {}))
    out = []
    for name, kind, labels, ids in dims:
        buckets, other = shown_buckets(labels, users, index.minimums)
        if len(buckets) > MAX_BUCKETS:
            keep = list(buckets)[:MAX_BUCKETS]
            other += sum(buckets[k] for k in buckets if k not in keep)
            buckets = {k: buckets[k] for k in keep}
        order = sorted(buckets, key=lambda k: int(k)) if kind == "numeric" else list(buckets)
        out.append({"dimension": name, "kind": kind, "total": int(len(rows)), "other": int(other),
                    "buckets": [{"label": k, "count": int(buckets[k]), **({"id": ids[k]} if k in ids else {})}
                                for k in order]})
    return out
