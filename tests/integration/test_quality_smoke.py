"""benchmarks/quality.py on a tiny sample with the real engine and MiniLM: every figure is computed and sane.

About 40 records (5 banking77 intents, 3 arena-hard subcategories, a few non-English
arena prompts); MT-Bench is left out because its long conversations make CPU prefill
the slowest part. One naming and one assignment sample per cluster keep the LLM work
to roughly 100 prompts.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def quality(vllm_engine, minilm):
    pytest.importorskip("lingua", reason="lingua-language-detector is a test extra")
    from benchmarks.quality import Config, FacetCache, run
    from clio_stream.settings import ClioSettings

    config = Config(data_root=DATA, banking77_per_label=4, banking77_labels=5, mt_bench_per_label=0,
                    arena_per_label=5, multilingual=4, sanity=4, bootstrap_fraction=0.3)
    settings = ClioSettings(show_progress=False, n_name_description_samples_per_cluster=1, n_categorize_samples=1)
    return run(config, vllm_engine, minilm, settings, FacetCache(None))


def filler_script(name, values, rng):
    """The failure the fidelity metrics exist to catch: every facet value and name the same filler."""
    from tests.unit.fakes import sensible_script

    if name == "facet" and "scale of 1 to 5" not in values["question"]:
        return " provide accurate and unbiased information."
    if name in ("cluster_name", "cluster_summary"):
        return "Provide accurate and unbiased information"
    return sensible_script(name, values, rng)


@pytest.fixture(scope="module")
def filler(minilm):
    """The same run with a model that only writes filler (scripted: no engine needed)."""
    from benchmarks.quality import Config, FacetCache, run
    from clio_stream.settings import ClioSettings
    from tests.unit.fakes import ScriptedLLM

    config = Config(data_root=DATA, banking77_per_label=4, banking77_labels=5, mt_bench_per_label=0,
                    arena_per_label=0, multilingual=0, sanity=4, bootstrap_fraction=0.3, top_level=False,
                    stability=False)
    settings = ClioSettings(show_progress=False, n_name_description_samples_per_cluster=1)
    return run(config, ScriptedLLM(filler_script), minilm, settings, FacetCache(None))


def test_fidelity_is_computed_and_filler_scores_low(quality, filler):
    real, fake = quality["fidelity"]["banking77"]["embedded"], filler["fidelity"]["banking77"]["embedded"]
    assert _unit(real["recall_at_1"]) and _unit(real["mrr"]) and real["candidates"] == quality["clustering"][
        "banking77"]["n"]
    # One filler vector for every conversation ranks them in one fixed order: exactly chance.
    assert fake["recall_at_1"] <= fake["chance_recall_at_1"] + 1e-9 and fake["mrr"] <= fake["chance_mrr"] + 1e-9
    # The real model's values must beat filler, or the facet prompts have regressed to it.
    assert real["mrr"] > fake["mrr"] + 0.1
    names, filler_names = quality["name_fidelity"]["banking77"], filler["name_fidelity"]["banking77"]
    assert _unit(names["name_and_summary"]["recall_at_1"]) and len(names["clusters"]) == names["k"]
    fake_names = filler_names["name_and_summary"]
    assert fake_names["recall_at_1"] <= fake_names["chance_recall_at_1"] + 1e-9  # identical names: chance
    assert names["published"]["recall_at_1"] >= names["name_and_summary"]["recall_at_1"]


def _unit(x: float) -> bool:
    return 0.0 <= x <= 1.0


def test_clustering_scores_online_against_batch_on_the_same_vectors(quality):
    assert set(quality["clustering"]) == {"banking77", "arena_hard", "multilingual"}
    for name, res in quality["clustering"].items():
        assert res["views"], name
        for view, v in res["views"].items():
            for kind in ("batch", "online"):
                s = v[kind]
                assert _unit(s["nmi"]) and _unit(s["acc"]) and -1.0 <= s["ari"] <= 1.0, (name, view, s)
            assert v["n"] == res["n"]  # both clusterings saw the same vectors
            if v["batch"]["nmi"] > 0:
                assert v["nmi_ratio"] == pytest.approx(v["online"]["nmi"] / v["batch"]["nmi"])
            assert _unit(v["online_vs_batch_nmi"])
    # Five distinct banking intents are easy for MiniLM on the raw text: a wiring error would show here.
    assert quality["clustering"]["banking77"]["views"]["raw k=labels"]["batch"]["nmi"] > 0.5


def test_top_level_uses_the_assignment_step(quality):
    t = quality["top_level"]["arena_hard"]
    assert t["categories"] == ["Coding", "Creative writing", "Math"]
    assert t["llm_prompts"] > 0
    for key in ("llm_accuracy", "embedding_accuracy", "ceiling_accuracy", "chance_accuracy"):
        assert _unit(t[key]), key
    assert t["llm_accuracy"] <= t["ceiling_accuracy"] + 1e-9  # no choice beats the majority per cluster


def test_stability_survival(quality):
    st = quality["stability"]
    for label in ("+5%", "+20%"):
        assert st[label]["id_survival"] is not None and _unit(st[label]["id_survival"])
        assert st[label]["name_survival"] is None or _unit(st[label]["name_survival"])


def test_facet_sanity(quality):
    for name, s in quality["sanity"].items():
        assert s["n"] > 0, name
        agreement = s["language"]["agreement"]
        assert math.isnan(agreement) or _unit(agreement)
        assert sum(s["concerning"].values()) == s["n"]
    parse = quality["parse_overall"]
    for facet in ("Request", "Language", "Concerning"):
        assert parse[facet]["n"] > 0 and _unit(parse[facet]["unparseable_share"])
    # Concerning is a structured choice of 1..5: the engine cannot answer anything else.
    assert parse["Concerning"]["unparseable"] == 0
