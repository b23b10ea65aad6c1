"""LLM back-ends behind one interface (``LLMBackend``) and a factory from settings."""

from __future__ import annotations

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
        )
    raise ValueError(f"unknown llm_backend {settings.llm_backend!r}: use 'vllm' or 'openai'")


__all__ = ["AskStats", "LLMBackend", "Prompt", "ask", "make_llm", "sampling_for"]
