"""Sentence embeddings: the one protocol every stage embeds through, the sentence-transformers model, its factory.

Batch, the consumers, the re-cluster job and the API all get their embedder from ``make_embedder``, so a
setting (device, batch size, model name) means the same everywhere. Vectors are unit length: dot product = cosine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
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
        from clio_stream.devstack.hub import OFFLINE_VAR, is_hub_model

        if not is_hub_model(model):
            os.environ.setdefault(OFFLINE_VAR, "1")
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


class CachedEmbedder:
    """An embedder that embeds each distinct text once: per call, and across calls through an LRU cache by hash.

    Facet values repeat (the same short request, asked by many users), so a streaming worker keeps the
    vectors of the last ``max_items`` distinct texts, keyed by a 16-byte BLAKE2b digest of the text (memory
    stays ~``dim`` x 4 bytes per entry whatever the text's length). ``encode`` is serialised, which also keeps
    two batches in flight from embedding at the same time on the same cores.
    """

    def __init__(self, inner: EmbeddingBackend, max_items: int = 20_000) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.dim = int(inner.dim)
        self.max_items = max(0, int(max_items))
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def encode(self, texts: Sequence[str], *, desc: str | None = None) -> np.ndarray:
        """Unit vectors, one row per text; only texts not seen before reach the model, each once."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [self._key(t) for t in texts]
        with self._lock:
            missing: dict[bytes, list[int]] = {}
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    out[i] = hit
                else:
                    missing.setdefault(key, []).append(i)
            self.hits += len(texts) - sum(len(v) for v in missing.values())
            if missing:
                first = [rows[0] for rows in missing.values()]
                vectors = np.asarray(self.inner.encode([texts[i] for i in first], desc=desc), dtype=np.float32)
                self.misses += len(first)
                for (key, rows), vec in zip(missing.items(), vectors):
                    out[rows] = vec
                    if self.max_items:
                        self._cache[key] = vec
                while len(self._cache) > self.max_items:
                    self._cache.popitem(last=False)
        return out


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


def onnx_embedder(settings: ClioSettings, name: str) -> EmbeddingBackend:
    """The model ``name`` on ONNX Runtime with int8 weights, exported on first use (``clio_stream.onnx_embedding``)."""
    from pathlib import Path

    from clio_stream.devstack.assets import resolve_model
    from clio_stream.devstack.hub import OFFLINE_VAR, is_hub_model
    from clio_stream.onnx_embedding import OnnxEmbedder, export_int8

    if not is_hub_model(name):
        os.environ.setdefault(OFFLINE_VAR, "1")
    source = Path(resolve_model(name, "embedding"))
    if not source.is_dir():
        raise ValueError(f"embedding_backend='onnx-int8' needs a local model folder; {name!r} is not one")
    root = settings.embedding_onnx_dir or Path(settings.cache_dir) / "models" / "onnx"
    folder = export_int8(source, Path(root) / f"{source.name}-int8")
    return OnnxEmbedder(folder, model_name=name, batch_size=min(settings.embed_batch_size, 64))


def make_embedder(settings: ClioSettings, model: Any = None) -> EmbeddingBackend:
    """The embedder ``model`` names, or the settings' ``embedding_model`` when it is None.

    ``model`` may be a model name or folder, an ``EmbeddingBackend`` (used as it is) or a loaded
    ``SentenceTransformer`` (as the seed took); device, batch size and progress come from ``settings``.
    """
    if model is None or isinstance(model, str):
        name = settings.embedding_model if model is None else model
        if settings.embedding_backend == "onnx-int8":
            return onnx_embedder(settings, name)
        return Embedder(name, device=settings.embedding_device,
                        batch_size=settings.embed_batch_size, show_progress=settings.show_progress)
    if isinstance(model, Embedder):
        return model
    if hasattr(model, "get_sentence_embedding_dimension"):  # a SentenceTransformer
        return Embedder.from_model(model, batch_size=settings.embed_batch_size, show_progress=settings.show_progress)
    if all(hasattr(model, a) for a in ("encode", "model_name", "dim")):  # any EmbeddingBackend
        return model
    raise TypeError(f"embedding_model must be a name, an Embedder or a SentenceTransformer, got {type(model)}")
