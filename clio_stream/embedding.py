"""Sentence embeddings: the one protocol every stage embeds through, the sentence-transformers model, its factory.

Batch, the consumers, the re-cluster job and the API all get their embedder from ``make_embedder``, so a
setting (device, batch size, model name) means the same everywhere. Vectors are unit length: dot product = cosine.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from clio_stream.domain.facets import Facet

if TYPE_CHECKING:
    from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)


def _dimension(model: Any) -> int:
    """The output size; sentence-transformers renamed the accessor in version 6."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


class EmbeddingBackend(Protocol):
    """What every stage needs from an embedding model (``Embedder`` and the tests' fakes fit)."""

    model_name: str
    dim: int

    def encode(self, texts: Sequence[str], *, desc: str | None = None) -> np.ndarray: ...


class Embedder:
    """A sentence-transformers model by name or folder (packaged names resolve to local folders)."""

    def __init__(self, model: str = "all-mpnet-base-v2", *, device: str = "cpu", batch_size: int = 256,
                 show_progress: bool = False) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        from clio_stream.devstack.assets import resolve_model

        self.model_name = model
        path = resolve_model(model, "embedding")
        self._model = SentenceTransformer(path, device=device)
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.dim = _dimension(self._model)

    @classmethod
    def from_model(cls, model: Any, *, batch_size: int = 256, show_progress: bool = False) -> "Embedder":
        """Wrap a ``SentenceTransformer`` the caller already loaded."""
        self = cls.__new__(cls)
        self._model = model
        self.model_name = str(getattr(getattr(model, "model_card_data", None), "base_model", None) or "custom")
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.dim = _dimension(model)
        return self

    def encode(self, texts: Sequence[str], *, desc: str | None = None) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=bool(self.show_progress and desc),
        )
        return np.asarray(vecs, dtype=np.float32)


def embedding_text(facet: Facet, value: str) -> str:
    """What is embedded for a facet value: the answer after the facet's prefill, which every value shares.

    "The user's overall request for the assistant is to" in front of every Request value pulls all
    of them together and drowns the part that tells conversations apart; the stored and shown value
    keeps the full sentence. A value that does not start with the prefill is embedded whole.
    """
    prefill = facet.prefill.strip()
    if prefill and value.startswith(prefill):
        answer = value[len(prefill):].strip(" ,.;:")
        if answer:
            return answer
    return value


def make_embedder(settings: ClioSettings, model: Any = None) -> EmbeddingBackend:
    """The embedder ``model`` names, or the settings' ``embedding_model`` when it is None.

    ``model`` may be a model name or folder, an ``EmbeddingBackend`` (used as it is) or a loaded
    ``SentenceTransformer`` (as the seed took); device, batch size and progress come from ``settings``.
    """
    if model is None or isinstance(model, str):
        return Embedder(settings.embedding_model if model is None else model, device=settings.embedding_device,
                        batch_size=settings.embed_batch_size, show_progress=settings.show_progress)
    if isinstance(model, Embedder):
        return model
    if hasattr(model, "get_sentence_embedding_dimension"):  # a SentenceTransformer
        return Embedder.from_model(model, batch_size=settings.embed_batch_size, show_progress=settings.show_progress)
    if all(hasattr(model, a) for a in ("encode", "model_name", "dim")):  # any EmbeddingBackend
        return model
    raise TypeError(f"embedding_model must be a name, an Embedder or a SentenceTransformer, got {type(model)}")
