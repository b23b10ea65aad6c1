"""The one rule of what may be shown of a result: which clusters, which conversations, which aggregates.

* A node is **visible** when it is reachable from a visible root through visible (not ``hidden``)
  nodes only. Everything else is withheld; the site never writes it and the API answers it like an
  unknown id.
* A conversation inside any withheld node of any facet is **withheld as a whole** (no value, no cluster,
  no messages in any facet), so a withheld cluster cannot be rebuilt from member lists elsewhere.
* A parent reports its withheld children's conversations only as one aggregate ``other_count``, and its
  users, numeric statistics and trend are aggregated over its visible children only (``public_nodes``).

The site writer, the API views, trends and deletion all call this module; nothing else decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, NumericStats, Trend
from clio_stream.privacy.users import user_identity


def hide_subtrees(hierarchy: FacetHierarchy) -> None:
    """Mark everything under a withheld node withheld too ("parent withheld")."""

    def hide_down(node: ClusterNode) -> None:
        for cid in node.children:
            child = hierarchy.nodes[cid]
            if not child.hidden:
                child.hidden, child.hidden_reason = True, "parent withheld"
            hide_down(child)

    for node in list(hierarchy.nodes.values()):
        if node.hidden:
            hide_down(node)


def describable(children: Sequence[ClusterNode]) -> list[ClusterNode]:
    """The children whose names may be shown to the LLM that names their parent (not withheld ones)."""
    return [c for c in children if not c.hidden]


def visible_node_ids(hierarchy: FacetHierarchy) -> set[str]:
    """Nodes reachable from a visible root through visible nodes only: all that the site and the API show."""
    visible: set[str] = set()
    stack = [r for r in hierarchy.root_ids if r in hierarchy.nodes and not hierarchy.nodes[r].hidden]
    while stack:
        nid = stack.pop()
        if nid in visible:
            continue
        visible.add(nid)
        stack.extend(c for c in hierarchy.nodes[nid].children
                     if c in hierarchy.nodes and not hierarchy.nodes[c].hidden)
    return visible


def withheld_nodes(hierarchy: FacetHierarchy, visible: set[str] | None = None) -> list[ClusterNode]:
    """Every node that is not visible (hidden, below a hidden node, or unreachable): its members are withheld."""
    shown = visible_node_ids(hierarchy) if visible is None else visible
    return [n for nid, n in hierarchy.nodes.items() if nid not in shown]


def _members(nodes: Sequence[ClusterNode]) -> int:
    return len({cid for n in nodes for cid in n.conversation_ids})


@dataclass
class FacetVisibility:
    """What may be shown of one facet's hierarchy, computed once (``FacetVisibility.of``)."""

    name: str
    hierarchy: FacetHierarchy
    visible: set[str]
    visible_roots: list[str]
    total: int  # conversations under the roots, withheld ones included
    other_count: int  # conversations under withheld roots: the one number published about them
    public: dict[str, ClusterNode]  # visible node id -> the node as anyone may see it (``public_nodes``)

    @classmethod
    def of(cls, name: str, hierarchy: FacetHierarchy, user_of: Mapping[str, str], **extra: Any) -> Self:
        """The visibility of ``hierarchy``; ``user_of``: conversation id -> ``user_identity``.

        ``extra``: the fields a subclass adds (the API's ``FacetView``).
        """
        visible = visible_node_ids(hierarchy)
        roots = [hierarchy.nodes[r] for r in hierarchy.root_ids if r in hierarchy.nodes]
        return cls(name=name, hierarchy=hierarchy, visible=visible,
                   visible_roots=[r.id for r in roots if r.id in visible], total=_members(roots),
                   other_count=_members([r for r in roots if r.id not in visible]),
                   public=public_nodes(hierarchy, user_of, visible), **extra)

    def node(self, node_id: str) -> ClusterNode | None:
        """The node if it is visible, else None (withheld and unknown look the same)."""
        return self.hierarchy.nodes.get(node_id) if node_id in self.visible else None

    def children(self, node: ClusterNode) -> list[ClusterNode]:
        """All children of ``node`` that exist, visible or not."""
        return [self.hierarchy.nodes[c] for c in node.children if c in self.hierarchy.nodes]

    def visible_children(self, node: ClusterNode) -> list[ClusterNode]:
        return [self.hierarchy.nodes[c] for c in node.children if c in self.visible]

    def withheld_count(self, node: ClusterNode) -> int:
        """Conversations of ``node``'s withheld children, counted once: its ``other_count``."""
        return _members([c for c in self.children(node) if c.id not in self.visible])

    def withheld_conversations(self) -> set[str]:
        return {cid for n in withheld_nodes(self.hierarchy, self.visible) for cid in n.conversation_ids}


@dataclass
class ResultVisibility:
    """What may be shown of a whole result: per facet, and the conversations withheld in any facet."""

    facets: dict[str, FacetVisibility]
    withheld: dict[str, set[str]]  # conversation id -> facets in which it sits in a withheld node

    def shows(self, conversation_id: str) -> bool:
        return conversation_id not in self.withheld


def user_identities(result: ClioResult) -> dict[str, str]:
    """Conversation id -> ``user_identity``: whom distinct-user aggregates count."""
    return {c.id: user_identity(c) for c in result.conversations}


def withheld_by_conversation(facets: Iterable[FacetVisibility]) -> dict[str, set[str]]:
    """Conversation id -> the facets in which it sits in a withheld node (withheld everywhere, then)."""
    withheld: dict[str, set[str]] = {}
    for fv in facets:
        for cid in fv.withheld_conversations():
            withheld.setdefault(cid, set()).add(fv.name)
    return withheld


def result_visibility(result: ClioResult) -> ResultVisibility:
    """The visibility of every hierarchy of ``result``."""
    users = user_identities(result)
    facets = {name: FacetVisibility.of(name, h, users) for name, h in result.hierarchies.items()}
    return ResultVisibility(facets=facets, withheld=withheld_by_conversation(facets.values()))


def public_nodes(hierarchy: FacetHierarchy, user_of: Mapping[str, str],
                 visible: set[str] | None = None) -> dict[str, ClusterNode]:
    """Every visible node as anyone may see it, by id; the only source of what the site and the API show.

    A parent's distinct users, numeric statistics and trend would otherwise count the members of its
    withheld children, and the parent minus its visible children would give away exactly what the
    minimums withhold (one user's scores, one user's active hours). So a parent with anything withheld
    below it is shown with those aggregated over its visible children only (as the Clio paper aggregates
    only over clusters that pass the thresholds); it is never flagged emerging, since that ranking counted
    the withheld members. Its ``size`` stays the whole count: the withheld part is shown as ``other_count``
    anyway, the one number published about withheld clusters. ``user_of``: conversation id ->
    ``user_identity``. Leaves and parents with nothing withheld below them are returned as they are.
    """
    visible = visible_node_ids(hierarchy) if visible is None else visible
    out: dict[str, ClusterNode] = {}
    counted: dict[str, list[str]] = {}  # node id -> the members its public aggregates are over

    def visit(nid: str) -> None:
        node = hierarchy.nodes[nid]
        kids = [c for c in node.children if c in hierarchy.nodes]
        shown = [c for c in kids if c in visible]
        for c in shown:
            visit(c)
        if not kids or (len(shown) == len(kids) and all(out[c] is hierarchy.nodes[c] for c in shown)):
            out[nid], counted[nid] = node, list(node.conversation_ids)
            return
        members = [cid for c in shown for cid in counted[c]]
        counted[nid] = members
        out[nid] = node.model_copy(update={
            "distinct_users": len({user_of[c] for c in members if c in user_of}),
            "numeric": {name: _sum_numeric(name, [out[c].numeric[name] for c in shown if name in out[c].numeric],
                                           stats.min_value, len(stats.histogram))
                        for name, stats in node.numeric.items()},
            "trend": None if node.trend is None else _sum_trend(node.trend, [out[c].trend for c in shown],
                                                                len(members)),
        })

    for root in hierarchy.root_ids:
        if root in visible:
            visit(root)
    return out


def _sum_numeric(facet: str, parts: Sequence[NumericStats], min_value: int, bins: int) -> NumericStats:
    hist = [sum(p.histogram[i] for p in parts if i < len(p.histogram)) for i in range(bins)]
    count = sum(hist)
    mean = sum((min_value + i) * h for i, h in enumerate(hist)) / count if count else None
    return NumericStats(facet=facet, count=count, mean=mean, min_value=min_value, histogram=hist)


def _sum_trend(own: Trend, parts: Sequence[Trend | None], members: int) -> Trend:
    counts = [sum(p.counts[i] for p in parts if p is not None and i < len(p.counts)) for i in range(len(own.counts))]
    new = sum(p.new_members for p in parts if p is not None)
    growth = None if own.growth is None else new / max(1, members - new)
    return Trend(window_s=own.window_s, start=own.start, counts=counts, new_members=new, growth=growth)


# --------------------------------------------------------------------------- slices (filters, breakdowns)


@dataclass(frozen=True)
class Minimums:
    """The privacy minimums every shown group of conversations must meet: distinct users and conversations."""

    conversations: int
    users: int

    @classmethod
    def of(cls, settings: Any, published: Mapping[str, Any] | None = None) -> Minimums:
        """The stricter of the settings' minimums and those a result was published with."""
        published = published or {}
        return cls(max(int(settings.min_cluster_conversations), int(published.get("min_cluster_conversations") or 1)),
                   max(int(settings.min_cluster_users), int(published.get("min_cluster_users") or 1)))

    def met_by(self, users: Any) -> bool:
        """Whether a group whose members' user codes are ``users`` (one per conversation) may be shown."""
        import numpy as np

        return len(users) >= self.conversations and np.unique(users).size >= self.users


def shown_slice(members: Any, match: Any, subfilters: Sequence[Any], users: Any, minimums: Minimums,
                cells: Sequence[Any] = ()) -> Any | None:
    """The rows of a visible leaf shown under a filter, or None when the leaf must be withheld under it.

    ``members``: row numbers of the leaf's conversations (those withheld in any facet already left out);
    ``match``: a boolean per row, the filter; ``subfilters``: the same for every filter made by dropping some of
    its conditions (the empty filter, all True, included); ``users``: a user code per row.

    A slice is shown when it meets the minimums *and* so does what each sub-filter shows beyond it: else the
    difference of two answers (unfiltered minus filtered, or one condition more) would isolate fewer users than
    the minimums allow (complementary suppression, as statistical agencies publish tables). ``cells``: masks of
    the cells of the filter's ordered conditions (one value, one time period, under its other conditions); each
    must be empty or meet the minimums in the leaf, since two range answers differ by a union of cells.
    """
    inside = match[members]
    rows = members[inside]
    if not minimums.met_by(users[rows]):
        return None
    for sub in subfilters:
        rest = members[sub[members] & ~inside]
        if len(rest) and not minimums.met_by(users[rest]):
            return None
    for cell in cells:
        group = members[cell[members]]
        if len(group) and not minimums.met_by(users[group]):
            return None
    return rows


def filtered_rows(fv: FacetVisibility, leaf_rows: Mapping[str, Any], match: Any, subfilters: Sequence[Any],
                  users: Any, minimums: Minimums, cells: Sequence[Any] = ()) -> dict[str, Any]:
    """Visible node id -> rows it shows under a filter; nodes not in the answer are withheld under it.

    Leaves follow ``shown_slice``; a parent is the union of its shown children, so under a filter nothing is
    ever counted that no shown leaf holds (a parent reports no withheld remainder, which a filter could cut
    down to one user).
    """
    import numpy as np

    out: dict[str, Any] = {}

    def visit(nid: str) -> Any | None:
        node = fv.hierarchy.nodes[nid]
        kids = fv.visible_children(node)
        if not node.children:
            rows = shown_slice(leaf_rows.get(nid, np.zeros(0, dtype=np.int64)), match, subfilters, users, minimums,
                               cells)
        else:
            parts = [r for r in (visit(c.id) for c in kids) if r is not None]
            rows = np.concatenate(parts) if parts else None
        if rows is not None:
            out[nid] = rows
        return rows

    for root in fv.visible_roots:
        visit(root)
    return out


def shown_buckets(labels: Any, users: Any, minimums: Minimums) -> tuple[dict[str, int], int]:
    """A distribution safe to show: bucket label -> conversations, and one aggregate "other" count.

    Buckets under the minimums go to "other"; when "other" is then itself non-empty and under the minimums,
    the smallest shown buckets join it until it meets them (else it could be differenced out of the total).
    ``labels``: one bucket label per conversation (None: no value), ``users``: one user code per conversation.
    """
    import numpy as np

    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault("" if label is None else str(label), []).append(i)
    shown = {k: v for k, v in groups.items() if k and minimums.met_by(users[v])}
    other = [i for k, v in groups.items() if k not in shown for i in v]
    while other and not minimums.met_by(users[other]) and shown:
        smallest = min(shown, key=lambda k: (len(shown[k]), k))
        other += shown.pop(smallest)
    if other and not minimums.met_by(users[other]) and not shown:
        return {}, 0  # nothing can be shown of this distribution
    order = sorted(shown, key=lambda k: (-len(shown[k]), k))
    return {k: len(shown[k]) for k in order}, len(other) if np.size(other) else 0
