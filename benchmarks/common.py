"""Shared helpers for benchmarks: a results table printed to stdout and written as JSON."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def salted(conversations: list[Any], salt: str) -> list[Any]:
    """The conversations with ``[salt]`` before their first turn: the same prompts, none of them in vLLM's prefix
    cache from an earlier run (each timed run salts with its own tag, so every run starts cold)."""
    return [c.model_copy(update={"messages": [c.messages[0].model_copy(
        update={"content": f"[{salt}] " + c.messages[0].content})] + c.messages[1:]}) for c in conversations]


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (how busy the shared machine was)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_average_at_end": load_average()}


def report(name: str, rows: list[tuple[str, Any, str]], extra: dict[str, Any] | None = None) -> Path:
    """Print ``(metric, value, unit)`` rows as a table and write them with ``extra`` to results/NAME.json."""
    width = max(len(r[0]) for r in rows)
    print(f"\n== {name} ==")
    for metric, value, unit in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{metric:<{width}}  {shown:>14}  {unit}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(),
                                "rows": [{"metric": m, "value": v, "unit": u} for m, v, u in rows],
                                **(extra or {})}, indent=2, default=str))
    print(f"(written to {path})")
    return path


def quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("vllm", "httpx", "sentence_transformers", "kafka"):
        logging.getLogger(name).setLevel(logging.WARNING)
