"""The one timestamp rule (``clio_stream.domain.timestamps``) that the wire format and the batch loader share."""

from __future__ import annotations

import math
import time

import pytest

from clio_stream.domain.timestamps import parse_timestamp
from clio_stream.stages.prepare import DataError, to_conversation

GOOD = [
    (None, None),
    (0, 0.0),
    (1_714_564_800, 1_714_564_800.0),
    (1_714_564_800.5, 1_714_564_800.5),
    ("2024-05-01T12:00:00Z", 1_714_564_800.0),
    ("2024-05-01T12:00:00z", 1_714_564_800.0),
    ("  2024-05-01T14:00:00+02:00 ", 1_714_564_800.0),
    ("2024-05-01T12:00:00", 1_714_564_800.0),  # naive = UTC
    ("2024-05-01", 1_714_521_600.0),
]

BAD = [
    (True, "not a boolean"),
    ([2024], "not list"),
    ({"t": 1}, "not dict"),
    ("", "unparseable timestamp"),
    ("9" * 100, "unparseable timestamp"),
    ("yesterday", "unparseable timestamp 'yesterday' (expected ISO 8601)"),
    ("2024-13-45T00:00:00Z", "expected ISO 8601"),
    (1_714_564_800_000, "milliseconds?"),
    (10**400, "milliseconds?"),  # beyond float range
    (-5, "out of range"),
    (math.nan, "out of range"),
    (math.inf, "out of range"),
    ("1969-12-31T23:59:59Z", "out of range"),
]


@pytest.mark.parametrize(("value", "expected"), GOOD, ids=[repr(v) for v, _ in GOOD])
def test_accepts_epoch_seconds_and_iso_8601(value: object, expected: float | None) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize(("value", "message"), BAD, ids=[repr(v)[:30] for v, _ in BAD])
def test_refuses_everything_else(value: object, message: str) -> None:
    with pytest.raises(ValueError, match="timestamp") as err:
        parse_timestamp(value)
    assert message in str(err.value)


def test_naive_iso_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_timestamp("2024-05-01T12:00:00") == 1_714_564_800.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_batch_loader_uses_the_same_rule() -> None:
    record = {"id": "a", "conversation": [{"role": "user", "content": "hi"}]}
    assert to_conversation({**record, "created_at": "2024-05-01T12:00:00"}, 0).timestamp == 1_714_564_800.0
    with pytest.raises(DataError, match="record 3.*milliseconds"):
        to_conversation({**record, "timestamp": 1_714_564_800_000}, 3)
