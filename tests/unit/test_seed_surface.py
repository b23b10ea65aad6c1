"""The seed's (OpenClio's) names with the seed's meaning: Facet keywords, OpenClioConfig fields, doCachedReplacements,
runClio's result, and the README's own facet definitions (read from the seed README, run as they are)."""

from __future__ import annotations

import functools
import gzip
import json

import numpy as np
import pytest

import openclio
from clio_stream.domain.facets import Facet
from clio_stream.settings import ClioSettings, OpenClioConfig
from clio_stream.site.writer import SiteRecords, read_gz_json, write_site
from tests.seed_readme import block_defining

from .fakes import HashEmbedder, ScriptedLLM, sensible_script

TOPICS = ["cooking", "python", "travel", "poetry"]


@pytest.fixture(scope="module")
def tokenizer():
    """The packaged SmolLM2's own tokenizer and chat template (no engine)."""
    from transformers import AutoTokenizer

    from clio_stream.devstack.assets import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct", "llm"))


class TokenizedLLM(ScriptedLLM):
    """The scripted model with a real tokenizer, as the vLLM back-ends have one."""

    def __init__(self, script, tokenizer) -> None:
        super().__init__(script)
        self.tokenizer = tokenizer
        self.texts: list[str] = []

    def generate(self, prompts, sampling, *, seed=None, desc=None):
        self.texts.extend(p.values.get("text", "") for p in prompts if p.template.raw)
        return super().generate(prompts, sampling, seed=seed, desc=desc)


def summary_script(name, values, rng):
    if name == "facet_own_prompt":
        text = values["text"]
        topic = next(t for t in TOPICS if t in text)
        return f" Notes about {topic}.\n</summary>"
    return sensible_script(name, values, rng)


def records(n=24):
    return [{"id": f"r{i}", "user_id": f"u{i % 8}", "title": f"{TOPICS[i % 4]} {i}",
             "body": f"a longer text about {TOPICS[i % 4]} number {i}"} for i in range(n)]


def quick(**kw):
    return ClioSettings(**{"show_progress": False, "n_name_description_samples_per_cluster": 1,
                           "n_categorize_samples": 1, "n_rename_samples": 1, "llm_max_retries": 1, **kw})


def test_facet_takes_the_seeds_keywords_and_positions():
    f = Facet("Mood", "How does the user feel?", "The user feels", "Name the mood.")
    g = Facet(name="Mood", question="How does the user feel?", prefill="The user feels",
              summaryCriteria="Name the mood.")
    assert f == g and g.summary_criteria == g.summaryCriteria == "Name the mood." and g.has_hierarchy
    h = Facet(name="Score", question="1 to 5?", numeric=[1, 5])
    assert h.numeric == (1, 5)
    with pytest.raises(TypeError, match="not both"):
        Facet(name="X", question="?", summary_criteria="a", summaryCriteria="b")
    with pytest.raises(ValueError, match="needs a question"):
        Facet(name="X")  # the seed's default question is "": fine only with a prompt function or a source
    assert Facet(name="X", getFacetPrompt=lambda *a, **k: "p").reads_data


def test_the_readmes_main_facets_block_builds_our_facets():
    namespace = {"Facet": openclio.Facet}
    exec(block_defining("mainFacets"), namespace)  # noqa: S102 - the seed README's code, as data
    seeds = namespace["mainFacets"]
    assert [f.name for f in seeds] == [f.name for f in openclio.mainFacets]
    assert seeds[3].numeric == (1, 5) and seeds[0].summaryCriteria and seeds[1].summary_criteria is None


def test_openclio_config_fields_by_their_seed_names():
    cfg = OpenClioConfig(minTopLevelSize=3, htmlMaxSizePerFile=5_000_000, webuiPort=9123, verbose=False,
                         dedupKeyFunc=None, htmlDataToJsonFunc=None, tokenizerArgs={"enable_thinking": False},
                         llmExtraInferenceArgs={"max_tokens": 100, "top_k": 20})
    assert (cfg.min_top_level_size, cfg.site_chunk_bytes, cfg.web_port, cfg.show_progress) == (3, 5_000_000, 9123,
                                                                                              False)
    assert cfg.minTopLevelSize == 3 and cfg.webuiPort == 9123 and cfg.verbose is False
    assert cfg.dedup_key is ClioSettings().dedup_key  # the seed's None means "the default function"
    cfg.nRenameSamples = 2  # attribute writes by seed name, validated
    assert cfg.n_rename_samples == 2
    with pytest.raises(ValueError):
        cfg.nRenameSamples = 0
    with pytest.raises(TypeError, match="same setting"):
        ClioSettings().with_overrides(minTopLevelSize=3, min_top_level_size=4)


def test_seed_names_in_toml_and_keywords_keep_the_sources_order(monkeypatch, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("minTopLevelSize = 4\nhtmlMaxSizePerFile = 2048\nnRenameSamples = 2\n")
    monkeypatch.setenv("CLIO_CONFIG", str(toml))
    s = ClioSettings()
    assert s.min_top_level_size == 4 and s.site_chunk_bytes == 2048
    monkeypatch.setenv("CLIO_N_RENAME_SAMPLES", "3")
    monkeypatch.setenv("CLIO_MIN_TOP_LEVEL_SIZE", "6")
    s = OpenClioConfig(minTopLevelSize=7)  # keyword (seed name) > environment > TOML (seed name)
    assert (s.min_top_level_size, s.n_rename_samples, s.site_chunk_bytes) == (7, 3, 2048)


def test_kmeans_args_the_seed_passes_are_mapped_and_others_refused():
    seed_default = OpenClioConfig(kmeansArgs={"approximate": True, "verbose": True})
    assert seed_default.kmeans_args == {}  # FAISS-only: no scikit-learn equivalent, dropped
    assert OpenClioConfig(kmeansArgs={"max_iter": 25, "n_init": 1, "M": 32}).kmeans_args == {"max_iter": 25,
                                                                                             "n_init": 1}
    with pytest.raises(ValueError, match="not scikit-learn KMeans arguments"):
        OpenClioConfig(kmeansArgs={"nredo": 3})
    # and they cluster: scikit-learn takes what is left
    from clio_stream.stages.base_clusters import base_clusters

    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    labels, _ = base_clusters(x / np.linalg.norm(x, axis=1, keepdims=True), seed_default)
    assert len(set(labels.tolist())) == 3


def test_do_cached_replacements_renders_once_and_replaces_once(tokenizer):
    calls = []

    def messages():
        calls.append(1)
        return [{"role": "user", "content": "Summarise:\n<data>\n{dataREPLACE}\n</data>"},
                {"role": "assistant", "content": "Sure.\n\n<summary>"}]

    one = openclio.doCachedReplacements(funcName="t-summary", tokenizer=tokenizer, getMessagesFunc=messages,
                                        replacementsDict={"data": "first {dataREPLACE}"},
                                        tokenizerArgs={"enable_thinking": False})
    two = openclio.doCachedReplacements("t-summary", tokenizer, messages, {"data": "second"},
                                        {"enable_thinking": False})
    assert len(calls) == 1  # the chat template was applied once for this funcName
    assert "<data>\nfirst {dataREPLACE}\n</data>" in one  # a value is never substituted again
    assert one.rstrip().endswith("<summary>") and "<|im_end|>" not in one.split("<summary>")[-1]
    assert "<data>\nsecond\n</data>" in two and one.startswith("<|im_start|>")


def test_the_readmes_summary_facet_on_dict_records(tokenizer):
    namespace = {"functools": functools}
    exec("from openclio import *\n" + block_defining("getSummarizeFacetPrompt"), namespace)  # noqa: S102
    exec(block_defining("genericSummaryFacets"), namespace)  # noqa: S102
    facets = namespace["genericSummaryFacets"]
    llm = TokenizedLLM(summary_script, tokenizer)
    out = openclio.runClio(facets=facets, llm=llm, embeddingModel=HashEmbedder(), data=records(), outputDirectory=None,
                           htmlRoot="/clio", hostWebui=False, cfg=quick())
    assert len(llm.texts) == 24 and "'title': 'cooking 0'" in llm.texts[0]  # the seed's str(data), in its prompt
    assert llm.texts[0].rstrip().endswith("<summary>")
    values = [fd.facetValues[0].value for fd in out.facetValues]
    assert values[0] == "Notes about cooking." and all(values)
    assert out.data[0] == records()[0]  # the seed's result carries the data points as given
    assert out.rootClusters[0] and out.baseClusters[0] and out.facetValuesEmbeddings[0].shape[0] == 24
    leaf = out.baseClusters[0][0]
    assert leaf.parent is not None or leaf in out.rootClusters[0]
    assert {values[i] for i in leaf.indices} and leaf.facet is facets[0]


def test_generic_summary_facets_read_dict_records_keeping_ids_and_users():
    out = openclio.runClio(facets=openclio.genericSummaryFacets, llm=ScriptedLLM(sensible_script),
                           embeddingModel=HashEmbedder(), data=records(), outputDirectory=None, htmlRoot="",
                           hostWebui=False, cfg=quick())
    convs = out.result.conversations
    assert [c.id for c in convs][:2] == ["r0", "r1"] and convs[0].user_id == "u0"
    assert "Summary" in out.result.hierarchies
    with pytest.raises(ValueError, match="record 0"):  # conversation facets still need conversations
        openclio.runClio(facets=openclio.mainFacets, llm=ScriptedLLM(sensible_script), embeddingModel=HashEmbedder(),
                         data=records(), outputDirectory=None, htmlRoot="", hostWebui=False, cfg=quick())


def _conversation_files(site):
    return sorted((site / "data" / "conversations").glob("0*.json.gz"))


def test_site_chunks_are_bounded_in_bytes_and_the_filter_is_site_only(tmp_path):
    def only_odd(record, facet_data):
        return int(record["id"][1:]) % 2 == 1 and facet_data.facetValues[0].value is not None

    run = openclio.runClio(facets=openclio.genericSummaryFacets, llm=ScriptedLLM(sensible_script),
                           embeddingModel=HashEmbedder(), data=records(), outputDirectory=str(tmp_path / "out"),
                           htmlRoot="", hostWebui=False,
                           cfg=quick(htmlMaxSizePerFile=1024, htmlConversationFilterFunc=only_odd,
                                     htmlDataToJsonFunc=lambda r: [{"role": "note", "content": r["body"]}]))
    site = tmp_path / "out" / "site"
    files = _conversation_files(site)
    shown = [c for f in files for c in read_gz_json(f)["conversations"]]
    assert sorted(c["id"] for c in shown) == sorted(f"r{i}" for i in range(1, 24, 2))  # the filter: site only
    assert all(len(gzip.decompress(f.read_bytes())) <= 1024 + 200 for f in files) and len(files) > 1
    assert shown[0]["messages"][0]["role"] == "note"  # htmlDataToJsonFunc decides what is shown
    manifest = read_gz_json(site / "data" / "manifest.json.gz")
    assert sum(r["size"] for r in manifest["facets"][0]["roots"]) == 24  # sizes still count every conversation
    assert len(run.result.conversations) == 24  # and the analysis kept them all


def test_chunk_bytes_split_large_sites(tmp_path):
    from clio_stream.domain.clusters import ClioResult
    from clio_stream.domain.conversation import Conversation, Message

    convs = [Conversation(id=f"c{i:02d}", messages=[Message(role="user", content="x" * 500)]) for i in range(20)]
    result = ClioResult(facets=[], conversations=convs, facet_values=[], hierarchies={})
    write_site(result, tmp_path / "a", chunk_size=100, chunk_bytes=10_000_000)
    write_site(result, tmp_path / "b", chunk_size=100, chunk_bytes=2_000, shown=SiteRecords(hidden={"c00"}))
    assert len(_conversation_files(tmp_path / "a")) == 1  # the seed's 10 MB default: one chunk
    small = _conversation_files(tmp_path / "b")
    assert len(small) >= 5 and all(len(json.loads(gzip.decompress(f.read_bytes()))["conversations"]) <= 3
                                   for f in small)
