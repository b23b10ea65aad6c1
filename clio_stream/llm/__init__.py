"""LLM back-ends behind one interface (``LLMBackend``), the factory from settings, and the adapter for given engines.

Every process builds its LLM with ``make_llm``; ``as_llm`` is the one place that accepts what a caller hands
``run_clio`` (nothing, a back-end, or a loaded ``vllm.LLM``).
"""

from __future__ import annotations

from typing import Any

from clio_stream.llm.base import AskStats, LLMBackend, Prompt, ask, sampling_for
from clio_stream.settings import ClioSettings


def make_llm(settings: ClioSettings) -> LLMBackend:
    """Build the back-end the settings name, resolving packaged model names to local folders."""
    from clio_stream.devstack.assets import resolve_model

    if settings.llm_backend == "vllm":
        from clio_stream.llm.vllm_local import VLLMLocal

        return VLLMLocal(
            resolve_model(settings.llm_model, "llm"),
            max_model_len=settings.llm_max_model_len,
            dtype=settings.llm_dtype,
            seed=settings.seed,
            kv_cache_gib=settings.llm_kv_cache_gib,
            tokenizer_args=settings.tokenizer_args,
            show_progress=settings.show_progress,
            **settings.llm_engine_args,
        )
    if settings.llm_backend == "openai":
        from clio_stream.llm.openai_api import OpenAICompatible

        if not settings.llm_base_url:
            raise ValueError("llm_backend='openai' needs llm_base_url (CLIO_LLM_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        model = settings.llm_model
        try:
            model = resolve_model(model, "llm")
        except Exception:
            pass
        return OpenAICompatible(
            model,
            settings.llm_base_url,
            api_key=settings.llm_api_key,
            max_concurrency=settings.llm_max_concurrency,
            timeout_s=settings.llm_request_timeout_s,
            send_seed=settings.llm_send_seed,
            show_progress=settings.show_progress,
            tokenizer_args=settings.tokenizer_args,
        )
    raise ValueError(f"unknown llm_backend {settings.llm_backend!r}: use 'vllm' or 'openai'")


def as_llm(llm: Any, settings: ClioSettings) -> LLMBackend:
    """``llm`` as a back-end: built from ``settings`` when None, used as it is, or a ``vllm.LLM`` wrapped."""
    if llm is None:
        return make_llm(settings)
    if hasattr(llm, "count_tokens") and hasattr(llm, "generate"):
        return llm
    if hasattr(llm, "get_tokenizer") and hasattr(llm, "generate"):  # a vllm.LLM, as the seed took
        from clio_stream.llm.vllm_local import VLLMLocal

        return VLLMLocal.from_engine(llm, show_progress=settings.show_progress, tokenizer_args=settings.tokenizer_args)
    raise TypeError(f"llm must be an LLM back-end or a vllm.LLM, got {type(llm).__name__}")


__all__ = ["AskStats", "LLMBackend", "Prompt", "as_llm", "ask", "make_llm", "sampling_for"]
