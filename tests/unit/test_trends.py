"""Trends: window counts by conversation time, growth from new members, emerging flags on visible nodes only."""

from __future__ import annotations

from clio_stream.privacy.audit import audit, known_audits
from clio_stream.settings import ClioSettings
from clio_stream.stages.trends import annotate_trends, window_counts, window_grid
from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from tests.unit.fakes import ScriptedLLM


def _tree(members: dict[str, list[str]], hidden: set[str] = frozenset()) -> FacetHierarchy:
    nodes = {nid: ClusterNode(id=nid, facet="Request", name=f"Name {nid}", summary=f"Summary {nid}.", level=0,
                              conversation_ids=m, hidden=nid in hidden) for nid, m in members.items()}
    return FacetHierarchy(facet="Request", nodes=nodes, root_ids=list(nodes))


def test_windows_are_aligned_and_end_with_the_newest_conversation() -> None:
    assert window_grid([], 10, 3) is None
    start = window_grid([5.0, 37.0], 10, 3)
    assert start == 10.0  # windows [10,20) [20,30) [30,40)
    assert window_counts([5.0, 12.0, 19.9, 30.0, 37.0], start, 10, 3) == [2, 0, 2]  # 5.0 is older than the grid


def test_growth_counts_new_members_and_the_fastest_visible_grower_is_emerging() -> None:
    h = _tree({"a": ["1", "2", "3", "4"], "b": ["5", "6", "n1", "n2"], "c": ["n3", "n4", "n5"], "d": ["n6", "n7"]},
              hidden={"c"})
    times = {c: float(i) for i, c in enumerate(["1", "2", "3", "4", "5", "6", "n1", "n2", "n3", "n4", "n5", "n6", "n7"])}
    emerging = annotate_trends(h, times, {"1", "2", "3", "4", "5", "6"}, window_s=5, windows=3, min_growth=0.5, top=5)
    assert h.nodes["a"].trend.growth == 0 and h.nodes["a"].trend.new_members == 0
    assert h.nodes["b"].trend.growth == 1.0 and h.nodes["b"].trend.new_members == 2
    assert h.nodes["d"].trend.growth == 2.0  # all new: new / max(1, old members)
    assert emerging == ["d", "b"]  # c grows fastest but is hidden: never ranked
    assert not h.nodes["c"].trend.emerging and not h.nodes["a"].trend.emerging
    assert sum(h.nodes["b"].trend.counts) == 4 and len(h.nodes["b"].trend.counts) == 3


def test_a_first_version_has_windows_but_no_growth() -> None:
    h = _tree({"a": ["1", "2"]})
    assert annotate_trends(h, {"1": 100.0, "2": None}, None, window_s=60, windows=4, min_growth=0, top=5) == []
    t = h.nodes["a"].trend
    assert t.growth is None and t.counts == [0, 0, 0, 1] and not t.emerging
    assert h.nodes["a"].public_fields()["trend"]["counts"] == [0, 0, 0, 1]


def test_the_auditor_is_asked_only_about_new_names() -> None:
    settings = ClioSettings(audit_cluster_names=True, audit_min_score=3, llm_max_retries=0)
    asked: list[str] = []

    def rate(name: str, values: dict, rng: object) -> str:
        asked.append(values["name"])
        return "2" if "Secret" in values["name"] else "4"

    llm = ScriptedLLM(rate)
    old = _tree({"a": ["1"], "b": ["2"]})
    audit(old, llm, settings=settings)
    assert sorted(asked) == ["Name a", "Name b"]
    asked.clear()
    new = _tree({"a": ["1"], "b": ["2"], "z": ["3"]})
    new.nodes["b"].name = "Secret renamed cluster"
    audit(new, llm, settings=settings, known=known_audits(old))
    assert sorted(asked) == ["Name z", "Secret renamed cluster"]  # "a" kept its text: its rating is reused
    assert new.nodes["a"].audit_score == 4 and not new.nodes["a"].hidden
    assert new.nodes["b"].hidden and new.nodes["b"].audit_score == 2
