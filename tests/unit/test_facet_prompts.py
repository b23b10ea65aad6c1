"""Facet prompts a small model can follow, and facets computed without the LLM."""

from __future__ import annotations

from clio_stream.stages.prepare import prepare_conversations
from clio_stream.stages.extract import build_prompts, extract_facets, facet_prompt
from clio_stream.domain.facets import CONCERNING, LANGUAGE, REQUEST, TASK, Facet
from clio_stream.llm.base import Prompt, prompt_sampling
from clio_stream.llm.templating import cached_replacements
from tests.unit.fakes import ScriptedLLM, sensible_script


def _user(p: Prompt) -> str:
    return cached_replacements(p.template.user, p.values)


def test_examples_come_before_the_conversation_with_the_prefill_written_out() -> None:
    text = _user(facet_prompt(REQUEST, "<user>\nhow do I freeze my card\n</user>"))
    first_example = REQUEST.examples[0]
    assert f"Answer: {REQUEST.prefill} {first_example[1]}" in text
    assert text.index(first_example[0]) < text.index("how do I freeze my card")
    assert text.rstrip().endswith("</conversation>")  # the model answers right after the conversation
    assert "personal details" in text  # the privacy instruction
    assert len(text) - len("how do I freeze my card") < 1500  # short: a 135M model loses long instructions


def test_each_facet_has_its_own_length_cap() -> None:
    r, c = facet_prompt(REQUEST, "x"), facet_prompt(CONCERNING, "x")
    assert r.max_tokens == REQUEST.max_tokens and c.max_tokens == CONCERNING.max_tokens == 2
    assert prompt_sampling(c, {"max_tokens": 160, "temperature": 0.6}) == {"max_tokens": 2, "temperature": 0.6}
    assert prompt_sampling(r, {"max_tokens": 8})["max_tokens"] == 8  # the lower cap wins
    assert c.choices == ("1", "2", "3", "4", "5")


def test_the_seed_questions_keep_their_meaning() -> None:
    assert "overall request" in REQUEST.question and "task" in TASK.question
    assert "scale of 1 to 5" in CONCERNING.question and CONCERNING.numeric == (1, 5)


def _conversations(texts: list[str]):
    convs, _ = prepare_conversations([{"id": f"c{i}", "conversation": [{"role": "user", "content": t}]}
                                      for i, t in enumerate(texts)])
    return convs


def test_language_is_computed_without_a_prompt() -> None:
    convs = _conversations(["Where is my card? It has not arrived yet.",
                            "¿Dónde está mi tarjeta? Todavía no ha llegado."])
    assert len(build_prompts(convs, [REQUEST, LANGUAGE])) == 2  # one per conversation: Request only
    llm = ScriptedLLM(sensible_script)
    out = extract_facets(convs, [REQUEST, LANGUAGE, CONCERNING], llm, sampling={}, retries=0, seed=0, batch_size=10)
    assert [o.values["Language"].value for o in out] == ["English", "Spanish"]
    assert list(out[0].values) == ["Request", "Language", "Concerning"]  # stored like any other facet
    assert len(llm.calls) == 4


def test_a_custom_computed_facet_and_its_serialised_form() -> None:
    turns = Facet(name="Turns", question="How many user turns?", compute=lambda c: str(len(c.messages)))
    out = extract_facets(_conversations(["hello"]), [turns], ScriptedLLM(sensible_script), sampling={}, retries=0,
                         seed=0, batch_size=10)
    assert out[0].values["Turns"].value == "1"
    assert LANGUAGE.to_dict()["compute"] == "conversation_language"


def test_text_facets_answer_greedily_and_re_ask_at_the_runs_temperature() -> None:
    """The most likely answer first; an unparseable one is re-asked sampled, or it would only come back the same."""
    from clio_stream.llm.base import ask

    assert facet_prompt(REQUEST, "x").temperature == 0.0 and facet_prompt(TASK, "x").temperature == 0.0
    assert prompt_sampling(facet_prompt(REQUEST, "x"), {"temperature": 0.6})["temperature"] == 0.0
    assert Facet(name="Mine", question="?").temperature is None  # a user's facet keeps the run's sampling

    seen: list[float] = []

    class FirstAnswerUnusable:
        model_name = "scripted"

        def generate(self, prompts, sampling, *, seed=None, desc=None):
            seen.extend(prompt_sampling(p, sampling)["temperature"] for p in prompts)
            return ["" if len(seen) == 1 else " reset a card PIN."] * len(prompts)

    got = ask(FirstAnswerUnusable(), [facet_prompt(REQUEST, "x")], lambda t, i: t or None, {"temperature": 0.6},
              retries=2, seed=0)
    assert got == [" reset a card PIN."] and seen == [0.0, 0.6]
