"""Answers that copy a worked example are rejected and asked again; answers about the conversation pass."""

from __future__ import annotations

import random
from collections.abc import Mapping

from clio_stream.domain.facets import REQUEST, TASK
from clio_stream.llm.base import AskStats
from clio_stream.stages.echo import echoes_example
from clio_stream.stages.extract import extract_facets
from clio_stream.stages.prepare import prepare_conversations
from tests.unit.fakes import ScriptedLLM

WATCH = "help pair a fitness watch with a new phone."  # REQUEST's second worked example, as the model copies it


def test_an_example_answer_about_an_unrelated_conversation_is_an_echo() -> None:
    assert WATCH in [a for _, a in REQUEST.examples]
    assert echoes_example(f"The user asks the assistant to {WATCH}", [WATCH],
                          "what are some famous international tax loopholes")
    # Seen in the demo: Task values copying the CSV example for conversations about anything else.
    csv = next(a for _, a in TASK.examples if "CSV" in a)
    assert echoes_example(f"The task is to {csv}", [csv], "do you know tailwind css?")


def test_an_answer_that_shares_the_conversations_subject_is_not_an_echo() -> None:
    source = "My new phone won't pair with my fitness watch, how do I connect it?"
    assert not echoes_example(f"The user asks the assistant to {WATCH}", [WATCH], source)
    assert not echoes_example("The user asks the assistant to summarise a tax report.", [WATCH],
                              "Summarise this tax report for me")
    assert not echoes_example("", [WATCH], "anything")


def _conversations(texts: list[str]):
    convs, _ = prepare_conversations([{"id": f"c{i}", "conversation": [{"role": "user", "content": t}]}
                                      for i, t in enumerate(texts)])
    return convs


def test_extraction_asks_again_after_an_echo_and_keeps_what_describes_the_conversation() -> None:
    answers = iter([f" {WATCH}</answer>", " list famous tax loopholes.</answer>"])

    def copier(name: str, values: Mapping[str, str], rng: random.Random) -> str | None:
        return next(answers)  # first an example copied, then (asked again) an answer about the conversation

    llm = ScriptedLLM(copier)
    out = extract_facets(_conversations(["what are some famous international tax loopholes"]), [REQUEST], llm,
                         sampling={}, retries=2, seed=0, batch_size=10)
    assert len(llm.calls) == 2
    assert out[0].values["Request"].value == f"{REQUEST.prefill} list famous tax loopholes."


def test_an_echo_that_persists_is_asked_once_more_without_the_examples() -> None:
    def copier(name: str, values: Mapping[str, str], rng: random.Random) -> str | None:
        # Shown the examples, the model copies one; shown none, it describes the conversation.
        return f" {WATCH}</answer>" if values["examples"] else " explain the MIS structure.</answer>"

    llm = ScriptedLLM(copier)
    stats = AskStats()
    out = extract_facets(_conversations(["present the MIS structure in semiconductors",
                                         "My new phone won't pair with my fitness watch, how do I connect it?"]),
                         [REQUEST], llm, sampling={}, retries=1, seed=0, batch_size=10, stats=stats)
    assert out[0].values["Request"].value == f"{REQUEST.prefill} explain the MIS structure."
    assert out[1].values["Request"].value == f"{REQUEST.prefill} {WATCH}"  # about a watch: not an echo
    assert len(llm.calls) == 2 + 1 + 1  # both asked, the copy asked again, then once without the examples
    # Two prompts, asked again twice (once with, once without the examples), nothing left unparseable.
    assert (stats.prompts, stats.retried, stats.generations, stats.unparseable) == (2, 2, 4, 0)
    assert stats.by_template["facet"]["unparseable"] == 0


def test_a_bare_answer_that_does_not_parse_leaves_the_value_missing_rather_than_wrong() -> None:
    llm = ScriptedLLM(lambda name, values, rng: f" {WATCH}</answer>" if values["examples"] else "")
    out = extract_facets(_conversations(["present the MIS structure in semiconductors"]), [REQUEST], llm,
                         sampling={}, retries=1, seed=0, batch_size=10)
    assert out[0].values["Request"].value is None and len(llm.calls) == 2 + 2
