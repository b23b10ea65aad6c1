"""Truncation by the model's own tokens: text that is several tokens a character must still fit.

The counting rule used to be characters/4 and the oversize first turn was cut by a character ratio; a run of
emoji or CJK text (up to 3 tokens a character for SmolLM2's byte-level BPE) then kept a prefix several times
the budget, the engine refused it, and the record blocked its partition. These tests use the real tokenizer
of the packaged model.
"""

from __future__ import annotations

import pytest

from clio_stream.stages.prepare import cut_to_tokens, render_conversation, to_conversation, truncate_conversation


@pytest.fixture(scope="module")
def count_tokens():
    from transformers import AutoTokenizer

    from clio_stream.devstack.assets import smollm2_model_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_model_dir()))
    return lambda text: len(tok.encode(text, add_special_tokens=False))


HOSTILE_TURNS = {
    "emoji then spaces": "\U0001F600\U0001F680\U0001F9E0" * 4000 + " " * 40000,
    "cjk": "\u8bf7\u5e2e\u6211\u5199\u4e00\u5c01\u4fe1\u7ed9\u94f6\u884c\u3002" * 3000,
    "zwj sequences": "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466" * 3000,
    "plain words": "please help me with my bank account " * 3000,
}


@pytest.mark.parametrize("name", sorted(HOSTILE_TURNS))
def test_oversize_first_turn_fits_the_budget(name, count_tokens):
    budget = 1500
    conv = to_conversation([{"role": "user", "content": HOSTILE_TURNS[name]},
                            {"role": "assistant", "content": "ok"}], 0)
    cut, was = truncate_conversation(conv, budget, count_tokens)
    assert was and len(cut.messages) == 1
    rendered = count_tokens(render_conversation(cut))
    assert rendered <= budget, f"{name}: {rendered} tokens kept against a budget of {budget}"
    # Not cut far below the budget either: the user's request keeps as much text as fits.
    assert rendered >= budget * 0.8, f"{name}: only {rendered} of {budget} tokens kept"


def test_cut_to_tokens_is_the_longest_fitting_prefix(count_tokens):
    text = "\u4f60\u597d\u4e16\u754c" * 500
    cut = cut_to_tokens(text, 300, count_tokens)
    assert count_tokens(cut) <= 300 < count_tokens(text[: len(cut) + 1])


def test_small_conversation_is_not_tokenized():
    def refuse(_: str) -> int:
        raise AssertionError("a conversation whose bytes fit needs no tokenizer")

    conv = to_conversation([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}], 0)
    same, was = truncate_conversation(conv, 100, refuse)
    assert same is conv and not was
