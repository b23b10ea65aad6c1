"""Parse what the LLM wrote, defensively.

Small models forget closing tags, repeat themselves, number lists oddly and
wrap answers in quotes. Every parser here returns None (or an empty list) when
the text does not hold a usable answer, so the caller can re-ask and, in the
end, record an explicit missing value instead of crashing or guessing.
"""

from __future__ import annotations

import re

MAX_ANSWER_CHARS = 400
MAX_NAME_CHARS = 200

_WS = re.compile(r"\s+")
_LIST_ITEM = re.compile(r"^\s*(?:\d+\s*[.):\-]|[-*\u2022])\s*(.+?)\s*$")
_INT = re.compile(r"(?<![\d.])-?\d+(?![\d.]*\d)")
_TAG = re.compile(r"</?[a-zA-Z_]+>")


def clean_text(text: str) -> str:
    """Collapse whitespace and strip stray tags, quotes and markdown emphasis."""
    text = _TAG.sub(" ", text)
    text = _WS.sub(" ", text).strip()
    text = text.strip("*_`\"'\u201c\u201d\u2018\u2019 ")
    text = re.sub(r"^(?:[-*\u2022]|\d+[.)])\s+", "", text)  # a list marker the model added
    return text


def _cut_repetition(text: str) -> str:
    """Drop a sentence the model started repeating (a common small-model failure)."""
    parts = re.split(r"(?<=[.!?])\s+", text)
    seen: set[str] = set()
    kept: list[str] = []
    for part in parts:
        key = part.strip().lower()
        if key in seen:
            break
        seen.add(key)
        kept.append(part)
    return " ".join(kept)


def parse_tagged(text: str | None, tag: str, *, opened: bool = True, max_chars: int = MAX_ANSWER_CHARS) -> str | None:
    """The content of ``<tag>...</tag>``.

    ``opened`` means the prompt's prefill already opened the tag, so the text starts
    inside it. A missing closing tag is tolerated (generation stops on it); the
    answer then ends at the first blank line.
    """
    if text is None:
        return None
    body = text
    if not opened:
        start = body.find(f"<{tag}>")
        if start < 0:
            return None
        body = body[start + len(tag) + 2 :]
    end = body.find(f"</{tag}>")
    if end >= 0:
        body = body[:end]
    else:
        body = body.split("\n\n", 1)[0]
    body = clean_text(_cut_repetition(body))
    if not body or len(body) > max_chars:
        return None
    return body


def parse_facet_answer(continuation: str | None, prefill: str) -> str | None:
    """A facet value: the facet's prefill plus what the model wrote, up to ``</answer>``."""
    body = parse_tagged(continuation, "answer")
    if body is None:
        return None
    if prefill:
        joiner = "" if body[:1] in ",.;:" else " "
        return clean_text(prefill + joiner + body)
    return body


def parse_own_prompt_answer(continuation: str | None) -> str | None:
    """A facet value from a facet's own prompt: an ``<answer>`` tag's content if there is one (the seed's
    convention), else the text up to the first closing tag, cleaned."""
    if continuation is None:
        return None
    if "<answer>" in continuation:
        return parse_tagged(continuation, "answer", opened=False)
    body = continuation.split("</", 1)[0]
    body = clean_text(_cut_repetition(body))
    return body if body and len(body) <= MAX_ANSWER_CHARS else None


def parse_int_in_range(text: str | None, lo: int, hi: int) -> int | None:
    """The first integer in ``text`` if it lies in [lo, hi]; None otherwise."""
    if text is None:
        return None
    body = text.split("</answer>", 1)[0]
    match = _INT.search(body)
    if match is None:
        return None
    value = int(match.group(0))
    return value if lo <= value <= hi else None


def first_sentences(text: str, n: int = 2) -> str:
    """At most ``n`` sentences: small models ramble on after a good first sentence."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:n])


def parse_summary_and_name(continuation: str | None) -> tuple[str, str] | None:
    """``(summary, name)`` from text that starts inside an opened ``<summary>`` tag."""
    if continuation is None:
        return None
    summary = parse_tagged(continuation, "summary", opened=True, max_chars=800)
    name = parse_tagged(continuation, "name", opened=False, max_chars=MAX_NAME_CHARS)
    if name is None:
        # Some models write "Name: ..." instead of the tag.
        match = re.search(r"(?im)^\s*name\s*:\s*(.+)$", continuation)
        if match:
            name = clean_text(match.group(1))[:MAX_NAME_CHARS] or None
    if summary is None or name is None:
        return None
    return summary, name.rstrip(".")


def parse_numbered_list(continuation: str | None, *, max_items: int = 100) -> list[str]:
    """Items of a numbered or bulleted list, de-duplicated, in order.

    The prefill usually opened the list with ``1.``, so the first line may lack
    its number; it is kept when it has text.
    """
    if continuation is None:
        return []
    body = continuation.split("</answer>", 1)[0]
    items: list[str] = []
    seen: set[str] = set()
    for i, line in enumerate(body.splitlines()):
        match = _LIST_ITEM.match(line)
        if match:
            item = match.group(1)
        elif i == 0:
            item = line
        else:
            continue
        item = clean_text(item).rstrip(".")
        key = item.lower()
        if item and len(item) <= MAX_NAME_CHARS and key not in seen:
            seen.add(key)
            items.append(item)
        if len(items) >= max_items:
            break
    return items


def parse_choice(continuation: str | None, candidates: list[str]) -> int | None:
    """Index of the candidate the model chose, by number or by (sub)string match."""
    if continuation is None or not candidates:
        return None
    body = clean_text(continuation.split("</answer>", 1)[0])
    match = re.match(r"^\D{0,12}?(\d+)", body)
    if match:
        k = int(match.group(1))
        if 1 <= k <= len(candidates):
            return k - 1
    low = body.lower()
    for i, cand in enumerate(candidates):
        if cand.lower() in low:
            return i
    for i, cand in enumerate(candidates):
        if low and low in cand.lower():
            return i
    return None
