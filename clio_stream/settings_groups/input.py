"""Input settings: which conversations are read, how they are de-duplicated, cut and shown.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, Field, ImportString

from clio_stream.domain.facets import FacetLayout
from clio_stream.settings_defaults import (
    default_conversation_filter,
    default_conversation_getter,
    default_conversation_to_json,
    default_dedup_key,
)


class InputFields(BaseModel):
    # --- input (seed: dedupData, dedupKeyFunc, getConversationFunc, maxConversationTokens, ...) ---
    dedup: bool = Field(
        True, description="Drop conversations whose turns repeat an earlier one's (the seed's dedupData).")
    dedup_key: ImportString[Callable[[Any], str]] = Field(
        default_dedup_key, description="What makes two conversations duplicates (default: identical turns).")
    conversation_getter: ImportString[Callable[[Any], Any]] = Field(
        default_conversation_getter, description="Turns one input record into a conversation (default: the record is one).")
    conversation_filter: ImportString[Callable[[Any], bool]] = Field(
        default_conversation_filter, description="Keep a conversation only when this returns True (an analysis filter).")
    conversation_to_json: ImportString[Callable[[Any], Any]] = Field(
        default_conversation_to_json, description="How an input record is shown on the site when raw conversations "
        "are: given the record, a list of {role, content} turns (default: the conversation's own turns).")
    max_conversation_tokens: int = Field(
        1500, ge=64, description="Longer conversations are cut at a turn boundary before prompting."
    )
    facet_prefix_group: int = Field(
        0, ge=0,
        description="Conversations per facet wave: their first facet is asked first, the others then reuse the "
        "cached conversation prefix (in the shared layout; per facet, only the facet's own preamble is shared). "
        "0 sends all prompts at once.",
    )
    facet_layout: FacetLayout = Field(
        "per_facet",
        description="How a conversation's facet prompts are laid out. per_facet: each facet's question, its worked "
        "examples, then the conversation. shared: every facet's question, the examples answered for every facet, "
        "then the conversation, so the facets of a conversation share it in vLLM's prefix cache and cost little "
        "more than one (docs/evaluation.md compares the two).",
    )
    tokenizer_args: dict[str, Any] = Field(
        default_factory=lambda: {"enable_thinking": False},
        description="Extra arguments of the chat template (apply_chat_template in-process, chat_template_kwargs on a "
        "server). The seed's default turns Qwen3's thinking off; templates that do not use a name ignore it.")
