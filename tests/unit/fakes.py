"""Scripted stand-ins for the LLM and the embedder, for unit tests of pure pipeline logic only.

The real engine and model are exercised by tests/integration; these let the
logic tests run in milliseconds and check behaviour under controlled answers,
including a model that answers garbage.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from clio_stream.llm.base import Prompt


class ScriptedLLM:
    """Answers each prompt with ``script(template_name, values, rng)``."""

    model_name = "scripted"

    def __init__(self, script: Callable[[str, Mapping[str, str], random.Random], str | None], seed: int = 0) -> None:
        self.script = script
        self.rng = random.Random(seed)
        self.calls: list[str] = []

    def generate(self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], *, seed: int | None = None,
                 desc: str | None = None) -> list[str | None]:
        self.calls.extend(p.template.name for p in prompts)
        out = []
        for p in prompts:
            text = self.script(p.template.name, p.values, self.rng)
            if p.choices and self.script is not garbage_script:
                # Like vLLM's structured outputs: the answer is always one of the choices.
                text = text if text in p.choices else self.rng.choice(p.choices)
            out.append(text)
        return out

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def close(self) -> None:
        pass


class HashEmbedder:
    """Deterministic unit vectors: texts sharing their first word land near each other."""

    model_name = "hash"
    dim = 32

    def encode(self, texts: Sequence[str], *, desc: str | None = None) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            words = t.lower().split() or [""]
            for w, weight in ((words[0], 3.0), (t, 1.0)):
                seed = int(hashlib.md5(w.encode()).hexdigest()[:8], 16)
                out[i] += weight * np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def sensible_script(name: str, values: Mapping[str, str], rng: random.Random) -> str | None:
    """A well-behaved model: follows every format."""
    if name in ("facet", "facet_text", "facet_shared"):
        if "scale of 1 to 5" in values.get("question", ""):  # the shared layout's choices fix its digit instead
            return str(rng.randint(1, 5))
        topic = values["conversation"].split()[1] if len(values["conversation"].split()) > 1 else "misc"
        return f" help with {topic} things." + ("" if name == "facet_shared" else "</answer>")
    if name in ("cluster_summary", "parent_summary", "cluster_name", "parent_name"):
        first = values.get("inside", values.get("children", "- x")).splitlines()[0].lstrip("- ").split(":")[0]
        if name.endswith("summary"):
            return f"Requests about {first[:40]}.</summary>"
        return f"{first[:40]} help"
    if name == "propose_parents":
        n = int(values["n"])
        lines = [ln.split(". ", 1)[-1].split(":")[0] for ln in values["clusters"].splitlines()]
        return " " + "\n".join(f"{i + 1}. Broad {lines[i % len(lines)].split()[0]}" for i in range(n)) + "\n</answer>"
    if name == "dedup_parents":
        names = [ln.split(". ", 1)[-1] for ln in values["names"].splitlines()]
        keep = names[: max(2, int(values["n"]))]
        return " " + "\n".join(f"{i + 1}. {n}" for i, n in enumerate(keep)) + "\n</answer>"
    if name == "assign_parent":
        return str(rng.randint(1, len(values["candidates"].splitlines())))
    if name == "audit_cluster":
        return "5"
    return None


def garbage_script(name: str, values: Mapping[str, str], rng: random.Random) -> str | None:
    """A broken model: nothing it says parses (except facet text, which is free-form)."""
    if name in ("facet", "facet_text") and "scale of 1 to 5" not in values["question"]:
        return f" talk about item {rng.randint(0, 3)}</answer>"
    return rng.choice([None, "", "I cannot help with that.", "42"])
