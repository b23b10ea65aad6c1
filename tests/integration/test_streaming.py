"""The streaming worker end to end: real broker, real Qdrant, real vLLM, real embedding model.

(a) conversations with malformed records interleaved -> every good one stored with all facets, every bad
    one dead-lettered with a reason, offsets committed; after a bootstrap clustering new ones get clusters.
(b) ``clio-stream consume`` killed with SIGKILL mid-stream and restarted -> each conversation stored once.
(c) two workers of one group, the second joining mid-stream (a rebalance) -> each conversation stored once.
(d) Qdrant stopped for ~20 s mid-stream -> the worker reports degraded, then resumes; nothing is lost.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

from clio_stream.streaming.kafka_io import decode_dead_letter, ensure_topics
from clio_stream.streaming.wire_format import encode_message
from clio_stream.devstack.processes import ManagedProcess
from clio_stream.storage.documents import WORKER_METRICS
from consumers.bootstrap import bootstrap_clustering
from consumers.worker import ConsumerWorker
from tests.streaming_helpers import (  # noqa: F401 - own_qdrant is a fixture
    FACETS,
    REPO,
    LockedEmbedder,
    banking,
    check_stored_once,
    committed,
    own_qdrant,
    processed_count,
    read_topic,
    reader_store,
    safe_count,
    send,
    send_conversations,
    start_thread,
    stop_thread,
    streaming_settings,
    valued,
    wait_for,
)

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- (a)


def test_stream_stores_good_dead_letters_bad_commits_and_assigns_after_bootstrap(
    kafka_broker, qdrant_server, vllm_engine, minilm, unique_name
) -> None:
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           n_base_clusters=lambda n: 4)
    convs = banking(30, 0, "a")
    bad: list[tuple[bytes | None, bytes, str]] = [
        (b"bad-1", b"\xc1\x00 this is not msgpack", "not msgpack"),
        (b"bad-2", encode_message({"user_id": "u", "conversation": [{"role": "user", "content": "hi"}]}),
         "missing id"),
        (b"bad-3", encode_message({"id": "bad-3", "conversation": [{"role": "robot", "content": "beep"}]}),
         "unknown role"),
        (b"bad-4", encode_message({"id": "bad-4", "conversation": [{"role": "user", "content": "x" * 100_000}]}),
         "over the 65536-byte limit"),
    ]
    items: list[tuple[bytes | None, bytes]] = []
    for i, c in enumerate(convs):
        items.append((c["id"].encode(), encode_message(c)))
        if i % 8 == 3:
            k, v, _ = bad[i // 8]
            items.append((k, v))
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})
    send(s.kafka_bootstrap, s.topic, items)

    worker = ConsumerWorker(s, facets=FACETS, llm=vllm_engine, embedder=minilm)
    store = reader_store(s)
    try:
        t0 = time.monotonic()
        deadline = t0 + 900
        while worker.metrics.processed + worker.metrics.dead_lettered < len(items) and time.monotonic() < deadline:
            worker.run_once(2000)
        elapsed = time.monotonic() - t0
        snap = worker.metrics_snapshot()
        log.info("(a) %d conversations in %.1f s through the worker (%.2f conv/s incl. group join), metrics %s",
                 snap["processed"], elapsed, snap["processed"] / elapsed, snap)
        assert snap["processed"] == 30 and snap["dead_lettered"] == 4 and snap["health"] == "ok"
        assert snap["llm_calls"] >= 1 and snap["reused_by_hash"] == 0

        check_stored_once(store, convs)
        assert store.points.count(facet="Request") == 30 and store.points.count() == 30 * len(FACETS)
        doc = store.points.get_conversation(convs[0]["id"])
        assert doc is not None and doc["status"] == "processed" and doc["raw"] == convs[0]["conversation"]
        assert doc["facets"]["Request"]["value"] and doc["facets"]["Concerning"]["numeric"] in range(1, 6)
        assert all(store.points.get_conversation(c["id"])["facets"]["Request"]["cluster_id"] is None for c in convs[:3])

        dead = [decode_dead_letter(r.value) for r in read_topic(s.kafka_bootstrap, s.dlq_topic, 4)]
        assert len(dead) == 4
        for key, _, why in bad:
            letter = next(d for d in dead if d["key"] == key)
            assert why in letter["reason"] and letter["topic"] == s.topic
        assert committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(items)
        assert store.states.read(WORKER_METRICS.of(worker.worker_id)).processed == 30

        version = bootstrap_clustering(store, FACETS, s)
        assert version == 1 and store.versions.current_version("Request") == 1
        answered = valued(store, "Request")  # a tiny model may leave an answer unparseable
        assert len(answered) >= 27 and store.points.count(facet="Request", version=1) == len(answered)

        more = banking(10, 30, "a2")
        send_conversations(s.kafka_bootstrap, s.topic, more)
        deadline = time.monotonic() + 600
        while worker.metrics.processed < 40 and time.monotonic() < deadline:
            worker.run_once(2000)
        assert worker.metrics.processed == 40
        for c in more:
            point = store.points.get_conversation(c["id"])["facets"]["Request"]
            if point["value"]:
                assert point["cluster_version"] == 1 and point["cluster_id"] in range(4)
                assert point["similarity"] is not None
        # The deltas it published come back through the shared topic and move its centroids.
        # Batches overlap (pipelined), so their deltas arrive in several messages: wait for all of them, and
        # then for the counts to hold one per stored value (a lost or double-applied delta never gets there).
        wait_for(lambda: worker.run_once(200) == 0
                 and worker.metrics.deltas_applied >= worker.metrics.deltas_published >= 1, 60, "every delta applied")
        snap = worker.metrics_snapshot()
        assert snap["cluster_versions"] == {"Request": 1}
        assert "Request" in snap["outlier_rate"]
        assert snap["deltas_applied"] == snap["deltas_published"]
        assert int(worker.centroids.models["Request"].counts.sum()) == len(valued(store, "Request"))
    finally:
        worker.close()
        store.close()


# --------------------------------------------------------------------------- (b)


def test_kill9_mid_stream_then_restart_stores_each_conversation_once(
    kafka_broker, qdrant_server, vllm_server, unique_name, tmp_path  # noqa: F811
) -> None:
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           max_poll_records=3)
    convs = banking(12, 40, "b")
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})
    send_conversations(s.kafka_bootstrap, s.topic, convs)
    env = {
        "CLIO_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "CLIO_TOPIC": s.topic, "CLIO_DLQ_TOPIC": s.dlq_topic,
        "CLIO_DELTAS_TOPIC": s.deltas_topic, "CLIO_CONSUMER_GROUP": s.consumer_group,
        "CLIO_TOPIC_PARTITIONS": "3", "CLIO_MAX_POLL_RECORDS": "3", "CLIO_QDRANT_URL": s.qdrant_url,
        "CLIO_QDRANT_GRPC_PORT": str(s.qdrant_grpc_port), "CLIO_QDRANT_PREFIX": s.qdrant_prefix,
        "CLIO_EMBEDDING_MODEL": "all-MiniLM-L6-v2", "CLIO_SHOW_PROGRESS": "false", "CLIO_LLM_MAX_RETRIES": "1",
        "CLIO_USER_ID_HASH_KEY": "test-key", "CLIO_WORKER_ID": "crash-test", "CLIO_METRICS_EVERY_BATCHES": "1",
        "HF_HUB_OFFLINE": "1", "CLIO_CONFIG": str(tmp_path / "none.toml"),
    }
    (tmp_path / "none.toml").write_text("")
    argv = [sys.executable, "-m", "clio_stream.cli", "consume", "--facets", "Request,Concerning",
            "--llm-base-url", vllm_server.base_url]
    proc = ManagedProcess("consume", argv, log_path=tmp_path / "consume.log", env=env, cwd=REPO,
                          stop_timeout=60.0, die_with_parent=True)
    store = reader_store(s)
    try:
        t0 = time.monotonic()
        proc.start()
        wait_for(lambda: safe_count(store) >= 3, 300, "the first batch", every=0.2)
        log.info("(b) first batch stored %.1f s after the worker process started", time.monotonic() - t0)
        proc.kill9()
        done_before = processed_count(store)
        in_flight = int(store.client.count(store.conversations, exact=True).count) - done_before
        log.info("(b) killed the worker with SIGKILL after %d of %d conversations (%d marked pending, in flight)",
                 done_before, len(convs), in_flight)
        assert done_before < len(convs), "the stream finished before the kill: nothing was tested"
        proc.start()
        wait_for(lambda: safe_count(store) == len(convs), 600, "every conversation after the restart")
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 60, "the last commit")
        assert proc.stop() == 0, proc.log_tail()  # SIGTERM: a clean exit that leaves the group
        check_stored_once(store, convs)
        metrics = store.states.read(WORKER_METRICS.of("crash-test"))
        assert metrics is not None and metrics.health == "stopped"
    finally:
        proc.stop()
        store.close()


# --------------------------------------------------------------------------- (c)


def test_two_workers_and_a_rebalance_store_each_conversation_once(
    kafka_broker, qdrant_server, vllm_server, minilm, unique_name  # noqa: F811
) -> None:
    from clio_stream.llm import make_llm

    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=4, max_poll_records=2, llm_backend="openai",
                           llm_base_url=vllm_server.base_url)
    convs = banking(20, 60, "c")
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})
    send_conversations(s.kafka_bootstrap, s.topic, convs)
    embedder = LockedEmbedder(minilm)
    first = ConsumerWorker(s.with_overrides(worker_id="c-first"), facets=FACETS, llm=make_llm(s), embedder=embedder)
    second = ConsumerWorker(s.with_overrides(worker_id="c-second"), facets=FACETS, llm=make_llm(s),
                            embedder=embedder)
    store = reader_store(s)
    threads: list[tuple[threading.Thread, threading.Event]] = []
    try:
        threads.append(start_thread(first))
        wait_for(lambda: first.metrics.processed >= 2, 300, "the first worker's first batch")
        threads.append(start_thread(second))  # joining the group rebalances the partitions
        wait_for(lambda: safe_count(store) == len(convs), 600, "every conversation")
        for thread, stop in threads:
            stop_thread(thread, stop)
        a, b = first.metrics_snapshot(), second.metrics_snapshot()
        log.info("(c) first worker %d, second %d conversations (commit failures %d/%d)",
                 a["processed"], b["processed"], a["commit_failures"], b["commit_failures"])
        assert b["processed"] > 0, "the second worker never got a partition"
        assert a["processed"] + b["processed"] >= len(convs)
        check_stored_once(store, convs)
    finally:
        for thread, stop in threads:
            stop.set()
            thread.join(60)
        store.close()


# --------------------------------------------------------------------------- (d)


def test_qdrant_outage_degrades_then_resumes_without_loss(
    kafka_broker, own_qdrant, vllm_engine, minilm, unique_name
) -> None:
    url, grpc_port, qdrant = own_qdrant
    s = streaming_settings(kafka_broker, url, grpc_port, unique_name, max_poll_records=2)
    convs = banking(8, 80, "d")
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})
    send_conversations(s.kafka_bootstrap, s.topic, convs)
    worker = ConsumerWorker(s, facets=FACETS, llm=vllm_engine, embedder=minilm)
    thread, stop = start_thread(worker)
    store = reader_store(s)
    try:
        wait_for(lambda: worker.metrics.processed >= 2, 300, "the first batch")
        qdrant.stop()
        down_at = time.monotonic()
        assert worker.metrics.processed < len(convs), "the stream finished before the outage"
        wait_for(lambda: worker.health == "degraded", 120, "the worker to report degraded", every=0.1)
        reason = worker.health_reason
        log.info("(d) degraded %.1f s after Qdrant stopped: %s", time.monotonic() - down_at, reason)
        assert "Store" in (reason or "") or "qdrant" in (reason or "").lower()
        time.sleep(max(0.0, 20.0 - (time.monotonic() - down_at)))
        assert worker.health == "degraded"
        qdrant.start()
        up_at = time.monotonic()
        wait_for(lambda: safe_count(store) == len(convs), 600, "every conversation after Qdrant came back")
        log.info("(d) caught up %.1f s after Qdrant restarted", time.monotonic() - up_at)
        wait_for(lambda: worker.health == "ok", 60, "health back to ok")
        stop_thread(thread, stop)
        snap = worker.metrics_snapshot()
        assert snap["failed_batches"] >= 1
        check_stored_once(store, convs)
    finally:
        stop.set()
        thread.join(60)
        store.close()
