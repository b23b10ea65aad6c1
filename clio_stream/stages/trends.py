"""Trends: per-cluster counts per time window, and which clusters are emerging.

Computed at re-clustering time from what the published version already holds
(members and their conversation times), so the API and the static site show the
same numbers without another store query. Two questions, two measures:

* *when* did a cluster's conversations happen? ``counts`` over the last
  ``trend_windows`` windows of ``trend_window_s`` (by conversation timestamp,
  windows aligned to multiples of the width, the last one holding the newest
  conversation);
* *is it growing now?* ``growth`` = members that did not exist in the previous
  version / members that did. It needs no id matching, so a brand-new cluster
  made of new conversations has a large growth and one merely re-cut from old
  conversations has none. The ``emerging_top`` fastest growers with growth of
  at least ``emerging_min_growth`` are flagged ``emerging``.

Only visible clusters are ranked; a hidden one stays hidden whatever its trend.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping

from clio_stream.domain.clusters import FacetHierarchy, Trend
from clio_stream.privacy.visibility import visible_node_ids


def window_grid(timestamps: Collection[float], window_s: float, windows: int) -> float | None:
    """Start of the first of ``windows`` aligned windows ending with the newest timestamp (None: no times)."""
    if not timestamps:
        return None
    last = math.floor(max(timestamps) / window_s)
    return (last - windows + 1) * window_s


def window_counts(times: Collection[float], start: float, window_s: float, windows: int) -> list[int]:
    """Counts per window from ``start``; times before the grid are left out (older than the trend shows)."""
    counts = [0] * windows
    for t in times:
        i = math.floor((t - start) / window_s)
        if 0 <= i < windows:
            counts[i] += 1
    return counts


def annotate_trends(
    hierarchy: FacetHierarchy,
    timestamps: Mapping[str, float | None],
    previous_members: Collection[str] | None,
    *,
    window_s: float,
    windows: int,
    min_growth: float,
    top: int,
) -> list[str]:
    """Set every node's ``trend`` (a node counted over a sampled window keeps its own); returns the ids
    flagged emerging, fastest first.

    ``previous_members``: every conversation of the previous version (None for a first version: no growth).
    """
    times = {cid: float(t) for cid, t in timestamps.items() if isinstance(t, (int, float))}
    start = window_grid(times.values(), window_s, windows)
    for node in hierarchy.nodes.values():
        if node.count is not None and node.trend is not None:
            continue  # counted over the whole window by the re-clustering job (living.population)
        member_times = [times[c] for c in node.conversation_ids if c in times]
        counts = window_counts(member_times, start, window_s, windows) if start is not None else []
        new = growth = None
        if previous_members is not None:
            new = sum(1 for c in node.conversation_ids if c not in previous_members)
            growth = new / max(1, node.size - new)
        node.trend = Trend(window_s=window_s, start=start, counts=counts, new_members=new or 0, growth=growth)
    visible = visible_node_ids(hierarchy)
    ranked = sorted((n for n in hierarchy.nodes.values()
                     if n.id in visible and n.trend is not None and n.trend.growth is not None
                     and n.trend.growth >= min_growth),
                    key=lambda n: (-n.trend.growth, -n.size, n.id))  # type: ignore[union-attr]
    emerging = [n.id for n in ranked[:top]]
    for nid in emerging:
        hierarchy.nodes[nid].trend.emerging = True  # type: ignore[union-attr]
    return emerging
