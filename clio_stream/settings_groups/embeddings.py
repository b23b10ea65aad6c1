"""Embedding settings: the sentence-transformers model, its device and back-end, the vector cache.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class EmbeddingFields(BaseModel):
    # --- embeddings ---
    embedding_model: str = Field("all-mpnet-base-v2", description="Name or folder of a sentence-transformers model.")
    embedding_device: str = Field(
        "cpu", description="Device of the sentence-transformers model ('cpu', 'cuda', 'cuda:1').")
    embedding_backend: Literal["torch", "onnx-int8"] = Field(
        "torch", description="'torch': the sentence-transformers model as it is; 'onnx-int8': the same model "
        "exported once to ONNX with int8 weights and run by onnxruntime (3-4x as fast on a CPU, cosine "
        "~0.99 to torch; mean-pooling models such as the packaged ones). Vectors of the two differ slightly: "
        "pick one per store.")
    embedding_onnx_dir: Path | None = Field(
        None, description="Where exported ONNX models are kept; default <cache_dir>/models/onnx.")
    embedding_cache_size: int = Field(
        20_000, ge=0, description="A streaming worker keeps the vectors of this many distinct texts (by hash) and "
        "embeds a text seen before no more (~3 KB each at 768-d); 0 embeds every batch's texts afresh.")
