"""Conversation metadata as clio-stream keeps it: a bounded map of short strings, and the keys operators declare.

Producers send any JSON map; what is stored is bounded so one record cannot bloat every payload it rides on:
at most ``max_keys`` keys of at most ``max_key_chars`` characters, scalar values only (strings, numbers,
booleans) written as strings of at most ``max_value_chars`` characters. Anything else is dropped or cut, and
each drop is named in a note kept with the conversation, so an operator can see why a value is missing.

Only *declared* keys (``settings.metadata_keys``) are ever shown, each to its role and above, in breakdowns and
filters; undeclared keys are stored but never shown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

MetadataRole = Literal["viewer", "analyst", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 1, "analyst": 2, "admin": 3}


class MetadataKey(BaseModel):
    """One declared metadata key: who may see it in breakdowns and filters, and whether Qdrant indexes it."""

    name: str = Field(min_length=1, max_length=64)
    role: MetadataRole = "viewer"
    indexed: bool = True


def visible_keys(keys: Iterable[MetadataKey], role: str) -> list[str]:
    """The declared keys a caller of ``role`` ('viewer', 'analyst', 'admin') may see, in declaration order."""
    rank = ROLE_RANK.get(role, 0)
    return [k.name for k in keys if ROLE_RANK[k.role] <= rank]


def _as_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return None if not math.isfinite(value) else (str(int(value)) if value.is_integer() else repr(value))
    if isinstance(value, str):
        return value
    return None


def bound_metadata(raw: Mapping[str, Any] | None, *, max_keys: int, max_key_chars: int,
                   max_value_chars: int) -> tuple[dict[str, str], list[str]]:
    """The metadata to store and the notes saying what was dropped or cut (empty when nothing was)."""
    if not raw:
        return {}, []
    kept: dict[str, str] = {}
    notes: list[str] = []
    over = 0
    for key, value in raw.items():
        if not isinstance(key, str) or not key or len(key) > max_key_chars:
            notes.append(f"key {str(key)[:max_key_chars]!r}…: keys must be 1-{max_key_chars} characters; dropped")
            continue
        text = _as_text(value)
        if text is None:
            notes.append(f"key {key!r}: {type(value).__name__} value dropped (only strings, numbers and booleans)")
            continue
        if len(kept) >= max_keys:
            over += 1
            continue
        if len(text) > max_value_chars:
            notes.append(f"key {key!r}: value cut to {max_value_chars} of {len(text)} characters")
            text = text[:max_value_chars]
        kept[key] = text
    if over:
        notes.append(f"{over} key(s) over the limit of {max_keys} dropped")
    return kept, notes
