"""The ONNX Runtime int8 back-end (clio_stream/onnx_embedding.py) against the torch model it was exported from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clio_stream.batch_input import load_shared_dataset
from clio_stream.embedding import make_embedder
from clio_stream.settings import ClioSettings
from tests.integration.conftest import minilm  # noqa: F401 - session fixture

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_onnx_int8_vectors_agree_with_torch_and_keep_the_neighbours(minilm, tmp_path) -> None:  # noqa: F811
    pytest.importorskip("onnxruntime")
    texts = [r["conversation"][0]["content"][:300] for r in load_shared_dataset("banking77", DATA)][:120]
    settings = ClioSettings(embedding_model="all-MiniLM-L6-v2", embedding_backend="onnx-int8",
                            embedding_onnx_dir=tmp_path, show_progress=False)
    onnx = make_embedder(settings)
    assert (tmp_path / "all-minilm-l6-v2-int8" / "model.onnx").exists()
    assert onnx.dim == minilm.dim == 384
    a, b = minilm.encode(texts), onnx.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-4)
    cosine = (a * b).sum(axis=1)
    assert cosine.mean() > 0.98 and cosine.min() > 0.95, (cosine.mean(), cosine.min())
    # What clustering sees: each text's nearest other text is mostly the same under both.
    same = (np.argsort(-(a @ a.T), axis=1)[:, 1] == np.argsort(-(b @ b.T), axis=1)[:, 1]).mean()
    assert same > 0.8, same
    assert make_embedder(settings).encode(texts[:3]).shape == (3, 384)  # the export is reused, not redone
