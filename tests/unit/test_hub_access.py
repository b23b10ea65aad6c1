"""Hub access: offline for packaged models and local folders, allowed for a hub model the user names (the GPU path).

Pure logic plus the generated vLLM server command line; nothing here downloads anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from clio_stream.cli import main as cli_main
from clio_stream.devstack import hub
from clio_stream.devstack.vllm_server import engine_flags, vllm_server_argv
from clio_stream.settings import ClioSettings


@pytest.fixture
def no_user_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(hub.OFFLINE_VAR, raising=False)


def test_packaged_and_local_models_stay_offline_a_named_hub_model_does_not(tmp_path: Path, no_user_choice) -> None:
    assert not hub.is_hub_model("SmolLM2-135M-Instruct") and not hub.is_hub_model("all-mpnet-base-v2")
    assert not hub.is_hub_model(str(tmp_path))
    assert hub.is_hub_model("Qwen/Qwen3-8B")
    packaged = ClioSettings(llm_model="smollm2-135m-instruct", embedding_model="all-minilm-l6-v2")
    gpu = packaged.with_overrides(llm_model="Qwen/Qwen3-8B")
    assert hub.hub_env(packaged, local_llm=True) == {"HF_HUB_OFFLINE": "1"}
    assert hub.hub_env(gpu, local_llm=True) == {"HF_HUB_OFFLINE": "0"}
    # a consumer that only calls someone's server by model name loads no LLM: offline is right for it
    assert hub.hub_env(gpu, local_llm=False) == {"HF_HUB_OFFLINE": "1"}
    hub_embedder = packaged.with_overrides(embedding_model="BAAI/bge-small-en-v1.5")
    assert hub.hub_env(hub_embedder, local_llm=False) == {"HF_HUB_OFFLINE": "0"}


def test_the_users_own_setting_always_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hub.OFFLINE_VAR, "1")
    assert hub.hub_env(ClioSettings(llm_model="Qwen/Qwen3-8B"), local_llm=True) == {"HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize(("argv", "expected"), [
    (["up", "--llm-model", "Qwen/Qwen3-8B"], "0"),  # the README's GPU line: the server must download it
    (["up"], "1"),
    (["up", "--llm-model", "Qwen/Qwen3-8B", "--llm-base-url", "http://gpu:8000/v1"], "1"),  # someone else's server
])
def test_the_cli_sets_the_default_from_the_models_it_names(argv: list[str], expected: str, no_user_choice,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIO_LLM_MODEL", raising=False)
    monkeypatch.delenv("CLIO_EMBEDDING_MODEL", raising=False)
    cli_main._hub_default(cli_main.build_parser().parse_args(argv))
    import os

    assert os.environ[hub.OFFLINE_VAR] == expected


def test_vllm_server_command_line_for_cpu_and_gpu() -> None:
    cpu = vllm_server_argv("/models/smol", "127.0.0.1", 8001, max_model_len=4096, kv_cache_gib=1.5, on_cpu=True)
    gpu = vllm_server_argv("Qwen/Qwen3-8B", "0.0.0.0", 8000, max_model_len=8192, kv_cache_gib=1.5, on_cpu=False,
                           extra_args=["--gpu-memory-utilization", "0.9"])
    assert cpu[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cpu[cpu.index("--model") + 1] == "/models/smol" and cpu[cpu.index("--port") + 1] == "8001"
    assert "--enforce-eager" in cpu and cpu[cpu.index("--kv-cache-memory-bytes") + 1] == str(int(1.5 * (1 << 30)))
    assert gpu[gpu.index("--model") + 1] == "Qwen/Qwen3-8B" and gpu[gpu.index("--max-model-len") + 1] == "8192"
    assert "--enforce-eager" not in gpu and "--kv-cache-memory-bytes" not in gpu  # vLLM sizes a GPU's cache
    assert gpu[-2:] == ["--gpu-memory-utilization", "0.9"]


def test_engine_arguments_become_server_flags() -> None:
    flags = engine_flags({"gpu_memory_utilization": 0.9, "enable_prefix_caching": True, "trust_remote_code": False,
                          "max_num_seqs": 64, "limit_mm_per_prompt": {"image": 0}})
    assert flags == ["--gpu-memory-utilization", "0.9", "--enable-prefix-caching", "--max-num-seqs", "64",
                     "--limit-mm-per-prompt", '{"image": 0}']
