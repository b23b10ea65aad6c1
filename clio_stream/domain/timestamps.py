"""The one timestamp rule, shared by the Kafka wire format and the batch loader: epoch seconds, UTC.

Strict on purpose: a conversation's time drives its trend window, so a value in milliseconds, a negative or
non-finite number, or an ISO string without a zone read as local time would put it in the wrong place silently.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

MAX_TIMESTAMP = 253_402_300_800.0  # 10000-01-01: beyond datetime; catches milliseconds
MAX_ISO_CHARS = 64  # longer strings are not ISO 8601 and are not worth parsing


def _short(value: object, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _from_iso(text: str) -> float:
    s = text.strip()
    if not s or len(s) > MAX_ISO_CHARS:
        raise ValueError(f"unparseable timestamp {_short(text)}")
    if s[-1] in "zZ":  # Python 3.10's fromisoformat does not take "Z"
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"unparseable timestamp {_short(text)} (expected ISO 8601)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # naive means UTC, by contract
    return dt.timestamp()


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from a number of seconds or an ISO 8601 string (naive = UTC); None for None.

    Raises ``ValueError`` for anything else: booleans, other types, unparseable strings, and values outside
    [0, year 10000) (the message hints at milliseconds when the value is that large).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("timestamp must be a number or ISO 8601 string, not a boolean")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range: a malformed record, not a crash
            raise ValueError(f"timestamp {_short(value)} out of range (milliseconds? expected epoch seconds)") from None
    elif isinstance(value, str):
        seconds = _from_iso(value)
    else:
        raise ValueError(f"timestamp must be a number or ISO 8601 string, not {type(value).__name__}")
    if not math.isfinite(seconds) or not 0.0 <= seconds < MAX_TIMESTAMP:
        hint = " (milliseconds? expected epoch seconds)" if seconds >= MAX_TIMESTAMP else ""
        raise ValueError(f"timestamp {_short(value)} out of range{hint}")
    return seconds
