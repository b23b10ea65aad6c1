"""Polled Kafka records -> validated conversations, or dead letters with a reason.

Pure functions over plain data: nothing here talks to Kafka, so a batch can be
decoded in tests from hand-made records. A bad record never raises; it becomes
a :class:`DeadLetter` and the good records around it go on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from clio_stream.stages.prepare import conversation_content_key
from clio_stream.streaming.wire_format import MAX_BYTES, InvalidMessage, decode_message
from clio_stream.domain.conversation import Conversation

log = logging.getLogger(__name__)


@runtime_checkable
class RecordLike(Protocol):
    """What a batch needs from a Kafka record (``kafka.ConsumerRecord`` has these fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Record:
    """A plain Kafka record, for tests and for code that has no ``ConsumerRecord``."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class DeadLetter:
    """A record that can never be processed, with why (``reason``) and a stable metrics ``code``."""

    record: RecordLike
    reason: str
    code: str


@dataclass(frozen=True)
class DecodedConversation:
    """A valid conversation and the record it came from."""

    record: RecordLike
    conversation: Conversation
    content_hash: str


@dataclass
class DecodedBatch:
    """A batch split into good conversations (unique ids) and dead letters."""

    conversations: list[DecodedConversation]
    dead_letters: list[DeadLetter]
    duplicates: int = 0  # records superseded by a later record with the same id


def _has_text(conv: Conversation) -> bool:
    return any(m.content.strip() for m in conv.messages)


def decode_records(records: Sequence[RecordLike], *, max_bytes: int = MAX_BYTES) -> DecodedBatch:
    """Decode every record; duplicates by id keep the last one (it is the newest version)."""
    by_id: dict[str, DecodedConversation] = {}
    dead: list[DeadLetter] = []
    duplicates = 0
    for rec in records:
        try:
            incoming = decode_message(rec.key, rec.value, max_bytes=max_bytes)
        except InvalidMessage as exc:
            dead.append(DeadLetter(rec, exc.reason, exc.code))
            continue
        conv = incoming.to_conversation()
        if not _has_text(conv):
            dead.append(DeadLetter(rec, "conversation has no text (every turn is empty)", "empty_conversation"))
            continue
        if conv.id in by_id:
            duplicates += 1
            del by_id[conv.id]  # re-insert below: order follows the last occurrence
        by_id[conv.id] = DecodedConversation(rec, conv, conversation_content_key(conv))
    if dead:
        log.info("%d of %d records are dead letters", len(dead), len(records))
    return DecodedBatch(list(by_id.values()), dead, duplicates)


def offset_ranges(records: Sequence[RecordLike]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (first, last) offset among ``records``: what to commit or seek back to."""
    ranges: dict[tuple[str, int], tuple[int, int]] = {}
    for rec in records:
        tp = (rec.topic, rec.partition)
        lo, hi = ranges.get(tp, (rec.offset, rec.offset))
        ranges[tp] = (min(lo, rec.offset), max(hi, rec.offset))
    return ranges
