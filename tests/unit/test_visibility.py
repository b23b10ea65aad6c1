"""The one visibility rule (clio_stream.privacy.visibility) and its readers: the site writer and the API view."""

from __future__ import annotations

from pathlib import Path

from api.views import build_view
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy
from clio_stream.domain.conversation import Conversation, Message
from clio_stream.privacy.visibility import FacetVisibility, result_visibility, user_identities, visible_node_ids
from clio_stream.site import read_gz_json, write_site
from clio_stream.storage.published import PublishedVersion

F = "Request"


def _node(nid: str, level: int, members: list[str], *, children: list[str] = (), parent: str | None = None,
          hidden: bool = False) -> ClusterNode:
    return ClusterNode(id=nid, facet=F, name=nid, summary="", level=level, children=list(children), parent_id=parent,
                       conversation_ids=members, hidden=hidden)


def _result() -> ClioResult:
    """root -> (shown, withheld -> below); 'orphan' is in no root's tree; 'gone' is a withheld root."""
    nodes = {
        "root": _node("root", 2, ["a", "b", "c", "d"], children=["shown", "withheld"]),
        "shown": _node("shown", 1, ["a", "b"], children=["leaf"], parent="root"),
        "leaf": _node("leaf", 0, ["a", "b"], parent="shown"),
        "withheld": _node("withheld", 1, ["c", "d"], children=["below"], parent="root", hidden=True),
        "below": _node("below", 0, ["c", "d"], parent="withheld"),  # not marked: hidden by its parent
        "orphan": _node("orphan", 0, ["e"]),
        "gone": _node("gone", 1, ["f", "g"], hidden=True),
    }
    convs = [Conversation(id=c, messages=[Message(role="user", content=c)], user_id=f"u{c}") for c in "abcdefg"]
    return ClioResult(facets=[{"name": F, "question": "?"}], conversations=convs, facet_values=[],
                      hierarchies={F: FacetHierarchy(facet=F, nodes=nodes, root_ids=["root", "gone"])})


def test_visible_means_reachable_through_visible_nodes_only() -> None:
    h = _result().hierarchies[F]
    assert visible_node_ids(h) == {"root", "shown", "leaf"}


def test_facet_visibility_counts_and_withholds() -> None:
    result = _result()
    fv = FacetVisibility.of(F, result.hierarchies[F], user_identities(result))
    root = result.hierarchies[F].nodes["root"]
    assert fv.visible_roots == ["root"] and fv.total == 6 and fv.other_count == 2
    assert [c.id for c in fv.visible_children(root)] == ["shown"] and fv.withheld_count(root) == 2
    assert fv.node("below") is None and fv.node("orphan") is None and fv.node("leaf") is not None
    # below a withheld node (marked or not), unreachable, or in a withheld root: withheld as a whole
    assert fv.withheld_conversations() == {"c", "d", "e", "f", "g"}
    assert fv.public["root"].distinct_users == 2  # aggregated over the visible child only


def test_site_and_api_show_exactly_the_same(tmp_path: Path) -> None:
    result = _result()
    rule = result_visibility(result)
    view = build_view(PublishedVersion("1", tmp_path, result, {}, None))
    assert view.withheld == rule.withheld and set(rule.withheld) == {"c", "d", "e", "f", "g"}
    assert view.facet_views[F].visible == rule.facets[F].visible
    site = write_site(result, tmp_path / "site", chunk_size=10)
    manifest = read_gz_json(site / "data" / "manifest.json.gz")
    assert manifest["withheld_conversations"] == 5 and manifest["shown_conversations"] == 2
    facet = manifest["facets"][0]
    assert [r["id"] for r in facet["roots"]] == ["root"] and facet["other_count"] == 2 and facet["total"] == 6
