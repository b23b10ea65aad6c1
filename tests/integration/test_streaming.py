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
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from qdrant_client import models as qm

from clio_stream.data import load_shared_dataset
from clio_stream.facets import CONCERNING, REQUEST
from clio_stream.kafka_io import decode_dead_letter, ensure_topics, make_producer
from clio_stream.messages import encode_message
from clio_stream.services.processes import ManagedProcess, free_port, start_qdrant
from clio_stream.settings import ClioSettings
from clio_stream.store import QdrantStore
from consumers.bootstrap import bootstrap_clustering
from consumers.worker import ConsumerWorker
from tests.integration.conftest_vllm_server import vllm_server  # noqa: F401 - session fixture

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

FACETS = [REQUEST, CONCERNING]
DATA = Path(__file__).parents[2].parent / "shared" / "data"
REPO = Path(__file__).parents[2]


# --------------------------------------------------------------------------- helpers


def banking(n: int, skip: int, tag: str) -> list[dict[str, Any]]:
    """``n`` real banking77 requests from distinct intents where possible (``skip`` rounds through them)."""
    rows = load_shared_dataset("banking77", DATA)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    order = [group[i] for i in range(10) for group in by_label.values() if i < len(group)]
    picked = order[skip : skip + n]
    return [{"id": f"{tag}-{r['id']}", "user_id": f"user-{i % 5}", "conversation": r["conversation"]}
            for i, r in enumerate(picked)]


def send(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(bootstrap, max_request_size=4 << 20)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in items]
        producer.flush(30)
        assert not [f for f in futures if f.failed()], "the broker refused a test record"
    finally:
        producer.close()


def send_conversations(bootstrap: str, topic: str, convs: list[dict[str, Any]]) -> None:
    send(bootstrap, topic, [(c["id"].encode(), encode_message(c)) for c in convs])


def streaming_settings(kafka: Any, qdrant_url: str, grpc_port: int, unique_name: Callable[[str], str],
                       **overrides: Any) -> ClioSettings:
    topic = unique_name("conv")
    values: dict[str, Any] = dict(
        kafka_bootstrap=kafka.bootstrap, topic=topic, dlq_topic=f"{topic}.dlq", deltas_topic=f"{topic}.deltas",
        consumer_group=unique_name("group"), topic_partitions=3, max_poll_records=16, poll_timeout_ms=1000,
        qdrant_url=qdrant_url, qdrant_grpc_port=grpc_port, qdrant_prefix=unique_name("t").replace("-", "_"),
        user_id_hash_key="test-key", show_progress=False, llm_max_retries=1, max_message_bytes=64 * 1024,
        backoff_initial_s=0.5, backoff_max_s=4.0, metrics_every_batches=1,
    )
    values.update(overrides)
    return ClioSettings(**values)


def reader_store(s: ClioSettings) -> QdrantStore:
    return QdrantStore(s.qdrant_url, prefix=s.qdrant_prefix, grpc_port=s.qdrant_grpc_port, keep_raw=True)


def processed_count(store: QdrantStore) -> int:
    flt = qm.Filter(must=[qm.FieldCondition(key="status", match=qm.MatchValue(value="processed"))])
    return int(store.client.count(store.conversations, count_filter=flt, exact=True).count)


def stored_pairs(store: QdrantStore) -> Counter:
    """(conversation id, facet) -> number of facet points (must be 1 each)."""
    pairs: Counter = Counter()
    offset = None
    while True:
        recs, offset = store.client.scroll(store.facets, limit=500, offset=offset, with_payload=True)
        pairs.update((r.payload["conversation_id"], r.payload["facet"]) for r in recs)
        if offset is None:
            return pairs


def valued(store: QdrantStore, facet: str) -> set[str]:
    """Conversations whose ``facet`` got a usable answer."""
    out: set[str] = set()
    offset = None
    flt = qm.Filter(must=[qm.FieldCondition(key="facet", match=qm.MatchValue(value=facet))])
    while True:
        recs, offset = store.client.scroll(store.facets, scroll_filter=flt, limit=500, offset=offset,
                                           with_payload=True)
        out.update(r.payload["conversation_id"] for r in recs if r.payload.get("value"))
        if offset is None:
            return out


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def safe_count(store: QdrantStore) -> int:
    try:
        return processed_count(store)
    except Exception:  # noqa: BLE001 - Qdrant may be down on purpose
        return -1


def committed(bootstrap: str, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic`` (= records committed, offsets start at 0).

    Asked through a consumer's OffsetFetch without joining the group: kafka-python 2.3.3's admin
    ``list_consumer_group_offsets`` cannot decode Tansu's answer.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in parts)
    finally:
        consumer.close(autocommit=False)


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def check_stored_once(store: QdrantStore, convs: list[dict[str, Any]]) -> None:
    pairs = stored_pairs(store)
    want = {(c["id"], f.name) for c in convs for f in FACETS}
    assert set(pairs) == want, f"missing {sorted(want - set(pairs))[:5]}, extra {sorted(set(pairs) - want)[:5]}"
    assert all(n == 1 for n in pairs.values())
    assert sum(pairs.values()) == len(convs) * len(FACETS)
    assert processed_count(store) == len(convs)


class LockedEmbedder:
    """Serialises ``encode`` so two worker threads can share one model."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.dim, self.model_name = inner, inner.dim, inner.model_name
        self._lock = threading.Lock()

    def encode(self, texts: Any, *, desc: str | None = None) -> Any:
        with self._lock:
            return self.inner.encode(texts, desc=desc)


def start_thread(worker: ConsumerWorker) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name=f"worker-{worker.worker_id}", daemon=True)
    thread.start()
    return thread, stop


def stop_thread(thread: threading.Thread, stop: threading.Event) -> None:
    stop.set()
    thread.join(120)
    assert not thread.is_alive(), "worker did not stop"


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
        assert store.count(facet="Request") == 30 and store.count() == 30 * len(FACETS)
        doc = store.get_conversation(convs[0]["id"])
        assert doc is not None and doc["status"] == "processed" and doc["raw"] == convs[0]["conversation"]
        assert doc["facets"]["Request"]["value"] and doc["facets"]["Concerning"]["numeric"] in range(1, 6)
        assert all(store.get_conversation(c["id"])["facets"]["Request"]["cluster_id"] is None for c in convs[:3])

        dead = [decode_dead_letter(r.value) for r in read_topic(s.kafka_bootstrap, s.dlq_topic, 4)]
        assert len(dead) == 4
        for key, _, why in bad:
            letter = next(d for d in dead if d["key"] == key)
            assert why in letter["reason"] and letter["topic"] == s.topic
        assert committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(items)
        assert store.get_state(f"worker:{worker.worker_id}")["processed"] == 30

        version = bootstrap_clustering(store, FACETS, s)
        assert version == 1 and store.current_version("Request") == 1
        answered = valued(store, "Request")  # a tiny model may leave an answer unparseable
        assert len(answered) >= 27 and store.count(facet="Request", version=1) == len(answered)

        more = banking(10, 30, "a2")
        send_conversations(s.kafka_bootstrap, s.topic, more)
        deadline = time.monotonic() + 600
        while worker.metrics.processed < 40 and time.monotonic() < deadline:
            worker.run_once(2000)
        assert worker.metrics.processed == 40
        for c in more:
            point = store.get_conversation(c["id"])["facets"]["Request"]
            if point["value"]:
                assert point["cluster_version"] == 1 and point["cluster_id"] in range(4)
                assert point["similarity"] is not None
        # The deltas it published come back through the shared topic and move its centroids.
        wait_for(lambda: worker.run_once(200) == 0 and worker.metrics.deltas_applied >= 1, 60, "deltas applied")
        snap = worker.metrics_snapshot()
        assert snap["cluster_versions"] == {"Request": 1}
        assert "Request" in snap["outlier_rate"]
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
        metrics = store.get_state("worker:crash-test")
        assert metrics is not None and metrics["health"] == "stopped"
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


@pytest.fixture
def own_qdrant(tmp_path: Path) -> Iterator[tuple[str, int, ManagedProcess]]:
    """A Qdrant of this test's own, to stop and start (persistent storage survives the restart)."""
    http_port, grpc_port = free_port(), free_port()
    proc = start_qdrant(http_port=http_port, grpc_port=grpc_port, storage_dir=tmp_path / "qdrant",
                        log_dir=tmp_path / "logs", die_with_parent=True)
    try:
        yield f"http://127.0.0.1:{http_port}", grpc_port, proc
    finally:
        proc.stop()


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
