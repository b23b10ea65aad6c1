"""Preparing conversations: validating records into ``Conversation`` objects, de-duplicating, truncating, rendering.

Shared by batch (``run_clio``), the producer and the consumers, so a conversation is the same object, with the
same content key and the same prompt text, whichever way it arrives. Accepted records, per item (after the
settings' ``conversation_getter``):
- a list of ``{"role", "content"}`` turns (the seed's format);
- a map with ``conversation`` or ``messages`` (and optional ``id``, ``user_id``,
  ``timestamp``, ``metadata``), as on the Kafka topic;
- a ``Conversation``;
- ShareGPT-style turns ``{"from": "human"|"gpt", "value"}`` are translated.
Bad records raise ``DataError`` naming the record; empty conversations are
skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from clio_stream.domain.conversation import Conversation, Message
from clio_stream.domain.timestamps import parse_timestamp

log = logging.getLogger(__name__)

ROLE_ALIASES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                "model": "assistant", "user": "user", "assistant": "assistant", "system": "system"}


class DataError(ValueError):
    """A record that is not a conversation; the message names the record."""


@dataclass
class LoadStats:
    records: int = 0
    empty_skipped: int = 0
    filtered_out: int = 0
    duplicates_removed: int = 0
    truncated: int = 0
    kept: int = 0
    duplicate_of: dict[str, str] = field(default_factory=dict)


def _turn(raw: Any, where: str) -> Message:
    if isinstance(raw, Message):
        return raw
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a turn must be a map with 'role' and 'content', got {type(raw).__name__}")
    role = raw.get("role", raw.get("from"))
    content = raw.get("content", raw.get("value"))
    if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
        raise DataError(f"{where}: unknown role {role!r} (expected user, assistant or system)")
    if not isinstance(content, str):
        raise DataError(f"{where}: 'content' must be a string, got {type(content).__name__}")
    return Message(role=ROLE_ALIASES[role.lower()], content=content)


def to_conversation(record: Any, index: int) -> Conversation:
    """One record as a ``Conversation``; ``index`` gives the default id and names bad records."""
    where = f"record {index}"
    if isinstance(record, Conversation):
        return record
    meta: dict[str, Any] = {}
    cid: Any = None
    user_id = None
    timestamp = None
    if isinstance(record, dict):
        turns = record.get("conversation", record.get("messages", record.get("conversations")))
        cid = record.get("id", record.get("chat_id", record.get("conversation_id")))
        user_id = record.get("user_id")
        try:
            timestamp = parse_timestamp(record.get("timestamp", record.get("created_at")))
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from exc
        meta = record.get("metadata") or {}
        if turns is None:
            raise DataError(f"{where}: a map needs a 'conversation' or 'messages' list")
    elif isinstance(record, (list, tuple)):
        turns = record
    else:
        raise DataError(f"{where}: expected a conversation (list of turns or a map), got {type(record).__name__}")
    if cid is not None:
        where = f"record {index} (id {cid!r})"
    if not isinstance(turns, (list, tuple)):
        raise DataError(f"{where}: the conversation must be a list of turns, got {type(turns).__name__}")
    messages = [_turn(t, f"{where}, turn {j}") for j, t in enumerate(turns)]
    return Conversation(
        id=str(cid) if cid is not None else f"conv-{index}",
        messages=messages,
        user_id=None if user_id is None else str(user_id),
        timestamp=timestamp,
        metadata=meta if isinstance(meta, dict) else {"value": meta},
    )


def conversation_content_key(conversation: Any) -> str:
    """A hash of the turns only (not ids), so re-sent copies of a conversation match."""
    if isinstance(conversation, Conversation):
        turns = [(m.role, m.content) for m in conversation.messages]
    else:
        turns = json.dumps(conversation, sort_keys=True, default=str)
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode()).hexdigest()


# Tokens the rendering adds around each turn (its role tags and newlines).
TURN_OVERHEAD_TOKENS = 8
# Before tokenizing an oversize turn it is cut to this many UTF-8 bytes per token of budget: no tokenizer
# here packs more into one token of ordinary text, and tokenizing megabytes to keep a few thousand tokens
# would cost more than the prompt itself.
MAX_BYTES_PER_TOKEN = 16


def cut_to_tokens(text: str, budget: int, count_tokens: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` that ``count_tokens`` puts at ``budget`` tokens or fewer.

    A byte cap first, then a binary search over the prefix length with real counts (a prefix never has
    more tokens than a longer one, give or take a merge at the cut, and the result is checked).
    """
    if budget <= 0:
        return ""
    raw = text.encode("utf-8")
    if len(raw) > budget * MAX_BYTES_PER_TOKEN:
        text = raw[: budget * MAX_BYTES_PER_TOKEN].decode("utf-8", "ignore")
    if count_tokens(text) <= budget:
        return text
    lo, hi = 0, len(text)  # text[:lo] fits, text[:hi + 1] does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def truncate_conversation(conv: Conversation, max_tokens: int, count_tokens: Callable[[str], int]) -> tuple[Conversation, bool]:
    """Keep whole turns from the start while they fit in ``max_tokens`` (counted by the model's tokenizer).

    The first turn is always kept, cut to the budget if it alone is too long, so every conversation still
    says what the user asked. A conversation whose UTF-8 size already fits is returned without tokenizing
    (a token is at least one byte), which is the common case and saves a round trip per turn when the
    tokenizer is a server's.
    """
    overhead = TURN_OVERHEAD_TOKENS * len(conv.messages)
    if sum(len(m.content.encode("utf-8")) for m in conv.messages) + overhead <= max_tokens:
        return conv, False
    kept: list[Message] = []
    used = 0
    for m in conv.messages:
        n = count_tokens(m.content) + TURN_OVERHEAD_TOKENS
        if used + n > max_tokens:
            if not kept:
                kept.append(Message(role=m.role,
                                    content=cut_to_tokens(m.content, max_tokens - TURN_OVERHEAD_TOKENS, count_tokens)))
            break
        kept.append(m)
        used += n
    truncated = len(kept) < len(conv.messages) or kept[-1].content != conv.messages[len(kept) - 1].content
    if not truncated:
        return conv, False
    return conv.model_copy(update={"messages": kept}), True


def prepare_conversations(
    data: Iterable[Any],
    *,
    getter: Callable[[Any], Any] = lambda r: r,
    keep: Callable[[Any], bool] = lambda c: True,
    dedup: bool = True,
    dedup_key: Callable[[Any], str] = conversation_content_key,
) -> tuple[list[Conversation], LoadStats]:
    """Validate, skip empties, filter and de-duplicate. Truncation happens later (needs a tokenizer)."""
    if isinstance(data, (str, bytes, dict)) or not isinstance(data, Iterable):
        raise DataError(f"data must be a list of conversations, got {type(data).__name__}")
    stats = LoadStats()
    out: list[Conversation] = []
    seen_ids: set[str] = set()
    seen_keys: dict[str, str] = {}
    for i, record in enumerate(data):
        stats.records += 1
        conv = to_conversation(getter(record), i)
        if not conv.messages or all(not m.content.strip() for m in conv.messages):
            stats.empty_skipped += 1
            continue
        if not keep(conv):
            stats.filtered_out += 1
            continue
        if conv.id in seen_ids:
            raise DataError(f"record {i}: duplicate conversation id {conv.id!r}")
        seen_ids.add(conv.id)
        if dedup:
            key = dedup_key(conv)
            if key in seen_keys:
                stats.duplicates_removed += 1
                stats.duplicate_of[conv.id] = seen_keys[key]
                continue
            seen_keys[key] = conv.id
        out.append(conv)
    stats.kept = len(out)
    if stats.empty_skipped:
        log.info("skipped %d empty conversations", stats.empty_skipped)
    if stats.duplicates_removed:
        log.info("removed %d duplicate conversations", stats.duplicates_removed)
    return out, stats


def render_conversation(conv: Conversation) -> str:
    """The text the model reads: one tagged block per turn."""
    return "\n".join(f"<{m.role}>\n{m.content.strip()}\n</{m.role}>" for m in conv.messages)
