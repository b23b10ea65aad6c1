"""The seed README's Python code blocks, read at test time so the tests run exactly what OpenClio users have.

``/work/shared/seed/OpenClio-README.md`` (``<repo>/../shared/seed``) is OpenClio's README, kept as data. Only
the model names may be swapped, for the packaged models (``swap_models``); each swap must find its name exactly
once, so a README that changed under the tests fails loudly instead of running something else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "OpenClio-README.md"
SEED_LLM = '"Qwen/Qwen3-8B"'
SEED_EMBEDDER = "'sentence-transformers/all-mpnet-base-v2'"


def python_blocks() -> list[str]:
    """Every ```python block of the README, in order."""
    if not README.exists():
        pytest.fail(f"the seed README is missing: {README}")
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def block_defining(name: str) -> str:
    """The one block that assigns or defines ``name`` at its top level."""
    found = [b for b in python_blocks() if re.search(rf"^(?:def {name}\b|{name}\s*=)", b, flags=re.M)]
    assert len(found) == 1, f"expected one README block defining {name}, found {len(found)}"
    return found[0]


def block_calling(name: str) -> str:
    found = [b for b in python_blocks() if f"{name}(" in b and not re.search(rf"^def {name}\b", b, flags=re.M)]
    assert len(found) == 1, f"expected one README block calling {name}, found {len(found)}"
    return found[0]


def swap_models(code: str, llm_path: str, embedder_path: str) -> str:
    """``code`` with the seed's two model names replaced by local model folders, and nothing else changed."""
    for seed_name, local in ((SEED_LLM, llm_path), (SEED_EMBEDDER, embedder_path)):
        assert code.count(seed_name) == 1, f"the README block no longer names {seed_name} once"
        code = code.replace(seed_name, repr(str(local)))
    return code
