"""The status point each conversation leaves in the store: pending when polled, processed, or dead-lettered.

Only the settings decide whether the point keeps the raw text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clio_stream.domain.metadata import bound_metadata
from clio_stream.privacy.users import user_key_of
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import ConversationRecord, ConversationStatus
from consumers.decoding import DeadLetter, DecodedBatch, DecodedConversation


def conversation_record(item: DecodedConversation, settings: ClioSettings,
                        status: ConversationStatus) -> ConversationRecord:
    """The status point of one conversation; raw text only when the settings allow it."""
    conv = item.conversation
    raw = None
    if settings.store_raw_conversations:
        raw = [{"role": m.role, "content": m.content} for m in conv.messages]
    rec = item.record
    metadata, notes = bound_metadata(conv.metadata, max_keys=settings.metadata_max_keys,
                                     max_key_chars=settings.metadata_max_key_chars,
                                     max_value_chars=settings.metadata_max_value_chars)
    extra: dict[str, Any] = {"source": {"topic": rec.topic, "partition": int(rec.partition), "offset": int(rec.offset)}}
    if metadata:
        extra["metadata"] = metadata
    if notes:
        extra["metadata_notes"] = notes
    return ConversationRecord(
        conversation_id=conv.id,
        status=status,
        user_hash=user_key_of(conv, settings.user_id_hash_key),
        timestamp=conv.timestamp,
        content_hash=item.content_hash,
        raw=raw,
        extra=extra,
    )


def pending_records(decoded: DecodedBatch, settings: ClioSettings) -> list[ConversationRecord]:
    """Status ``pending`` for every valid conversation of a polled batch (written before processing)."""
    return [conversation_record(item, settings, "pending") for item in decoded.conversations]


def dead_lettered_records(decoded: DecodedBatch, dead: Sequence[DeadLetter],
                          settings: ClioSettings) -> list[ConversationRecord]:
    """Status ``dead_lettered`` for the decoded conversations whose records went to the DLQ after all.

    They were marked ``pending`` with the batch; without this they would stay pending for good.
    """
    gone = {(d.record.topic, d.record.partition, d.record.offset) for d in dead}
    return [conversation_record(item, settings, "dead_lettered") for item in decoded.conversations
            if (item.record.topic, item.record.partition, item.record.offset) in gone]
