"""A facet's tree under a filter: which visible clusters are shown, and their numbers recomputed over the slice.

The rule is ``privacy.visibility.filtered_rows`` (leaves by the slice rule, parents as the union of their shown
children); this module prepares its inputs once per version (``SliceIndex``) and writes the answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clio_stream.domain.clusters import ClioResult, ClusterNode, NumericStats
from clio_stream.privacy.visibility import FacetVisibility, Minimums, filtered_rows
from clio_stream.stages.trends import window_counts
from clio_stream.views.filters import Filter
from clio_stream.views.table import ConversationTable


@dataclass
class SliceIndex:
    """What every filtered answer of one version starts from: the table, each visible node's rows, the minimums."""

    table: ConversationTable
    node_rows: dict[str, dict[str, np.ndarray]]  # facet -> visible node id -> rows (withheld conversations out)
    minimums: Minimums
    numeric_facets: list[str]

    @classmethod
    def of(cls, result: ClioResult, facets: Mapping[str, FacetVisibility], withheld: Sequence[str],
           metadata_keys: Sequence[str], minimums: Minimums) -> SliceIndex:
        table = ConversationTable.of(result, withheld, metadata_keys)
        rows = {name: table.node_rows({nid: fv.hierarchy.nodes[nid].conversation_ids for nid in fv.visible})
                for name, fv in facets.items()}
        numeric = [str(f["name"]) for f in result.facets if f.get("numeric")]
        return cls(table=table, node_rows=rows, minimums=minimums, numeric_facets=numeric)

    def shown(self, fv: FacetVisibility, flt: Filter) -> dict[str, np.ndarray]:
        """Visible node id -> rows shown under ``flt`` (every visible node's rows when the filter is empty)."""
        rows = self.node_rows[fv.name]
        if not flt:
            return rows
        leaves = {nid: r for nid, r in rows.items() if not fv.hierarchy.nodes[nid].children}
        return filtered_rows(fv, leaves, flt.mask(self.table), flt.subfilter_masks(self.table), self.table.users,
                             self.minimums, flt.cell_masks(self.table))

    def numeric_stats(self, node: ClusterNode, rows: np.ndarray) -> dict[str, dict[str, Any]]:
        """The node's numeric statistics recomputed over ``rows`` (same scale as the published ones)."""
        out: dict[str, dict[str, Any]] = {}
        for name, stats in node.numeric.items():
            if name not in self.table.numeric:
                continue
            vals = self.table.numeric[name][rows]
            vals = vals[~np.isnan(vals)].astype(np.int64) - stats.min_value
            bins = len(stats.histogram)
            hist = np.bincount(vals[(vals >= 0) & (vals < bins)], minlength=bins)[:bins].tolist()
            count = int(sum(hist))
            mean = (sum((stats.min_value + i) * h for i, h in enumerate(hist)) / count) if count else None
            out[name] = NumericStats(facet=name, count=count, mean=mean, min_value=stats.min_value,
                                     histogram=hist).model_dump(exclude={"facet"})
        return out

    def summary(self, fv: FacetVisibility, node: ClusterNode, rows: np.ndarray, n_children: int) -> dict[str, Any]:
        """A node's public fields with size, users, numeric statistics and trend counts of the slice only."""
        out = fv.public[node.id].public_fields()
        trend = node.trend
        if trend is not None and trend.start is not None and trend.counts:
            times = self.table.times[rows]
            counts = window_counts(times[~np.isnan(times)].tolist(), trend.start, trend.window_s, len(trend.counts))
            out["trend"] = {**trend.model_dump(), "counts": counts, "new_members": 0, "growth": None,
                            "emerging": False}
        out.update(size=int(len(rows)), distinct_users=int(np.unique(self.table.users[rows]).size),
                   numeric=self.numeric_stats(node, rows), n_children=n_children, other_count=0)
        return out

    def tree(self, fv: FacetVisibility, flt: Filter, version: str) -> dict[str, Any]:
        """The whole tree under ``flt`` (same shape as the unfiltered tree answer), plus the filter it applies."""
        shown = self.shown(fv, flt)

        def build(node: ClusterNode) -> dict[str, Any]:
            kids = [c for c in fv.visible_children(node) if c.id in shown]
            out = self.summary(fv, node, shown[node.id], len(kids))
            out["children"] = [build(c) for c in kids]
            return out

        roots = [fv.hierarchy.nodes[r] for r in fv.visible_roots if r in shown]
        total = int(sum(len(shown[r.id]) for r in roots))
        return {"facet": fv.name, "version": version, "total": total, "depth": fv.hierarchy.depth(),
                "other_count": 0, "filter": flt.key, "roots": [build(r) for r in roots]}
