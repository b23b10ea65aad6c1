"""Decoding of ``clio.conversations`` records: every bad input gets a specific reason."""

from __future__ import annotations

import math
import time
from typing import Any

import msgpack
import pytest

from clio_stream.streaming.wire_format import (
    MAX_CONTAINERS,
    IncomingConversation,
    InvalidMessage,
    decode_message,
    encode_message,
)
from clio_stream.domain.conversation import Conversation

TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def conv(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "c1", "user_id": "u1", "conversation": list(TURNS)}
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# (value bytes, expected code, substring of the reason)
BAD: list[tuple[str, bytes, str, str]] = [
    ("not msgpack: format byte", b"\xc1", "not_msgpack", "not msgpack"),
    ("not msgpack: truncated", b"\x82\xa2id", "not_msgpack", "truncated"),
    ("not msgpack: trailing bytes", pack(conv()) + b"\x00", "not_msgpack", "trailing"),
    ("not msgpack: json text", b'{"id": "c1"}', "not_msgpack", "not msgpack"),
    ("empty value", b"", "not_msgpack", "empty value"),
    ("invalid utf-8", b"\x81\xa2id\xa2\xff\xfe", "invalid_utf8", "UTF-8"),
    ("not a map: array", pack([1, 2]), "not_a_map", "array, not a map"),
    ("not a map: string", pack("hello"), "not_a_map", "string, not a map"),
    ("not a map: int", pack(7), "not_a_map", "int, not a map"),
    ("non-string map key", b"\x81\x01\x02", "not_msgpack", "non-string key"),
    ("huge array header", b"\xdd\xff\xff\xff\xff", "not_msgpack", "limit"),
    ("huge string header", b"\xdb\x7f\xff\xff\xff", "not_msgpack", "truncated"),
    ("array over the turn limit", pack([0] * 10_001), "not_msgpack", "limit"),
    ("deep nesting", b"\x91" * 2000 + b"\x90", "not_msgpack", "nested too deeply"),
    ("too many containers", pack([[[]] * 5000] * (MAX_CONTAINERS // 5000 + 1)), "not_msgpack", "arrays/maps"),
    ("missing id", pack(conv(id=_DROP)), "bad_id", "missing id"),
    ("null id", pack(conv(id=None)), "bad_id", "missing id"),
    ("empty id", pack(conv(id="")), "bad_id", "empty id"),
    ("blank id", pack(conv(id="   ")), "bad_id", "empty id"),
    ("int id", pack(conv(id=42)), "bad_id", "id must be a string, not int"),
    ("binary id", pack(conv(id=b"c1")), "bad_id", "id must be a string, not binary"),
    ("id too long", pack(conv(id="x" * 257)), "bad_id", "257 characters"),
    ("int user_id", pack(conv(user_id=5)), "bad_user_id", "user_id must be a string"),
    ("user_id too long", pack(conv(user_id="u" * 300)), "bad_user_id", "300 characters"),
    ("missing conversation", pack(conv(conversation=_DROP)), "bad_conversation", "missing conversation"),
    ("null conversation", pack(conv(conversation=None)), "bad_conversation", "missing conversation"),
    ("empty conversation", pack(conv(conversation=[])), "bad_conversation", "empty conversation"),
    ("conversation is a string", pack(conv(conversation="hi")), "bad_conversation", "must be an array"),
    ("conversation is a map", pack(conv(conversation={"role": "user"})), "bad_conversation", "must be an array"),
    ("turn is a string", pack(conv(conversation=["hi"])), "bad_turn", "turn 0 is a string"),
    ("turn is an array", pack(conv(conversation=[["user", "hi"]])), "bad_turn", "not a {role, content} map"),
    ("turn without role", pack(conv(conversation=[{"content": "hi"}])), "bad_turn", "turn 0 has no role"),
    ("turn without content", pack(conv(conversation=[TURNS[0], {"role": "user"}])), "bad_turn", "turn 1 has no content"),
    ("unknown role", pack(conv(conversation=[{"role": "tool", "content": "x"}])), "unknown_role", "unknown role 'tool'"),
    ("role not a string", pack(conv(conversation=[{"role": 1, "content": "x"}])), "unknown_role", "unknown role 1"),
    ("role wrong case", pack(conv(conversation=[{"role": "User", "content": "x"}])), "unknown_role", "unknown role"),
    ("int content", pack(conv(conversation=[{"role": "user", "content": 3}])), "bad_content", "content must be a string, not int"),
    ("null content", pack(conv(conversation=[{"role": "user", "content": None}])), "bad_content", "not null"),
    ("list content", pack(conv(conversation=[{"role": "user", "content": ["a"]}])), "bad_content", "not array"),
    ("bool timestamp", pack(conv(timestamp=True)), "bad_timestamp", "not a boolean"),
    ("garbage timestamp string", pack(conv(timestamp="yesterday")), "bad_timestamp", "unparseable timestamp 'yesterday'"),
    ("empty timestamp string", pack(conv(timestamp="")), "bad_timestamp", "unparseable"),
    ("bad date", pack(conv(timestamp="2024-13-45T00:00:00Z")), "bad_timestamp", "unparseable"),
    ("timestamp as list", pack(conv(timestamp=[1])), "bad_timestamp", "not array"),
    ("timestamp in milliseconds", pack(conv(timestamp=1_714_564_800_000)), "bad_timestamp", "milliseconds"),
    ("negative timestamp", pack(conv(timestamp=-5)), "bad_timestamp", "out of range"),
    ("nan timestamp", pack(conv(timestamp=math.nan)), "bad_timestamp", "out of range"),
    ("metadata not a map", pack(conv(metadata=[1])), "bad_metadata", "metadata must be a map"),
    ("metadata binary value", pack(conv(metadata={"a": b"\x00"})), "bad_metadata", "metadata.a has a non-JSON value of type binary"),
    ("metadata nan", pack(conv(metadata={"x": [math.inf]})), "bad_metadata", "metadata.x[0] is not a finite number"),
    ("metadata too deep", pack(conv(metadata={"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]})), "bad_metadata", "nested deeper"),
]


@pytest.mark.parametrize(("value", "code", "reason"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_has_specific_reason(value: bytes, code: str, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_message(b"c1", value)
    assert info.value.code == code
    assert reason in info.value.reason, info.value.reason
    assert str(info.value) == info.value.reason
    assert len(info.value.reason) < 200


def test_null_value_is_a_tombstone() -> None:
    with pytest.raises(InvalidMessage, match="tombstone"):
        decode_message(b"c1", None)


def test_size_checked_before_decoding() -> None:
    # Valid msgpack, but one byte over the limit: rejected on length alone.
    value = pack(conv(conversation=[{"role": "user", "content": "x" * 2000}]))
    with pytest.raises(InvalidMessage) as info:
        decode_message(None, value, max_bytes=len(value) - 1)
    assert info.value.code == "too_large"
    assert f"{len(value)} bytes" in info.value.reason
    assert decode_message(None, value, max_bytes=len(value)).id == "c1"


def test_oversized_garbage_is_not_decoded() -> None:
    # 2 MiB of nested-array headers would take seconds and ~100 MB to decode.
    t0 = time.perf_counter()
    with pytest.raises(InvalidMessage, match="over the 1048576-byte limit"):
        decode_message(None, b"\x91" * (2 << 20))
    assert time.perf_counter() - t0 < 0.01


def test_max_id_len_is_configurable() -> None:
    value = pack(conv(id="abcdef"))
    with pytest.raises(InvalidMessage, match="over the 5 limit"):
        decode_message(None, value, max_id_len=5)
    assert decode_message(None, value, max_id_len=6).id == "abcdef"


def test_key_mismatch_only_when_required() -> None:
    value = pack(conv())
    assert decode_message(b"other", value).id == "c1"
    with pytest.raises(InvalidMessage) as info:
        decode_message(b"other", value, require_key_match=True)
    assert info.value.code == "key_mismatch"
    assert decode_message(b"c1", value, require_key_match=True).id == "c1"


GOOD_TIMESTAMPS = [
    (None, None),
    (1_714_564_800, 1_714_564_800.0),
    (1_714_564_800.25, 1_714_564_800.25),
    (0, 0.0),
    ("2024-05-01T12:00:00Z", 1_714_564_800.0),
    ("2024-05-01T12:00:00+00:00", 1_714_564_800.0),
    ("2024-05-01T14:00:00+02:00", 1_714_564_800.0),
    ("2024-05-01T12:00:00", 1_714_564_800.0),  # naive = UTC
    ("2024-05-01T12:00:00.5Z", 1_714_564_800.5),
    ("2024-05-01", 1_714_521_600.0),
    (msgpack.Timestamp(1_714_564_800, 0), 1_714_564_800.0),
]


@pytest.mark.parametrize(("ts", "expected"), GOOD_TIMESTAMPS, ids=[repr(t[0]) for t in GOOD_TIMESTAMPS])
def test_timestamps(ts: Any, expected: float | None) -> None:
    msg = decode_message(b"c1", pack(conv(timestamp=ts)))
    assert msg.timestamp == expected


def test_good_message_round_trip() -> None:
    original = {
        "id": "conv-ü-1",
        "user_id": "user-7",
        "conversation": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "héllo 👋", "extra": "ignored"},
            {"role": "assistant", "content": ""},
        ],
        "timestamp": 1_714_564_800.5,
        "metadata": {"lang": "fr", "tags": ["a", 1, 2.5, None, True], "nested": {"k": {"v": 1}}},
        "unknown_field": 123,
    }
    msg = decode_message("conv-ü-1".encode(), encode_message(original))
    assert isinstance(msg, IncomingConversation)
    assert msg.id == "conv-ü-1"
    assert msg.user_id == "user-7"
    assert [(m.role, m.content) for m in msg.conversation] == [
        ("system", "be brief"),
        ("user", "héllo 👋"),
        ("assistant", ""),
    ]
    assert msg.timestamp == 1_714_564_800.5
    assert msg.metadata == original["metadata"]
    # Encoding the model and decoding again gives the same model.
    again = decode_message(None, encode_message(msg))
    assert again == msg
    assert again.model_dump() == msg.model_dump()
    # And it converts into the pipeline's Conversation.
    c = msg.to_conversation()
    assert isinstance(c, Conversation)
    assert c.messages == msg.conversation and c.user_id == "user-7"


def test_minimal_message_defaults() -> None:
    msg = decode_message(None, pack({"id": "c", "conversation": [{"role": "user", "content": "q"}]}))
    assert msg.user_id is None and msg.timestamp is None and msg.metadata == {}


def test_empty_user_id_means_no_user() -> None:
    assert decode_message(None, pack(conv(user_id=""))).user_id is None
    assert decode_message(None, pack(conv(user_id=None))).user_id is None


def test_bytearray_and_memoryview_values() -> None:
    value = pack(conv())
    assert decode_message(None, bytearray(value)).id == "c1"
    assert decode_message(None, memoryview(value)).id == "c1"  # type: ignore[arg-type]


def test_malformed_burst_costs_only_decode_time() -> None:
    """10,000 malformed records: a few microseconds each, no pathological path."""
    import random

    rng = random.Random(7)
    good = pack(conv())
    samples = [rng.randbytes(rng.randint(1, 300)) for _ in range(2500)]
    samples += [good[: rng.randint(1, len(good) - 1)] for _ in range(2500)]  # truncated
    samples += [pack(conv(conversation=[{"role": "bot", "content": "x"}]))] * 2500
    samples += [b"\x91" * 1500] * 2500  # nested too deeply
    t0 = time.perf_counter()
    rejected = 0
    for v in samples:
        try:
            decode_message(None, v)
        except InvalidMessage:
            rejected += 1
    elapsed = time.perf_counter() - t0
    assert rejected == len(samples) == 10_000
    assert elapsed < 2.0, f"10,000 malformed records took {elapsed:.2f}s"
