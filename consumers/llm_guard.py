"""The LLM as a worker sees it: every failure sorted into *retry the batch later* or *this record can never pass*.

The distinction is what keeps a partition moving without losing data: an outage (:class:`LLMUnavailable`) is
retried and never dead-lettered; a prompt refused for good (:class:`RecordRejected`) sends its record, alone, to
the dead-letter topic (``consumers.poison``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from clio_stream.llm.base import LLMBackend, Prompt, PromptsRejected


class LLMUnavailable(RuntimeError):
    """The LLM back-end failed or answered nothing at all: retry the batch later, do not commit."""


class RecordRejected(RuntimeError):
    """The LLM refused a prompt of this batch for good (e.g. too long for the model): asking again cannot help.

    Not retryable: the worker processes the batch record by record and dead-letters the record whose
    prompt is refused, so one record never blocks its partition.
    """


class GuardedLLM:
    """Counts generate calls, and sorts the back-end's failures into outage and rejection.

    ``PromptsRejected`` (a prompt refused for good) becomes :class:`RecordRejected`.
    Any other failure (``RequestsFailed`` from a server back-end, a tokenizer
    server that cannot be reached, any other exception) and a call whose every
    answer is None mean the back-end is down or failing: storing those missing
    values would lose the conversations, so they become :class:`LLMUnavailable`
    and the batch is retried.
    """

    def __init__(self, inner: LLMBackend) -> None:
        self.inner = inner
        self.model_name = getattr(inner, "model_name", "llm")
        self.calls = 0
        self.prompts = 0

    def generate(self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], *, seed: int | None = None,
                 desc: str | None = None) -> list[str | None]:
        self.calls += 1
        self.prompts += len(prompts)
        try:
            out = self.inner.generate(prompts, sampling, seed=seed, desc=desc)
        except PromptsRejected as exc:
            raise RecordRejected(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - any other back-end failure means: retry later
            raise LLMUnavailable(f"LLM generate failed: {type(exc).__name__}: {exc}"[:300]) from exc
        if prompts and all(text is None for text in out):
            raise LLMUnavailable(f"LLM answered none of {len(prompts)} prompts")
        return out

    @property
    def tokenizer(self) -> Any:
        """The back-end's chat tokenizer, for facets with their own prompt function (None when it has none)."""
        return getattr(self.inner, "tokenizer", None)

    def count_tokens(self, text: str) -> int:
        try:
            return self.inner.count_tokens(text)
        except Exception as exc:  # noqa: BLE001 - e.g. the server's /tokenize is down: an outage, not bad data
            raise LLMUnavailable(f"LLM tokenizer failed: {type(exc).__name__}: {exc}"[:300]) from exc

    def close(self) -> None:  # the caller owns the back-end
        return None
