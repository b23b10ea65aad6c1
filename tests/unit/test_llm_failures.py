"""Failed LLM requests: a batch run re-asks them, a streaming worker retries the whole batch."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from clio_stream.llm.base import AskStats, Prompt, PromptsRejected, RequestsFailed, ask
from clio_stream.llm.openai_api import rejection_reason
from clio_stream.llm.prompts import AUDIT_CLUSTER
from consumers.llm_guard import GuardedLLM, LLMUnavailable, RecordRejected


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
        GuardedLLM(FlakyServer()).generate(_prompts(3), {})


# --------------------------------------------------------------------------- outage or bad record


class RefusingServer(FlakyServer):
    """Refuses the prompt at index 0 of every call for good (as vLLM refuses a prompt over its context)."""

    def generate(self, prompts: Any, sampling: Any, *, seed: Any = None, desc: Any = None) -> list[str | None]:
        self.calls += 1
        raise PromptsRejected({0: "prompt too long"}, [None] + ["4"] * (len(prompts) - 1))


def test_a_refused_prompt_is_a_bad_record_not_an_outage() -> None:
    with pytest.raises(RecordRejected, match="prompt too long"):
        GuardedLLM(RefusingServer()).generate(_prompts(3), {})


def test_a_batch_run_does_not_re_ask_a_refused_prompt() -> None:
    server, stats = RefusingServer(), AskStats()
    out = ask(server, _prompts(3), lambda t, i: int(t) if t else None, {}, retries=3, seed=0, stats=stats)
    assert out == [None, 4, 4] and server.calls == 1 and stats.rejected == 1 and stats.unparseable == 0


def test_a_tokenizer_that_cannot_be_reached_is_an_outage() -> None:
    class NoTokenizer(FlakyServer):
        def count_tokens(self, text: str) -> int:
            raise httpx.ConnectError("connection refused")

    with pytest.raises(LLMUnavailable, match="tokenizer"):
        GuardedLLM(NoTokenizer()).count_tokens("hello")


def _status_error(status: int, message: str) -> openai.APIStatusError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))
    cls = {400: openai.BadRequestError, 404: openai.NotFoundError, 413: openai.APIStatusError,
           422: openai.UnprocessableEntityError, 500: openai.InternalServerError}[status]
    return cls(message, response=response, body=None)


@pytest.mark.parametrize(("status", "message", "refused"), [
    (400, "This model's maximum context length is 4096 tokens. However, you requested 6100 tokens", True),
    (400, "The decoder prompt (length 5000) is longer than the maximum model length of 4096.", True),
    (413, "Request Entity Too Large", True),
    (400, "Unknown sampling parameter 'repetition_penaltyy'", False),  # the set-up is wrong: every prompt fails
    (404, "The model `nope` does not exist.", False),
    (500, "Internal Server Error", False),
])
def test_only_prompt_specific_refusals_are_rejections(status: int, message: str, refused: bool) -> None:
    assert (rejection_reason(_status_error(status, message)) is not None) is refused
    assert rejection_reason(openai.APIConnectionError(request=httpx.Request("POST", "http://x"))) is None
