"""Failed LLM requests: a batch run re-asks them, a streaming worker retries the whole batch."""

from __future__ import annotations

from typing import Any

import pytest

from clio_stream.llm.base import Prompt, RequestsFailed, ask
from clio_stream.prompts import AUDIT_CLUSTER
from consumers.processing import LLMUnavailable, _CountingLLM


class FlakyServer:
    """Fails the second request of the first call, then answers everything."""

    model_name = "flaky"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts: Any, sampling: Any, *, seed: Any = None, desc: Any = None) -> list[str | None]:
        self.calls += 1
        answers: list[str | None] = ["4"] * len(prompts)
        if self.calls == 1 and len(prompts) > 1:
            answers[1] = None
            raise RequestsFailed(1, answers)
        return answers

    def count_tokens(self, text: str) -> int:
        return len(text)

    def close(self) -> None:
        pass


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(AUDIT_CLUSTER, {"name": f"n{i}", "summary": "s"}, choices=("1", "2", "3", "4", "5")) for i in range(n)]


def test_a_batch_run_re_asks_only_the_failed_requests() -> None:
    server = FlakyServer()
    out = ask(server, _prompts(3), lambda t, i: int(t) if t else None, {}, retries=2, seed=0)
    assert out == [4, 4, 4] and server.calls == 2


def test_a_failed_request_fails_the_streaming_batch_instead_of_storing_a_gap() -> None:
    with pytest.raises(LLMUnavailable, match="1 of 3 LLM requests failed"):
        _CountingLLM(FlakyServer()).generate(_prompts(3), {})
