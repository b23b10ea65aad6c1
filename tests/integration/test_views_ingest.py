"""Metadata kept at ingest (bounded, in Qdrant, declared keys indexed) and the real backlog, on real servers.

The worker's own write path is used (``conversation_record`` and ``process_batch`` payloads via ``FacetPoint``),
against the session's Qdrant server; the backlog is measured against the session's Tansu broker.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from clio_stream.domain.facets import main_facets
from clio_stream.living.stored import load_stored
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import FacetPoint
from clio_stream.storage.store import QdrantStore
from clio_stream.streaming.backlog import measure
from clio_stream.streaming.connection import KafkaConnection
from clio_stream.streaming.kafka_io import consumer_lag, ensure_topics, make_consumer
from clio_stream.streaming.wire_format import encode_message
from consumers.decoding import decode_records
from consumers.status_records import conversation_record
from tests.streaming_helpers import send

pytestmark = pytest.mark.integration


class _Record:
    def __init__(self, value: bytes, offset: int) -> None:
        self.topic, self.partition, self.offset, self.key, self.value = "t", 0, offset, b"k", value
        self.timestamp = None
        self.headers = []


def test_metadata_is_bounded_stored_indexed_and_read_back(qdrant_server: Any) -> None:
    settings = ClioSettings(metadata_keys=[{"name": "product"}, {"name": "tenant", "role": "analyst"}],
                            metadata_max_keys=3, metadata_max_value_chars=8, user_id_hash_key="k" * 16)
    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port, prefix=f"m{uuid.uuid4().hex[:8]}",
                        metadata_index=tuple(k.name for k in settings.metadata_keys))
    store.ensure_collections(4)
    try:
        raw = {"product": "chat", "tenant": "acme-corporation-eu", "tier": 3, "nested": {"a": 1}, "extra": True,
               "one_too_many": "x"}
        value = encode_message({"id": "c1", "user_id": "u1", "conversation": [{"role": "user", "content": "hi"}],
                                "metadata": raw})
        item = decode_records([_Record(value, 0)], max_bytes=1 << 20).conversations[0]
        record = conversation_record(item, settings, "processed")
        assert record.extra["metadata"] == {"product": "chat", "tenant": "acme-cor", "tier": "3"}
        notes = " ".join(record.extra["metadata_notes"])
        assert "'tenant': value cut to 8" in notes and "'nested': dict value dropped" in notes
        assert "2 key(s) over the limit of 3 dropped" in notes
        store.points.mark_conversations([record])
        store.points.upsert_facets([FacetPoint(conversation_id="c1", facet=f.name, vector=np.ones(4) / 2,
                                               value="v", user_hash=record.user_hash, metadata=record.extra["metadata"])
                                    for f in main_facets])
        schema = store.facet_collection_info().payload_schema or {}
        assert {"metadata.product", "metadata.tenant"} <= set(schema), sorted(schema)
        stored = load_stored(store, main_facets)
        conversations, _ = stored.as_conversations(main_facets)
        assert conversations[0].metadata == {"product": "chat", "tenant": "acme-cor", "tier": "3"}
        doc = store.points.get_conversation("c1")
        assert doc["metadata"]["product"] == "chat" and doc["metadata_notes"]
    finally:
        store.close()


def test_waiting_is_the_backlog_after_committed_offsets(kafka_broker: Any, unique_name: Any) -> None:
    topic, group = unique_name("backlog"), unique_name("group")
    ensure_topics(kafka_broker.bootstrap, {topic: 3})
    msgs = [(f"c{i}".encode(), encode_message({"id": f"c{i}", "conversation": [{"role": "user", "content": "x"}]}))
            for i in range(40)]
    send(kafka_broker.bootstrap, topic, msgs)
    connection = KafkaConnection.of(kafka_broker.bootstrap)
    first = measure(connection, topic, group)
    assert first is not None and first.waiting == 40 and first.committed == 0 and first.partitions == 3

    # A member of the group fetches everything (its own lag would read ~0: all of it is prefetched) but
    # commits only part: what waits is what is not committed.
    consumer = make_consumer(kafka_broker.bootstrap, group, [topic], max_poll_records=500)
    try:
        seen: list[Any] = []
        deadline = time.monotonic() + 30
        while len(seen) < 40 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                seen.extend(batch)
        assert len(seen) == 40
        tp = TopicPartition(topic, seen[0].partition)
        done = [r for r in seen if r.partition == tp.partition]
        consumer.commit({tp: OffsetAndMetadata(done[-1].offset + 1, "", -1)})
        later = measure(connection, topic, group)
        assert later is not None and later.committed == len(done) and later.waiting == 40 - len(done)
        assert consumer_lag(consumer) == 0  # what /v1/status used to sum: blind to fetched, uncommitted records
    finally:
        consumer.close(autocommit=False)
