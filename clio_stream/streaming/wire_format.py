"""Decode and validate one Kafka record of topic ``clio.conversations``.

The value is a msgpack map::

    {"id": str, "user_id": str | None,
     "conversation": [{"role": "user"|"assistant"|"system", "content": str}, ...],
     "timestamp": int | float | str (ISO 8601, optional),
     "metadata": map (optional)}

Anything else raises :class:`InvalidMessage` with a short reason (for the
dead-letter record and the logs) and a stable ``code`` (for metrics labels).

Hostile input must not cost more than its decode time or blow memory: the size
is checked before decoding, msgpack runs with explicit length limits, and a
hook counts containers so 1 MiB of nested empty arrays (otherwise ~70 MB of
Python lists) is stopped after ``MAX_CONTAINERS``. Validation is hand-written
(no pydantic error path) because it is the hot path for a malformed burst.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
from pydantic import BaseModel, ConfigDict, Field

from clio_stream.domain.conversation import Conversation, Message
from clio_stream.domain.timestamps import parse_timestamp

MAX_BYTES = 1 << 20  # 1 MiB
MAX_ID_LEN = 256
MAX_TURNS = 10_000  # also the msgpack array/map length limit
MAX_CONTAINERS = 20_000  # arrays + maps in one value
MAX_METADATA_DEPTH = 16
_ROLES = ("user", "assistant", "system")


class InvalidMessage(ValueError):
    """A record that can never be processed; goes to the dead-letter topic.

    ``reason`` is human-readable and specific; ``code`` is one of a small fixed
    set (``too_large``, ``not_msgpack``, ``invalid_utf8``, ``not_a_map``,
    ``bad_id``, ``bad_user_id``, ``bad_conversation``, ``bad_turn``,
    ``unknown_role``, ``bad_content``, ``bad_timestamp``, ``bad_metadata``,
    ``key_mismatch``) for metrics.
    """

    def __init__(self, reason: str, code: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class IncomingConversation(BaseModel):
    """A validated conversation record as it arrived from Kafka."""

    model_config = ConfigDict(extra="ignore")

    id: str
    user_id: str | None = None
    conversation: list[Message]
    timestamp: float | None = None  # epoch seconds, UTC
    metadata: dict[str, Any] = Field(default_factory=dict)

    def to_conversation(self) -> Conversation:
        """The pipeline's ``Conversation`` (``conversation`` becomes ``messages``)."""
        return Conversation(
            id=self.id,
            messages=list(self.conversation),
            user_id=self.user_id,
            timestamp=self.timestamp,
            metadata=dict(self.metadata),
        )


def _short(v: object, n: int = 40) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


_TYPE_NAMES: dict[type, str] = {dict: "map", list: "array", str: "string", bytes: "binary"}


def _type(v: object) -> str:
    if v is None:
        return "null"
    return _TYPE_NAMES.get(type(v), type(v).__name__)


def _unpack(value: bytes, max_bytes: int) -> Any:
    count = 0

    def count_container(obj: Any) -> Any:
        nonlocal count
        count += 1
        if count > MAX_CONTAINERS:
            raise InvalidMessage(
                f"msgpack value has over {MAX_CONTAINERS} arrays/maps", "not_msgpack"
            )
        return obj

    try:
        return msgpack.unpackb(
            value,
            raw=False,
            strict_map_key=True,
            list_hook=count_container,
            object_hook=count_container,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_ext_len=max_bytes,
            max_array_len=MAX_TURNS,
            max_map_len=MAX_TURNS,
        )
    except InvalidMessage:
        raise
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"invalid UTF-8 in a msgpack string: {exc.reason}", "invalid_utf8") from None
    except msgpack.ExtraData:
        raise InvalidMessage("not msgpack: trailing bytes after the value", "not_msgpack") from None
    except msgpack.StackError:
        raise InvalidMessage("not msgpack: nested too deeply", "not_msgpack") from None
    except msgpack.FormatError:
        raise InvalidMessage("not msgpack: invalid format byte", "not_msgpack") from None
    except (ValueError, TypeError, OverflowError) as exc:
        msg = str(exc)
        if "incomplete input" in msg:
            raise InvalidMessage("not msgpack: truncated value", "not_msgpack") from None
        if "exceeds max_" in msg:
            raise InvalidMessage(f"msgpack length limit exceeded: {msg}", "not_msgpack") from None
        if "not allowed for map key" in msg:
            raise InvalidMessage("msgpack map has a non-string key", "not_msgpack") from None
        raise InvalidMessage(f"not msgpack: {_short(msg, 80)}", "not_msgpack") from None


def _parse_timestamp(ts: Any) -> float | None:
    """``domain.timestamps.parse_timestamp`` plus msgpack's own timestamp type, failures as ``bad_timestamp``."""
    if isinstance(ts, msgpack.Timestamp):
        ts = ts.to_unix()
    elif ts is not None and not isinstance(ts, (bool, int, float, str)):
        raise InvalidMessage(f"timestamp must be a number or ISO 8601 string, not {_type(ts)}", "bad_timestamp")
    try:
        return parse_timestamp(ts)
    except ValueError as exc:
        raise InvalidMessage(str(exc), "bad_timestamp") from None


def _check_json_like(v: Any, path: str, depth: int) -> None:
    """Metadata goes into Qdrant payloads and JSON APIs: only JSON types, bounded depth."""
    if depth > MAX_METADATA_DEPTH:
        raise InvalidMessage(
            f"metadata nested deeper than {MAX_METADATA_DEPTH} levels (at {_clip(path, 60)})", "bad_metadata"
        )
    if v is None or isinstance(v, (str, bool, int)):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidMessage(f"{_clip(path, 60)} is not a finite number", "bad_metadata")
        return
    if isinstance(v, dict):
        for k, sub in v.items():
            if not isinstance(k, str):
                raise InvalidMessage(f"{_clip(path, 60)} has a non-string key {_short(k)}", "bad_metadata")
            _check_json_like(sub, f"{path}.{k}", depth + 1)
        return
    if isinstance(v, list):
        for i, sub in enumerate(v):
            _check_json_like(sub, f"{path}[{i}]", depth + 1)
        return
    raise InvalidMessage(f"{_clip(path, 60)} has a non-JSON value of type {_type(v)}", "bad_metadata")


def decode_message(
    key: bytes | None,
    value: bytes | None,
    *,
    max_bytes: int = MAX_BYTES,
    max_id_len: int = MAX_ID_LEN,
    require_key_match: bool = False,
) -> IncomingConversation:
    """Decode and validate one record value; raise ``InvalidMessage`` if it is unusable.

    ``key`` is the conversation id by contract. It is only compared with the
    ``id`` field when ``require_key_match`` is set, since a producer keying by
    another field (e.g. user, for ordering) still sends a valid conversation.
    """
    if value is None:
        raise InvalidMessage("value is null (tombstone)", "not_msgpack")
    size = len(value)
    if size > max_bytes:  # before decoding: never spend work on oversized input
        raise InvalidMessage(f"value is {size} bytes, over the {max_bytes}-byte limit", "too_large")
    if size == 0:
        raise InvalidMessage("empty value", "not_msgpack")

    obj = _unpack(bytes(value), max_bytes)
    if not isinstance(obj, dict):
        raise InvalidMessage(f"value is a msgpack {_type(obj)}, not a map", "not_a_map")

    # id
    cid = obj.get("id")
    if cid is None:
        raise InvalidMessage("missing id", "bad_id")
    if not isinstance(cid, str):
        raise InvalidMessage(f"id must be a string, not {_type(cid)}", "bad_id")
    if not cid.strip():
        raise InvalidMessage("empty id", "bad_id")
    if len(cid) > max_id_len:
        raise InvalidMessage(f"id is {len(cid)} characters, over the {max_id_len} limit", "bad_id")
    if require_key_match and key is not None:
        if bytes(key) != cid.encode("utf-8"):
            raise InvalidMessage(f"key {_short(bytes(key))} does not match id {_short(cid)}", "key_mismatch")

    # user_id
    uid = obj.get("user_id")
    if uid is not None:
        if not isinstance(uid, str):
            raise InvalidMessage(f"user_id must be a string or null, not {_type(uid)}", "bad_user_id")
        if len(uid) > max_id_len:
            raise InvalidMessage(
                f"user_id is {len(uid)} characters, over the {max_id_len} limit", "bad_user_id"
            )
        uid = uid or None  # "" is no user, not one shared anonymous user

    # conversation
    if "conversation" not in obj or obj["conversation"] is None:
        raise InvalidMessage("missing conversation", "bad_conversation")
    turns = obj["conversation"]
    if not isinstance(turns, list):
        raise InvalidMessage(f"conversation must be an array, not {_type(turns)}", "bad_conversation")
    if not turns:
        raise InvalidMessage("empty conversation", "bad_conversation")
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise InvalidMessage(f"turn {i} is a {_type(turn)}, not a {{role, content}} map", "bad_turn")
        if "role" not in turn or "content" not in turn:
            missing = "role" if "role" not in turn else "content"
            raise InvalidMessage(f"turn {i} has no {missing}", "bad_turn")
        role = turn["role"]
        if role not in _ROLES or not isinstance(role, str):
            raise InvalidMessage(
                f"turn {i} has unknown role {_short(role)} (expected user, assistant or system)",
                "unknown_role",
            )
        content = turn["content"]
        if not isinstance(content, str):
            raise InvalidMessage(f"turn {i} content must be a string, not {_type(content)}", "bad_content")
        messages.append(Message.model_construct(role=role, content=content))

    timestamp = _parse_timestamp(obj.get("timestamp"))

    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise InvalidMessage(f"metadata must be a map, not {_type(metadata)}", "bad_metadata")
    else:
        _check_json_like(metadata, "metadata", 1)

    # Everything is validated above; skip pydantic's second pass (hot path).
    return IncomingConversation.model_construct(
        id=cid, user_id=uid, conversation=messages, timestamp=timestamp, metadata=metadata
    )


def encode_message(conv: Mapping[str, Any] | BaseModel) -> bytes:
    """msgpack-encode a conversation map (or model) as producers should send it.

    No validation: tests use it to build malformed records too.
    """
    data = conv.model_dump() if isinstance(conv, BaseModel) else dict(conv)
    return msgpack.packb(data, use_bin_type=True)
