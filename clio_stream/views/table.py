"""A published version's conversations as columns (numpy), so filters and breakdowns are array operations.

Built once per version (the API keeps it with the version's view): one row per conversation of the result,
with its user code (for distinct-user minimums), time, every facet's value and numeric score, declared metadata,
and whether it is withheld (in a withheld cluster of any facet: then it is in no slice at all).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from clio_stream.domain.clusters import ClioResult
from clio_stream.privacy.users import user_identity


@dataclass
class ConversationTable:
    """Columns over the conversations of one result (row ``i`` is ``ids[i]``)."""

    ids: list[str]
    row_of: dict[str, int]
    users: np.ndarray  # int user code per row
    times: np.ndarray  # float seconds, NaN when unknown
    withheld: np.ndarray  # bool per row
    values: dict[str, np.ndarray]  # facet -> object array of the value (lower case), None when missing
    labels: dict[str, np.ndarray]  # facet -> object array of the value as written (breakdown labels)
    numeric: dict[str, np.ndarray]  # numeric facet -> float array, NaN when missing
    metadata: dict[str, np.ndarray]  # declared key -> object array of the value, None when absent

    @property
    def n(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, result: ClioResult, withheld: Iterable[str], metadata_keys: Iterable[str]) -> ConversationTable:
        convs = list({c.id: c for c in result.conversations}.values())
        ids = [c.id for c in convs]
        row_of = {cid: i for i, cid in enumerate(ids)}
        _, users = np.unique(np.array([user_identity(c) for c in convs], dtype=object).astype(str),
                             return_inverse=True)
        times = np.array([np.nan if c.timestamp is None else float(c.timestamp) for c in convs], dtype=np.float64)
        hidden = np.zeros(len(ids), dtype=bool)
        for cid in withheld:
            if cid in row_of:
                hidden[row_of[cid]] = True
        names = [str(f.get("name")) for f in result.facets]
        numeric_names = {str(f.get("name")) for f in result.facets if f.get("numeric")}
        labels = {name: np.full(len(ids), None, dtype=object) for name in names}
        numeric = {name: np.full(len(ids), np.nan) for name in numeric_names}
        for cf in result.facet_values:
            row = row_of.get(cf.conversation_id)
            if row is None:
                continue
            for name, fv in cf.values.items():
                if name in labels and fv.value is not None:
                    labels[name][row] = fv.value.strip()
                if name in numeric and fv.numeric is not None:
                    numeric[name][row] = float(fv.numeric)
        values = {name: np.array([None if v is None else v.lower() for v in col], dtype=object)
                  for name, col in labels.items()}
        keys = list(dict.fromkeys(metadata_keys))
        metadata = {k: np.array([None if (v := c.metadata.get(k)) is None else str(v) for c in convs], dtype=object)
                    for k in keys}
        return cls(ids=ids, row_of=row_of, users=users.astype(np.int64), times=times, withheld=hidden, values=values,
                   labels=labels, numeric=numeric, metadata=metadata)

    def rows(self, conversation_ids: Iterable[str]) -> np.ndarray:
        """Row numbers of ``conversation_ids`` that are in the table and not withheld, each once."""
        found = {self.row_of[c] for c in conversation_ids if c in self.row_of}
        rows = np.fromiter(found, dtype=np.int64, count=len(found))
        rows.sort()
        return rows[~self.withheld[rows]]

    def node_rows(self, nodes: Mapping[str, Iterable[str]]) -> dict[str, np.ndarray]:
        """Node id -> its rows (``rows`` of its conversation ids)."""
        return {nid: self.rows(members) for nid, members in nodes.items()}
