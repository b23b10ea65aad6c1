"""Real models shared by the integration tests: one vLLM engine and one embedding model per session.

Starting the engine costs about a minute on a 2-core CPU, so every test that
needs the LLM path uses this one instance.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def vllm_engine() -> Iterator["VLLMLocal"]:  # noqa: F821
    """The real in-process vLLM engine with the packaged SmolLM2-135M-Instruct."""
    pytest.importorskip("vllm", reason="vLLM is not installed (run scripts/setup.sh)")
    from clio_stream.devstack.assets import resolve_model
    from clio_stream.llm.vllm_local import VLLMLocal

    engine = VLLMLocal(resolve_model("smollm2-135m-instruct", "llm"), max_model_len=4096, seed=0,
                       kv_cache_gib=1.0, show_progress=False)
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def minilm() -> "Embedder":  # noqa: F821
    """A small real sentence-transformers model (fast on CPU) for pipeline tests."""
    from clio_stream.embedding import Embedder

    return Embedder("all-MiniLM-L6-v2", batch_size=64)
