"""One embedder factory and one LLM adapter: what each accepts, and that settings reach the model they build."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import clio_stream.embedding as embedding
import clio_stream.llm as llm_module
from clio_stream.embedding import Embedder, make_embedder
from clio_stream.llm import as_llm
from clio_stream.llm.vllm_local import VLLMLocal
from clio_stream.settings import ClioSettings
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

SETTINGS = ClioSettings(embedding_model="from-settings", embedding_device="cuda:1", embed_batch_size=7,
                        show_progress=True)


class _FakeSentenceTransformer:
    """Just what ``Embedder.from_model`` reads of a loaded ``SentenceTransformer``."""

    def get_sentence_embedding_dimension(self) -> int:
        return 5

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        return np.ones((len(texts), 5), dtype=np.float32)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """Records the models ``Embedder`` would load instead of loading them."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_init(self: Embedder, model: str = "x", **kw: Any) -> None:
        calls.append((model, kw))
        self.model_name, self.dim = model, 3

    monkeypatch.setattr(embedding.Embedder, "__init__", fake_init)
    return calls


def test_make_embedder_builds_the_named_model_with_the_settings(built: list) -> None:
    make_embedder(SETTINGS)
    make_embedder(SETTINGS, "given-name")
    options = {"device": "cuda:1", "batch_size": 7, "show_progress": True}
    assert built == [("from-settings", options), ("given-name", options)]


def test_make_embedder_uses_given_models_as_they_are(built: list) -> None:
    fake = HashEmbedder()
    assert make_embedder(SETTINGS, fake) is fake
    wrapped = make_embedder(SETTINGS, _FakeSentenceTransformer())
    assert isinstance(wrapped, Embedder) and wrapped.dim == 5 and wrapped.batch_size == 7 and wrapped.show_progress
    assert built == []
    with pytest.raises(TypeError, match="embedding_model"):
        make_embedder(SETTINGS, 42)


def test_as_llm_builds_passes_through_or_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[ClioSettings] = []
    monkeypatch.setattr(llm_module, "make_llm", lambda s: made.append(s) or "built")
    assert as_llm(None, SETTINGS) == "built" and made == [SETTINGS]
    backend = ScriptedLLM(sensible_script)
    assert as_llm(backend, SETTINGS) is backend

    class FakeEngine:  # the two methods that tell a vllm.LLM apart
        def get_tokenizer(self) -> None: ...

        def generate(self) -> None: ...

    wrapped: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(VLLMLocal, "from_engine", classmethod(lambda cls, e, **kw: wrapped.append((e, kw)) or "vllm"))
    engine = FakeEngine()
    assert as_llm(engine, SETTINGS) == "vllm"
    assert wrapped == [(engine, {"show_progress": True, "tokenizer_args": SETTINGS.tokenizer_args})]
    with pytest.raises(TypeError, match="vllm.LLM"):
        as_llm(object(), SETTINGS)
