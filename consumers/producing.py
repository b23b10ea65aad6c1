"""Records from a file -> messages on the conversation topic (the contract's msgpack map, key = id).

Any record ``clio_stream.stages.prepare`` accepts is turned into the contract's shape:
maps with ``conversation``/``messages`` keep their ``id`` (and user id,
timestamp, metadata); seed-style lists of turns, and maps without an id, get
the id ``f"{file stem}-{i}"``. ShareGPT-style turns are translated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clio_stream.stages.prepare import DataError, to_conversation
from clio_stream.streaming.wire_format import encode_message

log = logging.getLogger(__name__)

_ID_KEYS = ("id", "chat_id", "conversation_id")


@dataclass(frozen=True)
class Message:
    """One message ready to send."""

    key: str
    value: bytes


def _json_safe(v: Any) -> Any:
    """Parquet can hold datetimes; msgpack cannot."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def record_to_message(record: Any, index: int, stem: str) -> Message:
    """The contract map of one record; raises ``DataError`` for a record that is not a conversation."""
    conv = to_conversation(record, index)
    has_id = isinstance(record, dict) and any(record.get(k) is not None for k in _ID_KEYS)
    cid = conv.id if has_id else f"{stem}-{index}"
    body: dict[str, Any] = {
        "id": cid,
        "user_id": conv.user_id,
        "conversation": [{"role": m.role, "content": m.content} for m in conv.messages],
    }
    if conv.timestamp is not None:
        body["timestamp"] = conv.timestamp
    if conv.metadata:
        body["metadata"] = _json_safe(conv.metadata)
    return Message(cid, encode_message(body))


def to_messages(records: Iterable[Any], stem: str, skipped: list[str] | None = None) -> Iterator[Message]:
    """Messages for every record that is a conversation; the others are logged (and listed in ``skipped``)."""
    for i, record in enumerate(records):
        try:
            yield record_to_message(record, i, stem)
        except DataError as exc:
            log.warning("skipping %s", exc)
            if skipped is not None:
                skipped.append(str(exc))


def produce(producer: Any, topic: str, messages: Iterable[Message], *, total: int | None = None,
            progress: bool = True) -> int:
    """Send every message (key = conversation id) with a progress bar, flush, return the count sent."""
    from tqdm.auto import tqdm

    futures: list[Any] = []
    with tqdm(total=total, disable=not progress, desc=f"produce {topic}", unit="msg") as bar:
        for msg in messages:
            futures.append(producer.send(topic, key=msg.key, value=msg.value))
            bar.update(1)
    producer.flush()
    failed = [f for f in futures if f.failed()]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(futures)} messages were not acknowledged: {failed[0].exception!r}")
    return len(futures)

