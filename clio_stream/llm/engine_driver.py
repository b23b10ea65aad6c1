"""One thread that owns an in-process ``vllm.LLM``: callers from any thread add requests, it steps the engine.

``vllm.LLM.generate`` runs the engine until *its* requests finish and is not safe to call from two threads at
once, so a worker with two batches in flight would wait for the first batch's last (re-asked) prompt before
the next batch's prompts enter the engine. Here every caller's prompts join the one running batch as they
come (vLLM's continuous batching, as a server does it): ``submit`` queues them, the driver thread adds them
with ``LLM.enqueue`` between engine steps, and each request's future resolves when it finishes. All engine
calls happen on the driver thread under ``lock``; whoever holds the lock (``generate_raw`` in the
benchmarks) may use the engine directly meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5


@dataclass
class _Submission:
    texts: list[str]
    params: list[Any]  # vllm.SamplingParams, one per text
    futures: list[Future[Any]]


class EngineClosed(RuntimeError):
    """The engine was shut down while requests were waiting (the caller treats it as an outage)."""


class EngineDriver:
    """Continuous batching over an in-process ``vllm.LLM`` for callers on any thread."""

    def __init__(self, llm: Any, lock: threading.Lock | None = None) -> None:
        self._llm = llm
        self.lock = lock or threading.Lock()
        self._inbox: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._waiting: dict[str, Future[Any]] = {}  # external request id -> its caller's future
        self._internal: dict[str, str] = {}  # external -> the engine's internal id (to abort)
        self._closed = threading.Event()
        # Prompt tokens of finished requests, and how many of them the prefix cache served.
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self._thread = threading.Thread(target=self._loop, name="vllm-engine-driver", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str], params: Sequence[Any]) -> list[Future[Any]]:
        """Queue prompts (one ``SamplingParams`` each); each future resolves to its ``RequestOutput``."""
        if self._closed.is_set():
            raise EngineClosed("the vLLM engine is shut down")
        futures: list[Future[Any]] = [Future() for _ in texts]
        if texts:
            self._inbox.put(_Submission(list(texts), list(params), futures))
        return futures

    def _loop(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=_IDLE_WAIT_S) if not self._waiting else self._inbox.get_nowait()
            except queue.Empty:
                item = False  # nothing new
            while item is not False:
                if item is None:
                    self._fail_all(EngineClosed("the vLLM engine is shut down"))
                    return
                self._add(item)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = False
            if self._waiting:
                self._step()

    def _add(self, sub: _Submission) -> None:
        try:
            with self.lock:
                ids = self._llm.enqueue(sub.texts, sub.params, use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - the callers get the error, the driver goes on
            for fut in sub.futures:
                fut.set_exception(exc)
            return
        for rid, fut in zip(ids, sub.futures):
            # ``enqueue`` returns the engine's internal ids ("<external>-<8 random chars>"); outputs carry the
            # external one, which ``vllm.LLM`` numbers from its own counter (so it holds no "-").
            external = str(rid).split("-", 1)[0]
            self._waiting[external] = fut
            self._internal[external] = str(rid)

    def _step(self) -> None:
        try:
            with self.lock:
                outputs = self._llm.llm_engine.step()
        except Exception as exc:  # noqa: BLE001 - an engine that fails a step fails its requests
            log.error("vLLM engine step failed: %s", exc)
            self._fail_all(exc)
            return
        for out in outputs:
            if not getattr(out, "finished", False):
                continue
            fut = self._waiting.pop(str(out.request_id), None)
            self._internal.pop(str(out.request_id), None)
            if fut is None:
                continue
            prompt_ids = getattr(out, "prompt_token_ids", None) or ()
            self.prompt_tokens += len(prompt_ids)
            self.cached_prompt_tokens += int(getattr(out, "num_cached_tokens", 0) or 0)
            fut.set_result(out)

    def _fail_all(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        internal, self._internal = self._internal, {}
        if waiting:
            try:
                with self.lock:
                    self._llm.llm_engine.abort_request([internal.get(k, k) for k in waiting])
            except Exception:  # noqa: BLE001 - best effort: the engine may be gone
                log.debug("aborting %d requests failed", len(waiting), exc_info=True)
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(exc)

    def close(self, timeout: float = 10.0) -> None:
        """Fail what is still waiting and stop the thread (the engine itself is shut down by its owner)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._inbox.put(None)
        self._thread.join(timeout)
