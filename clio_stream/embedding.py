"""Sentence embeddings with sentence-transformers, normalised so dot product = cosine."""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol, Sequence

import numpy as np

from clio_stream.domain.facets import Facet

log = logging.getLogger(__name__)


def _dimension(model: Any) -> int:
    """The output size; sentence-transformers renamed the accessor in version 6."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


class EmbeddingBackend(Protocol):
    """What the pipeline needs from an embedding model."""

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


def make_embedder(settings: "ClioSettings") -> Embedder:  # noqa: F821
    return Embedder(
        settings.embedding_model,
        device=settings.embedding_device,
        batch_size=settings.embed_batch_size,
        show_progress=settings.show_progress,
    )
