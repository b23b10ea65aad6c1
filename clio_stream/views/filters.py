"""Filters over a published version: ``metadata.<key>=<value>``, ``<facet>=<value>``, ``<numeric facet> >= n``
and a time range ``from``/``to``, parsed from query parameters into typed conditions and evaluated as masks.

Accepted forms (one query parameter each, ANDed):

* ``metadata.product=chat``: a declared metadata key the caller's role may see, exact value;
* ``Language=Spanish``: a facet without a hierarchy, its value (case-insensitive);
* ``Task=<cluster id>``: a hierarchy facet, one of its *visible* clusters (raw values of hierarchy facets are
  individual texts, never matched);
* ``Concerning>=4`` (also ``>``, ``<=``, ``<``, ``=``): a numeric facet, integers;
* ``from=…&to=…``: epoch seconds or ISO 8601, widened to whole cells of ``filter_time_cell_s`` (a day by
  default).

Ordered conditions (numeric comparisons, time ranges) come with *cells*: the numeric facet's values, the time
range's whole ``filter_time_cell_s`` periods. Two range answers differ by a union of cells, so a range filter is
answered for a cluster only when each cell of it is empty or meets the minimums (``Filter.cell_masks``).

In a URL ``Concerning>=4`` arrives as the parameter ``Concerning>`` with value ``4``, or percent-encoded as a
parameter name without a value; both are read.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from clio_stream.domain.timestamps import parse_timestamp
from clio_stream.views.table import ConversationTable

MAX_CONDITIONS = 4
RESERVED = frozenset({"limit", "cursor", "q", "format", "members", "k", "key", "from", "to", "facet", "points"})
_CONDITION = re.compile(r"^([^<>=!]+?)\s*(>=|<=|>|<|=)\s*(.*)$", re.DOTALL)

Kind = Literal["metadata", "value", "cluster", "numeric", "time"]


class FilterError(ValueError):
    """A filter the API answers with 400 (unknown field, bad number, a key the role may not see...)."""


@dataclass(frozen=True)
class Condition:
    """One condition: rows where ``field`` matches; numeric and time ones as a half-open range [low, high)."""

    kind: Kind
    field: str
    text: str  # as the caller wrote it (shown back)
    value: str | None = None  # metadata / value / cluster id
    low: float = -math.inf
    high: float = math.inf
    cell: float = 1.0  # width of one cell of an ordered condition (time: seconds)


@dataclass(frozen=True)
class Filter:
    """Conditions ANDed; the empty filter matches everything."""

    conditions: tuple[Condition, ...] = ()
    members: Mapping[str, frozenset[str]] = field(default_factory=dict, compare=False)  # cluster id -> member ids

    def __bool__(self) -> bool:
        return bool(self.conditions)

    @property
    def key(self) -> str:
        """Canonical text of the filter (a cache key, and what answers echo back)."""
        return "&".join(sorted(c.text for c in self.conditions))

    def mask(self, table: ConversationTable, conditions: Sequence[Condition] | None = None) -> np.ndarray:
        out = np.ones(table.n, dtype=bool)
        for c in self.conditions if conditions is None else conditions:
            out &= self._one(table, c)
        return out

    def cell_masks(self, table: ConversationTable) -> list[np.ndarray]:
        """For each ordered condition, each of its cells (one value, one time period) under the other conditions.

        Whatever two range answers on one field subtract to is a union of these cells, so when each is empty or
        safe in a cluster, no difference of answers can isolate fewer users than the minimums.
        """
        out: list[np.ndarray] = []
        for c in self.conditions:
            if c.kind not in ("numeric", "time"):
                continue
            rest = self.mask(table, [o for o in self.conditions if o is not c])
            col = table.times if c.kind == "time" else table.numeric[c.field]
            with np.errstate(invalid="ignore"):
                cells = np.floor(col / c.cell) if c.kind == "time" else col
            for value in np.unique(cells[~np.isnan(cells)]):
                out.append(rest & (cells == value))
        return out

    def subfilter_masks(self, table: ConversationTable) -> list[np.ndarray]:
        """Masks of every filter made by dropping one or more conditions (the empty filter included)."""
        conds = self.conditions
        return [self.mask(table, subset) for size in range(len(conds))
                for subset in itertools.combinations(conds, size)]

    def _one(self, table: ConversationTable, c: Condition) -> np.ndarray:
        if c.kind == "metadata":
            col = table.metadata.get(c.field)
            return np.zeros(table.n, dtype=bool) if col is None else (col == c.value)
        if c.kind == "value":
            return table.values[c.field] == c.value
        if c.kind == "cluster":
            rows = [table.row_of[i] for i in self.members.get(c.value or "", ()) if i in table.row_of]
            out = np.zeros(table.n, dtype=bool)
            out[rows] = True
            return out
        col = table.times if c.kind == "time" else table.numeric[c.field]
        with np.errstate(invalid="ignore"):
            return (col >= c.low) & (col < c.high)


def _pairs(params: Iterable[tuple[str, str]]) -> list[str]:
    """Query parameters as condition texts: ``("Concerning>", "4")`` and ``("Concerning>=4", "")`` alike."""
    out = []
    for key, value in params:
        if key in RESERVED:
            continue
        if value == "" and _CONDITION.match(key):
            out.append(key)
        elif key.endswith((">", "<")):
            out.append(f"{key}={value}")
        else:
            out.append(f"{key}={value}")
    return out


def _integer(text: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise FilterError(f"{where}: {text!r} is not an integer") from None


def parse_filter(
    params: Iterable[tuple[str, str]],
    *,
    facets: Sequence[Mapping[str, object]],
    visible_clusters: Mapping[str, Mapping[str, Iterable[str]]],
    metadata_keys: Sequence[str],
    window_s: float,
    time_from: str | None = None,
    time_to: str | None = None,
) -> Filter:
    """The filter of a request's query parameters; ``FilterError`` with a reason for anything not allowed.

    ``visible_clusters``: hierarchy facet -> visible cluster id -> its member ids; ``metadata_keys``: the
    declared keys the caller's role may see.
    """
    by_name = {str(f.get("name")): f for f in facets}
    conditions: list[Condition] = []
    members: dict[str, frozenset[str]] = {}
    for text in _pairs(params):
        m = _CONDITION.match(text)
        if m is None:
            raise FilterError(f"{text!r} is not a filter (use name=value, name>=n, metadata.key=value)")
        name, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        shown = f"{name}{op}{value}"
        if name.startswith("metadata."):
            key = name.removeprefix("metadata.")
            if key not in metadata_keys:
                raise FilterError(f"metadata key {key!r} is not declared or not visible to your role")
            if op != "=":
                raise FilterError(f"{shown!r}: metadata filters are exact values (=)")
            conditions.append(Condition("metadata", key, shown, value=value))
        elif name in by_name:
            facet = by_name[name]
            if facet.get("numeric"):
                n = _integer(value, shown)
                low, high = {"=": (n, n + 1), ">=": (n, math.inf), ">": (n + 1, math.inf),
                             "<=": (-math.inf, n + 1), "<": (-math.inf, n)}[op]
                conditions.append(Condition("numeric", name, shown, low=low, high=high))
            elif op != "=":
                raise FilterError(f"{shown!r}: {name} is not numeric; use {name}=value")
            elif name in visible_clusters:
                if value not in visible_clusters[name]:
                    raise FilterError(f"{shown!r}: {name} is filtered by one of its visible cluster ids")
                members[value] = frozenset(visible_clusters[name][value])
                conditions.append(Condition("cluster", name, shown, value=value))
            else:
                conditions.append(Condition("value", name, shown, value=value.lower()))
        else:
            raise FilterError(f"unknown filter field {name!r} (a facet, or metadata.<declared key>)")
    if time_from is not None or time_to is not None:
        conditions.append(_time_condition(time_from, time_to, window_s))
    if len(conditions) > MAX_CONDITIONS:
        raise FilterError(f"at most {MAX_CONDITIONS} filter conditions (from/to count as one)")
    return Filter(tuple(conditions), members)


def _time_condition(time_from: str | None, time_to: str | None, window_s: float) -> Condition:
    def when(text: str | None, name: str) -> float | None:
        if text is None or text == "":
            return None
        try:
            return parse_timestamp(float(text) if re.fullmatch(r"-?\d+(\.\d+)?", text.strip()) else text)
        except (ValueError, TypeError) as exc:
            raise FilterError(f"{name}: {exc}") from None

    low, high = when(time_from, "from"), when(time_to, "to")
    low = -math.inf if low is None else math.floor(low / window_s) * window_s
    high = math.inf if high is None else math.ceil(high / window_s) * window_s
    if high <= low:
        raise FilterError("the time range is empty: 'to' must be after 'from'")
    shown = "&".join(p for p in (f"from={low:.0f}" if math.isfinite(low) else "",
                                 f"to={high:.0f}" if math.isfinite(high) else "") if p)
    return Condition("time", "time", shown, low=low, high=high, cell=window_s)
