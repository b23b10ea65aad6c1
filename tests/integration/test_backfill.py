"""A facet added to a running deployment is back-filled for conversations stored before it (real Qdrant server,
real vLLM engine, real embedding model); conversations stored without their text are reported, not guessed."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from clio_stream.domain.facet_specs import FacetSpec, configured_facets
from clio_stream.living.backfill import backfill_facets
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import RECLUSTER_REQUEST
from clio_stream.storage.records import ConversationRecord, FacetPoint
from clio_stream.storage.store import QdrantStore

pytestmark = pytest.mark.integration

ASKS = [("How do I bake sourdough bread at home?", "Start with an active starter..."),
        ("My laptop will not connect to wifi after the update.", "Try forgetting the network..."),
        ("Write a short poem about autumn leaves.", "Crimson leaves drift down..."),
        ("What is the capital of Australia?", "Canberra."),
        ("Help me plan a three-day trip to Lisbon.", "Day one: Alfama..."),
        ("Explain recursion with a simple example.", "A function that calls itself...")]


def test_backfill_answers_a_new_facet_from_stored_text(qdrant_server, vllm_engine, minilm):
    settings = ClioSettings(
        qdrant_url=qdrant_server.url, qdrant_grpc_port=qdrant_server.grpc_port,
        qdrant_prefix=f"bf{uuid.uuid4().hex[:8]}", user_id_hash_key="backfill-test-key", show_progress=False,
        custom_facets=[FacetSpec(name="Sentiment", question="How does the user feel? Answer in a few words.",
                                 prefill="The user feels", summary_criteria="Name the shared feeling."),
                       FacetSpec(name="Turns", source="turns", numeric=(1, 10)),
                       FacetSpec(name="Plan", source="metadata.plan")],
        facets=["Request", "Sentiment", "Turns", "Plan"])
    store = QdrantStore.from_settings(settings)
    store.ensure_collections(minilm.dim)
    try:
        records = []
        for i, (ask, answer) in enumerate(ASKS + [("Stored without text", "-")] * 2):
            keep_text = i < len(ASKS)
            records.append(ConversationRecord(
                conversation_id=f"c{i}", status="processed", user_hash=f"user{i % 3}", timestamp=1.7e9 + i,
                content_hash=f"h{i}", raw=[{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
                if keep_text else None, extra={"metadata": {"plan": "pro" if i % 2 else "free"}}))
        store.points.mark_conversations(records)
        # What workers stored before the new facets existed: the Request facet only.
        store.points.upsert_facets([FacetPoint(conversation_id=r.conversation_id, facet="Request",
                                               vector=np.ones(minilm.dim, dtype=np.float32) / np.sqrt(minilm.dim),
                                               value="The user asks the assistant to help.",
                                               user_hash=r.user_hash) for r in records])
        facets = configured_facets(settings)

        dry = backfill_facets(store, facets, vllm_engine, minilm, settings, dry_run=True)
        assert dry.written == 0 and dry.backfilled == {"Sentiment": 6, "Turns": 6, "Plan": 6}
        assert store.points.count(facet="Sentiment") == 0

        report = backfill_facets(store, facets, vllm_engine, minilm, settings, page=4)
        assert report.scanned == 8 and report.backfilled == {"Sentiment": 6, "Turns": 6, "Plan": 6}
        assert report.no_text == {"Sentiment": 2, "Turns": 2, "Plan": 2}  # said, never guessed
        assert report.written == 18 and report.requested_recluster
        assert store.states.read(RECLUSTER_REQUEST).requested_by == "backfill"
        doc = store.points.get_conversation("c1")
        assert doc["facets"]["Turns"]["numeric"] == 2 and doc["facets"]["Plan"]["value"] == "pro"
        assert doc["facets"]["Request"]["value"] == "The user asks the assistant to help."  # untouched
        sentiments = [store.points.get_conversation(f"c{i}")["facets"]["Sentiment"] for i in range(6)]
        assert sum(s["value"] is not None for s in sentiments) >= 4, sentiments  # the small model answers most
        assert all(s["user_hash"] == f"user{i % 3}" for i, s in enumerate(sentiments))
        assert "c6" not in {p["conversation_id"] for p in _points(store, "Sentiment")}

        again = backfill_facets(store, facets, vllm_engine, minilm, settings)
        assert again.written == 0 and again.complete == 6 and not again.requested_recluster  # only what is missing
    finally:
        store.close()


def _points(store: QdrantStore, facet: str) -> list[dict]:
    return [p for _, _, payloads in store.points.scroll_vectors(facet) for p in payloads]
