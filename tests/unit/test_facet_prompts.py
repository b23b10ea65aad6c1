"""Facet prompts a small model can follow, and facets computed without the LLM."""

from __future__ import annotations

from clio_stream.stages.prepare import prepare_conversations
from clio_stream.stages.extract import SharedPreamble, build_prompts, extract_facets, facet_prompt
from clio_stream.domain.facets import CONCERNING, LANGUAGE, REQUEST, TASK, Facet, generic_summary_facets, main_facets
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


class _CountingBatchCompute:
    """A computed facet with a batch form: how often each form is called, and whether it was warmed."""

    label = "counting"

    def __init__(self) -> None:
        self.single = self.batches = self.warmed = 0

    def __call__(self, conv) -> str:
        self.single += 1
        return conv.messages[0].content.upper()

    def many(self, convs) -> list[str | None]:
        self.batches += 1
        return [c.messages[0].content.upper() if c.messages[0].content != "none" else None for c in convs]

    def warm(self) -> None:
        self.warmed += 1


def test_a_computed_facet_with_a_batch_form_is_called_once_per_batch() -> None:
    compute = _CountingBatchCompute()
    loud = Facet(name="Loud", question="?", compute=compute)
    out = extract_facets(_conversations(["a", "none", "c"]), [REQUEST, loud], ScriptedLLM(sensible_script),
                         sampling={}, retries=0, seed=0, batch_size=10)
    assert [o.values["Loud"].value for o in out] == ["A", None, "C"]
    assert (compute.batches, compute.single) == (1, 0)


def test_a_worker_warms_its_computed_facets_before_it_joins_the_group() -> None:
    """The language models load in seconds: at build, not inside the first batch's poll interval."""
    from clio_stream.settings import ClioSettings
    from clio_stream.storage.store import QdrantStore
    from consumers.worker import ConsumerWorker
    from tests.unit.fakes import HashEmbedder

    compute = _CountingBatchCompute()
    store = QdrantStore(":memory:", keep_raw=True)
    worker = ConsumerWorker(ClioSettings(show_progress=False), [REQUEST, Facet(name="Loud", question="?", compute=compute)],
                            llm=ScriptedLLM(sensible_script), embedder=HashEmbedder(), store=store)
    try:
        worker.build()
        worker.build()  # a start retried after an outage builds again
        assert compute.warmed == 1
    finally:
        store.close()


def test_the_language_of_a_batch_is_each_conversations_own() -> None:
    from clio_stream.stages.language import conversation_language

    texts = ["Where is my card? It has not arrived yet.", "¿Dónde está mi tarjeta? Todavía no ha llegado.",
             "Wo ist meine Karte? Sie ist noch nicht angekommen.", "Où est ma carte ? Elle n'est pas encore arrivée.",
             "12345 67890", "Dov'è la mia carta? Non è ancora arrivata."]
    convs = _conversations(texts)
    assert conversation_language.many(convs) == [conversation_language(c) for c in convs] == \
        ["English", "Spanish", "German", "French", None, "Italian"]


def test_the_language_is_read_from_the_start_of_a_long_conversation() -> None:
    """A pasted log must not cost as much as a batch: the identifier reads the first ``DETECTION_CHARS``."""
    from clio_stream.stages.language import DETECTION_CHARS, conversation_language, user_text

    spanish = "¿Dónde está mi tarjeta? Todavía no ha llegado y la necesito para el viaje de la semana que viene. "
    log_lines = "ERROR connection refused while reading the configuration file from the server. " * 200
    (conv,) = _conversations([spanish * 10 + log_lines])
    assert len(user_text(conv)) == DETECTION_CHARS
    assert conversation_language(conv) == "Spanish"


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


# --------------------------------------------------------------------------- the shared layout


def _prefill(p: Prompt) -> str:
    return cached_replacements(p.template.prefill, p.values)


def test_in_the_shared_layout_a_conversations_facet_prompts_differ_only_in_the_prefill() -> None:
    convs = _conversations(["how do I freeze my card", "write me a haiku about rain"])
    prompts = build_prompts(convs, main_facets, layout="shared")  # Language is computed: three prompts each
    assert [p.template.name for p in prompts] == ["facet_shared"] * 6
    users = [_user(p) for p in prompts]
    assert users[0] == users[1] == users[2] and users[3] == users[4] == users[5] and users[0] != users[3]
    assert "how do I freeze my card" in users[0] and users[0].rstrip().endswith("</conversation>")
    # Everything before the conversation is the same for all conversations: the cache holds it once.
    assert users[0].split("how do I freeze")[0] == users[3].split("write me a haiku")[0]
    assert [_prefill(p) for p in prompts[:3]] == [f"Request: {REQUEST.prefill}", f"Task: {TASK.prefill}", "Concerning:"]
    assert prompts[2].choices == (" 1", " 2", " 3", " 4", " 5")  # after "Concerning:", as the examples write it
    assert [p.max_tokens for p in prompts[:3]] == [REQUEST.max_tokens, TASK.max_tokens, CONCERNING.max_tokens]
    assert "personal details" in users[0]


def test_the_shared_preamble_shows_each_example_once_with_every_facets_answer_to_it() -> None:
    shared = SharedPreamble.of(main_facets)
    assert shared is not None and "Language" not in shared.questions and "\n\n" not in shared.questions
    for facet in (REQUEST, TASK, CONCERNING):
        assert shared.questions.count(f"{facet.name}: ") >= 1
        for message, answer in facet.examples:
            assert shared.examples.count(message) == 1
            after = shared.examples.split(message, 1)[1].split("<conversation>", 1)[0]
            assert f"{facet.name}: {facet.prefill} {answer}".replace(":  ", ": ") in after.splitlines()


def test_only_facets_that_read_the_conversation_share_a_preamble() -> None:
    summary = generic_summary_facets[0]  # reads a data item shown as text
    prompts = build_prompts(_conversations(["hello there"]), [REQUEST, summary, TASK], layout="shared")
    assert [p.template.name for p in prompts] == ["facet_shared", "facet_text", "facet_shared"]
    assert "Summary" not in prompts[0].values["questions"]
    # One facet alone has nothing to share: its own prompt, as in the per-facet layout.
    assert [p.template.name for p in build_prompts(_conversations(["hi"]), [REQUEST, LANGUAGE], layout="shared")] \
        == ["facet"]


def test_shared_layout_answers_parse_into_the_same_values_as_per_facet_ones() -> None:
    convs = _conversations(["Where is my card? It has not arrived yet.", "Write a limerick about a cat."])
    llm = ScriptedLLM(sensible_script)
    out = extract_facets(convs, main_facets, llm, sampling={}, retries=0, seed=0, batch_size=10, layout="shared")
    assert set(llm.calls) == {"facet_shared"}
    for cf in out:
        assert cf.values["Request"].value.startswith(f"{REQUEST.prefill} help with")
        assert cf.values["Task"].value.startswith(f"{TASK.prefill} help with")
        assert 1 <= cf.values["Concerning"].numeric <= 5 and cf.values["Concerning"].value.isdigit()
        assert cf.values["Language"].value == "English"
