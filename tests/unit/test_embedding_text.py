"""Values are embedded without the facet's shared prefill, on the batch and the streaming path alike."""

from __future__ import annotations

import numpy as np

from clio_stream.embedding import embedding_text
from clio_stream.domain.facets import REQUEST, Facet
from clio_stream.streaming.wire_format import encode_message
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from consumers.decoding import Record
from consumers.processing import process_batch
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script


def test_the_prefill_is_cut_and_the_rest_kept() -> None:
    value = f"{REQUEST.prefill} recover a lost email password"
    assert embedding_text(REQUEST, value) == "recover a lost email password"


def test_a_value_without_the_prefill_or_without_a_prefill_is_whole() -> None:
    assert embedding_text(REQUEST, "Recover a password") == "Recover a password"
    assert embedding_text(Facet(name="Free", question="?"), "English") == "English"
    assert embedding_text(REQUEST, REQUEST.prefill + ".") == REQUEST.prefill + "."  # nothing after it


def test_streaming_path_stores_the_answer_embedding_with_the_full_value() -> None:
    settings = ClioSettings(max_message_bytes=4096, user_id_hash_key="k", show_progress=False)
    store = QdrantStore(":memory:", keep_raw=True)
    store.ensure_collections(HashEmbedder.dim)
    msg = {"id": "c1", "user_id": "u1", "conversation": [{"role": "user", "content": "my card was declined"}]}
    try:
        out = process_batch([Record("t", 0, 0, None, encode_message(msg))], facets=[REQUEST],
                            llm=ScriptedLLM(sensible_script), embedder=HashEmbedder(), store=store.points, models={},
                            settings=settings)
    finally:
        store.close()
    (point,) = out.facet_points
    assert point.value.startswith(REQUEST.prefill)  # shown in full
    expected = HashEmbedder().encode([embedding_text(REQUEST, point.value)])[0]
    assert np.allclose(point.vector, expected)
    assert not np.allclose(point.vector, HashEmbedder().encode([point.value])[0])
