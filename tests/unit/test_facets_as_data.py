"""Custom facets written as data (TOML / env), the facets each command runs with, computed sources, and the
server back-end's request for the chat template's arguments and for a facet's own (raw) prompt."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from clio_stream.cli.main import build_parser
from clio_stream.cli.options import facets_from_names
from clio_stream.domain.facet_specs import ComputedSource, FacetSpec, configured_facets
from clio_stream.domain.facets import BatchCompute
from clio_stream.llm.base import Prompt
from clio_stream.llm.openai_api import OpenAICompatible
from clio_stream.llm.prompts import FACET_CONVERSATION, FACET_OWN_PROMPT
from clio_stream.settings import ClioSettings
from clio_stream.stages.extract import extract_facets
from clio_stream.stages.prepare import prepare_conversations

from .fakes import ScriptedLLM, sensible_script

TOML = """
facets = ["Request", "Sentiment", "Turns", "Plan"]

[[custom_facets]]
name = "Sentiment"
question = "How does the user feel?"
prefill = "The user feels"
summary_criteria = "Name the feeling."

[[custom_facets]]
name = "Turns"
source = "turns"
numeric = [1, 3]

[[custom_facets]]
name = "Plan"
source = "metadata.plan"
"""


@pytest.fixture
def toml_settings(monkeypatch, tmp_path):
    path = tmp_path / "clio-stream.toml"
    path.write_text(TOML)
    monkeypatch.setenv("CLIO_CONFIG", str(path))
    return ClioSettings()


def test_toml_facets_become_facets_for_every_command(toml_settings):
    facets = configured_facets(toml_settings)
    assert [f.name for f in facets] == ["Request", "Sentiment", "Turns", "Plan"]
    sentiment, turns = facets[1], facets[2]
    assert sentiment.has_hierarchy and sentiment.prefill == "The user feels" and sentiment.compute is None
    assert turns.numeric == (1, 3) and turns.to_dict()["compute"] == "turns"
    # every command resolves its facets the same way, from the same settings
    assert [f.name for f in facets_from_names(toml_settings, None)] == [f.name for f in facets]
    assert [f.name for f in facets_from_names(toml_settings, "sentiment, language")] == ["Sentiment", "Language"]
    for command in ("batch x --out o", "demo", "consume", "recluster", "scheduler", "bootstrap-clusters",
                    "backfill-facets"):
        args = build_parser().parse_args(command.split() + ["--facets", "Turns"])
        assert args.facets == "Turns"


def test_custom_facets_travel_to_child_processes(toml_settings, monkeypatch):
    env = toml_settings.to_env()
    monkeypatch.delenv("CLIO_CONFIG")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = ClioSettings()  # what `up` gives a consumer: CLIO_* variables only
    assert [f.name for f in configured_facets(child)] == ["Request", "Sentiment", "Turns", "Plan"]
    assert child.custom_facets == toml_settings.custom_facets


def test_bad_facet_definitions_are_refused_with_their_reason():
    with pytest.raises(ValueError, match="needs a question"):
        FacetSpec(name="Mood")
    with pytest.raises(ValueError, match="unknown facet source"):
        FacetSpec(name="Mood", source="vibes")
    with pytest.raises(ValueError, match="numeric"):
        FacetSpec(name="Score", question="?", numeric=(5, 1))
    with pytest.raises(ValueError, match="unique"):
        ClioSettings(custom_facets=[{"name": "A", "question": "?"}, {"name": "A", "question": "?"}])
    with pytest.raises(ValueError, match="name of a main facet"):
        configured_facets(ClioSettings(custom_facets=[{"name": "request", "question": "?"}]))
    with pytest.raises(ValueError, match="unknown facet"):
        configured_facets(ClioSettings(facets=["Request", "Nope"]))


def test_computed_sources_answer_without_the_llm(toml_settings):
    convs, _ = prepare_conversations([
        {"id": "a", "metadata": {"plan": "pro"}, "conversation": [
            {"role": "user", "content": "one two"}, {"role": "assistant", "content": "three"},
            {"role": "user", "content": "four"}, {"role": "assistant", "content": "five six"}]},
        {"id": "b", "conversation": [{"role": "user", "content": "hello there"}]}])
    facets = configured_facets(toml_settings, ["Turns", "Plan"])
    llm = ScriptedLLM(sensible_script)
    out = extract_facets(convs, facets, llm, sampling={}, retries=0, seed=0, batch_size=10)
    assert llm.calls == []
    assert (out[0].values["Turns"].value, out[0].values["Turns"].numeric) == ("3", 3)  # 4 turns, clamped to 3
    assert out[1].values["Turns"].numeric == 1 and out[0].values["Plan"].value == "pro"
    assert out[1].values["Plan"].value is None  # no such metadata: missing, not made up
    assert ComputedSource.parse("words")(convs[0]) == "6" and ComputedSource.parse("characters")(convs[1]) == "11"
    # the batch form gives what one-by-one gives, for every source (the language in one detector call)
    for source in ("turns", "words", "characters", "language", "metadata.plan"):
        computed = ComputedSource.parse(source)
        assert isinstance(computed, BatchCompute)
        assert computed.many(convs) == [computed(c) for c in convs], source
    assert ComputedSource.parse("language").many(convs) == ["English", "English"]


def _client(chat: list[dict], completions: list[dict]) -> SimpleNamespace:
    """An AsyncOpenAI stand-in that records each request's arguments."""

    async def chat_create(**kw):
        chat.append(kw)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="answer"))])

    async def completion_create(**kw):
        completions.append(kw)
        return SimpleNamespace(choices=[SimpleNamespace(text=" raw answer")])

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=chat_create)),
                           completions=SimpleNamespace(create=completion_create))


def test_server_backend_sends_tokenizer_args_and_raw_prompts_as_they_are():
    backend = OpenAICompatible("m", "http://127.0.0.1:1/v1", tokenizer_args={"enable_thinking": False})
    chat: list[dict] = []
    completions: list[dict] = []
    client = _client(chat, completions)
    templated = Prompt(FACET_CONVERSATION, {"conversation": "hi", "question": "q", "prefill": "The user",
                                            "examples": ""})
    raw = Prompt(FACET_OWN_PROMPT, {"text": "<|im_start|>user\nSummarise {x}<|im_end|>\n<|im_start|>assistant\n<s>"})

    async def both():
        sem = asyncio.Semaphore(2)
        return (await backend._one(client, sem, templated, {"stop": ["\n"], "max_tokens": 9}),
                await backend._one(client, sem, raw, {"stop": ["\n"], "max_tokens": 9}))

    assert asyncio.run(both()) == ("answer", " raw answer")
    assert chat[0]["extra_body"]["chat_template_kwargs"] == {"enable_thinking": False}  # the seed's tokenizerArgs
    sent = completions[0]
    assert sent["prompt"] == raw.values["text"]  # no chat template applied a second time
    assert sent["stop"] == ["</"] and "chat_template_kwargs" not in (sent.get("extra_body") or {})
