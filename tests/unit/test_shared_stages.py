"""The stages the batch run and the re-clustering job share: one base-cluster count, one finalise step."""

from __future__ import annotations

import numpy as np

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.facets import Facet
from clio_stream.llm.base import AskStats
from clio_stream.settings import ClioSettings
from clio_stream.stages.base_clusters import base_cluster_count, base_clusters
from clio_stream.stages.finalise import finalise
from clio_stream.stages.hierarchy import private_leaves, user_keys
from tests.unit.fakes import HashEmbedder, ScriptedLLM

FACET = Facet(name="Request", question="What is asked?", summary_criteria="The request.")


def test_base_cluster_count_is_the_settings_rule_kept_within_one_and_n() -> None:
    assert base_cluster_count(ClioSettings(), 200) == 20  # default n // 10
    assert base_cluster_count(ClioSettings(n_base_clusters=lambda n: n * 3), 7) == 7
    assert base_cluster_count(ClioSettings(n_base_clusters=lambda n: 0), 7) == 1
    k = base_cluster_count(ClioSettings(n_base_clusters=lambda n: n / 4), 10)  # a float rule: a whole count
    assert k == 2 and isinstance(k, int)


def test_base_clusters_use_that_count_and_give_unit_centroids() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels, centres = base_clusters(x, ClioSettings(n_base_clusters=lambda n: 4, seed=1))
    assert centres.shape == (4, 8) and set(labels.tolist()) == {0, 1, 2, 3}
    assert np.allclose(np.linalg.norm(centres, axis=1), 1.0, atol=1e-5)


def _world(n_old: int = 6, n_new: int = 4) -> tuple[list[Conversation], list[ConversationFacets], FacetHierarchy]:
    ids = [f"o{i}" for i in range(n_old)] + [f"n{i}" for i in range(n_new)]
    convs = [Conversation(id=cid, messages=[Message(role="user", content="hi")], user_id=f"u{i}",
                          timestamp=1000.0 + 60 * i) for i, cid in enumerate(ids)]
    values = [ConversationFacets(conversation_id=cid, values={"Request": FacetValue(facet="Request", value="x")})
              for cid in ids]
    leaves = {"a": ids[:n_old], "b": ids[n_old:]}
    nodes = {nid: ClusterNode(id=nid, facet="Request", name=f"Name {nid}", summary=f"Summary {nid}.", level=0,
                              conversation_ids=m, parent_id="top") for nid, m in leaves.items()}
    nodes["top"] = ClusterNode(id="top", facet="Request", name="Top", summary="Top.", level=1, children=["a", "b"],
                               conversation_ids=ids)
    return convs, values, FacetHierarchy(facet="Request", nodes=nodes, root_ids=["top"])


def test_finalise_annotates_hides_and_adds_trends_against_the_previous_version() -> None:
    convs, values, h = _world()
    previous = FacetHierarchy(facet="Request", nodes={"a": h.nodes["a"].model_copy()}, root_ids=["a"])
    settings = ClioSettings(min_cluster_users=5, min_cluster_conversations=5, trend_window_s=300, trend_windows=2,
                            user_id_hash_key="k")
    scores = finalise(h, convs, values, [FACET], ScriptedLLM(lambda *a: None), HashEmbedder(), settings, stats=AskStats(),
                      previous=previous)
    assert scores is None  # no audit asked for
    assert h.nodes["a"].distinct_users == 6 and not h.nodes["a"].hidden
    assert h.nodes["b"].hidden  # 4 users: under the minimum
    assert h.nodes["a"].trend.growth == 0 and h.nodes["b"].trend.new_members == 4
    assert h.nodes["top"].trend.new_members == 4 and sum(h.nodes["top"].trend.counts) > 0
    first = _world()[2]
    finalise(first, convs, values, [FACET], ScriptedLLM(lambda *a: None), HashEmbedder(), settings, stats=AskStats())
    assert first.nodes["a"].trend.growth is None  # a batch run / first version: no growth


def test_finalise_audits_and_reuses_the_previous_versions_ratings() -> None:
    convs, values, h = _world()
    settings = ClioSettings(min_cluster_users=1, min_cluster_conversations=1, audit_cluster_names=True,
                            audit_min_score=3, llm_max_retries=0)
    llm = ScriptedLLM(lambda name, v, rng: "2" if v["name"] == "Name b" else "4")
    scores = finalise(h, convs, values, [FACET], llm, HashEmbedder(), settings, stats=AskStats())
    assert scores == {"a": 4, "b": 2, "top": 4} and h.nodes["b"].hidden
    asked = len(llm.calls)
    again = _world()[2]
    assert finalise(again, convs, values, [FACET], llm, HashEmbedder(), settings, stats=AskStats(), previous=h) == scores
    assert len(llm.calls) == asked  # unchanged names and summaries: not asked again


def test_private_leaves_withholds_copies_and_leaves_the_originals() -> None:
    convs, _, h = _world()
    leaves = [h.nodes["a"], h.nodes["b"]]
    settings = ClioSettings(min_cluster_users=5, min_cluster_conversations=1, user_id_hash_key="k")
    out = private_leaves(leaves, user_keys(convs, settings), settings)
    assert [n.hidden for n in out] == [False, True] and not h.nodes["b"].hidden
