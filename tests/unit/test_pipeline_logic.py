"""Pipeline logic with scripted models: shapes, invariants, fallbacks, checkpoints, privacy."""

import pytest

from clio_stream.domain.facets import REQUEST, Facet, generic_summary_facets, main_facets
from clio_stream.pipeline import run_clio
from clio_stream.settings import ClioSettings

from .fakes import HashEmbedder, ScriptedLLM, garbage_script, sensible_script

TOPICS = ["cooking", "python", "travel", "poetry", "taxes", "gardening", "chess", "fitness"]


def data(n=80):
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        out.append({"id": f"c{i}", "user_id": f"u{i % 20}",
                    "conversation": [{"role": "user", "content": f"{topic} question number {i}"},
                                     {"role": "assistant", "content": f"an answer about {topic}"}]})
    return out


def settings(**kw):
    base = dict(show_progress=False, n_name_description_samples_per_cluster=2, n_categorize_samples=2,
                n_rename_samples=2, llm_max_retries=1)
    return ClioSettings(**{**base, **kw})


def check_tree(h):
    for node in h.nodes.values():
        if node.children:
            kids = [h.nodes[c] for c in node.children]
            assert sorted(node.conversation_ids) == sorted(cid for k in kids for cid in k.conversation_ids)
            assert all(k.parent_id == node.id and k.level == node.level - 1 for k in kids)
    leaves = h.leaves()
    all_ids = [cid for leaf in leaves for cid in leaf.conversation_ids]
    assert len(all_ids) == len(set(all_ids))  # each conversation in exactly one leaf
    roots = [h.nodes[r] for r in h.root_ids]
    assert sorted(cid for r in roots for cid in r.conversation_ids) == sorted(all_ids)


@pytest.mark.parametrize("script", [sensible_script, garbage_script])
def test_hierarchy_invariants_even_with_a_broken_model(script, tmp_path):
    llm = ScriptedLLM(script)
    res = run_clio(main_facets, llm, HashEmbedder(), data(), output_dir=None, settings=settings(min_top_level_size=2))
    assert set(res.hierarchies) == {"Request", "Task"}
    for h in res.hierarchies.values():
        check_tree(h)
        assert len(h.root_ids) <= 2 and h.depth() >= 2
    # Concerning is numeric: parsed to ints in range, or explicitly missing.
    for fv in res.facet_values:
        v = fv.values["Concerning"]
        assert v.numeric is None or 1 <= v.numeric <= 5
    if script is garbage_script:
        assert res.stats.unparseable_facet_values["Concerning"] == 80
        assert res.stats.llm.unparseable > 0


def test_numeric_stats_and_privacy_minimums():
    res = run_clio(main_facets, ScriptedLLM(sensible_script), HashEmbedder(), data(), output_dir=None,
                   settings=settings(min_cluster_users=4, min_cluster_conversations=6))
    h = res.hierarchies["Request"]
    for node in h.nodes.values():
        stats = node.numeric["Concerning"]
        assert stats.count == node.size and 1 <= stats.mean <= 5 and sum(stats.histogram) == node.size
        assert node.hidden == (node.size < 6 or node.distinct_users < 4 or
                               (node.parent_id is not None and h.nodes[node.parent_id].hidden))


def test_checkpoints_resume_and_invalidate(tmp_path):
    llm = ScriptedLLM(sensible_script)
    run_clio(main_facets, llm, HashEmbedder(), data(40), output_dir=tmp_path, settings=settings(min_top_level_size=2), write_site=False)
    first = len(llm.calls)
    llm.calls.clear()
    res = run_clio(main_facets, llm, HashEmbedder(), data(40), output_dir=tmp_path, settings=settings(min_top_level_size=2),
                   write_site=False)
    assert llm.calls == [] and "facets" in res.stats.checkpoint_hits
    # A hierarchy-only setting reuses facets and base clusters but rebuilds the hierarchy.
    run_clio(main_facets, llm, HashEmbedder(), data(40), output_dir=tmp_path,
             settings=settings(min_top_level_size=2, n_rename_samples=1), write_site=False)
    assert llm.calls and not any(c.startswith("facet") or c == "name_cluster" for c in llm.calls)
    assert first > len(llm.calls)
    assert (tmp_path / "result.json").exists()


def test_custom_and_generic_facets():
    custom = Facet(name="Mood", question="What is the user's mood?", prefill="The user feels",
                   summary_criteria="Name the mood.")
    res = run_clio([custom], ScriptedLLM(sensible_script), HashEmbedder(), data(30), output_dir=None,
                   settings=settings())
    assert all(fv.values["Mood"].value.startswith("The user feels") for fv in res.facet_values)
    texts = [f"{TOPICS[i % 8]} note {i}" for i in range(30)]
    res = run_clio(generic_summary_facets, ScriptedLLM(sensible_script), HashEmbedder(), texts, output_dir=None,
                   settings=settings())
    assert "Summary" in res.hierarchies and len(res.conversations) == 30


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="record 1"):
        run_clio(main_facets, ScriptedLLM(sensible_script), HashEmbedder(), [data(1)[0], {"id": "x"}],
                 output_dir=None, settings=settings())
    with pytest.raises(ValueError, match="needs data"):
        run_clio(main_facets, ScriptedLLM(sensible_script), HashEmbedder(), None)


def test_facet_waves_cover_every_prompt_once():
    from clio_stream.stages.extract import extract_facets, waves
    from clio_stream.stages.prepare import prepare_conversations

    assert waves(10, 4, 4) == [(0, 4), (4, 8), (8, 10)]
    assert waves(10, 1, 4) == [(0, 10)] and waves(0, 4, 4) == []
    convs, _ = prepare_conversations(data(10))
    llm = ScriptedLLM(sensible_script)
    out = extract_facets(convs, main_facets, llm, sampling={}, retries=0, seed=0, batch_size=100, prefix_group=3)
    # Language is computed: three prompts per conversation, not four.
    assert len(llm.calls) == 30 and [o.conversation_id for o in out] == [c.id for c in convs]
    # Every answer reached its own conversation (the waves did not shuffle prompts and answers).
    for i, o in enumerate(out):
        assert f"help with {TOPICS[i % len(TOPICS)]} things" in o.values["Request"].value, (i, o.values["Request"])
    assert out[0].values["Request"].value.startswith(REQUEST.prefill)
    assert all(o.values["Language"].value == "English" for o in out)


def test_a_withheld_cluster_never_feeds_the_hierarchy_prompts():
    """run_clio builds the hierarchy over privacy-checked leaves: one user's cluster is named, never passed up."""
    asked = []

    def script(name, values, rng):
        asked.append((name, "\n".join(map(str, values.values()))))
        return sensible_script(name, values, rng)

    rows = data(48) + [{"id": f"r{i}", "user_id": "loner", "conversation": [
        {"role": "user", "content": f"zebra question {i}"}, {"role": "assistant", "content": "ok"}]} for i in range(4)]
    res = run_clio([REQUEST], ScriptedLLM(script), HashEmbedder(), rows, output_dir=None,
                   settings=settings(min_top_level_size=2, min_cluster_users=2, min_cluster_conversations=2,
                                     n_base_clusters=lambda n: 9))
    zebra = [leaf for leaf in res.hierarchies["Request"].leaves() if "r0" in leaf.conversation_ids]
    assert len(zebra) == 1 and zebra[0].hidden and sorted(zebra[0].conversation_ids) == ["r0", "r1", "r2", "r3"]
    above = [text for name, text in asked if name in ("propose_parents", "parent_name", "parent_summary")]
    assert above and not any("zebra" in text for text in above)


def test_a_batch_run_asks_in_the_layout_the_settings_name() -> None:
    llm = ScriptedLLM(sensible_script)
    res = run_clio(main_facets, llm, HashEmbedder(), data(20), output_dir=None,
                   settings=settings(min_top_level_size=2, facet_layout="shared"))
    facet_calls = [c for c in llm.calls if c.startswith("facet")]
    assert facet_calls and set(facet_calls) == {"facet_shared"}
    assert all(fv.values["Request"].value for fv in res.facet_values)
