"""When clio-stream lets Hugging Face libraries reach the hub: only for a model the user named that is not packaged.

The packaged models (``assets``) and local folders load offline, and offline is the default, so a machine without
hub access never stalls on a lookup. A hub id (``Qwen/Qwen3-8B`` on a GPU box) must be downloadable, so naming one
lifts the default. An ``HF_HUB_OFFLINE`` the user set in the environment always wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from clio_stream.devstack.assets import is_packaged
from clio_stream.settings import ClioSettings

OFFLINE_VAR = "HF_HUB_OFFLINE"


def is_hub_model(name: str) -> bool:
    """True for a name that is neither a local path nor a packaged model: it can only come from the hub."""
    return not (is_packaged(name) or Path(name).expanduser().exists())


def needs_hub(settings: ClioSettings, *, local_llm: bool) -> bool:
    """Whether loading this configuration's models needs the hub; ``local_llm``: this process loads the LLM
    (in-process engine or a vLLM server it starts), rather than calling someone's server by model name."""
    return is_hub_model(settings.embedding_model) or (local_llm and is_hub_model(settings.llm_model))


def hub_env(settings: ClioSettings, *, local_llm: bool) -> dict[str, str]:
    """``{HF_HUB_OFFLINE: ...}`` for a child process: the user's own value, else offline unless a hub model is named."""
    explicit = os.environ.get(OFFLINE_VAR)
    if explicit is not None:
        return {OFFLINE_VAR: explicit}
    return {OFFLINE_VAR: "0" if needs_hub(settings, local_llm=local_llm) else "1"}


def apply_hub_default(settings: ClioSettings, *, local_llm: bool) -> None:
    """Set this process's ``HF_HUB_OFFLINE`` default (before any Hugging Face import reads it)."""
    os.environ.setdefault(OFFLINE_VAR, hub_env(settings, local_llm=local_llm)[OFFLINE_VAR])
