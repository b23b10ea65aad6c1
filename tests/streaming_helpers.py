"""Helpers shared by the streaming tests (tests/integration) and the fault suite (tests/reliability).

Real parts only: conversations from the shared banking77 set, a real broker, Qdrant and worker. Kept here
rather than in a test module so that importing them never makes pytest collect another module's tests.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from qdrant_client import models as qm

from clio_stream.batch_input import load_shared_dataset
from clio_stream.domain.facets import CONCERNING, REQUEST, Facet
from clio_stream.streaming.kafka_io import make_producer
from clio_stream.streaming.wire_format import encode_message
from clio_stream.devstack.processes import ManagedProcess, free_port, start_qdrant
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from consumers.worker import ConsumerWorker

log = logging.getLogger(__name__)

FACETS = [REQUEST, CONCERNING]
REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


# --------------------------------------------------------------------------- data and producing


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
    """Produce ``items`` (key, value) and fail the test if the broker refuses one."""
    producer = make_producer(bootstrap, max_request_size=4 << 20)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in items]
        producer.flush(30)
        assert not [f for f in futures if f.failed()], "the broker refused a test record"
    finally:
        producer.close()


def send_conversations(bootstrap: str, topic: str, convs: list[dict[str, Any]]) -> None:
    """Produce conversations keyed by id, as a real producer would."""
    send(bootstrap, topic, [(c["id"].encode(), encode_message(c)) for c in convs])


def streaming_settings(kafka: Any, qdrant_url: str, grpc_port: int, unique_name: Callable[[str], str],
                       **overrides: Any) -> ClioSettings:
    """Settings of one test's own topic, group and collections (short back-off so outages resolve fast)."""
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


# --------------------------------------------------------------------------- reading back


def reader_store(s: ClioSettings) -> QdrantStore:
    """A store of the test's own, to read what the workers wrote."""
    return QdrantStore(s.qdrant_url, prefix=s.qdrant_prefix, grpc_port=s.qdrant_grpc_port, keep_raw=True)


def processed_count(store: QdrantStore) -> int:
    flt = qm.Filter(must=[qm.FieldCondition(key="status", match=qm.MatchValue(value="processed"))])
    return int(store.client.count(store.conversations, count_filter=flt, exact=True).count)


def conversation_count(store: QdrantStore) -> int:
    """Conversation status points, pending or processed."""
    return int(store.client.count(store.conversations, exact=True).count)


def stored_pairs(store: QdrantStore) -> Counter:
    """(conversation id, facet) -> number of facet points (must be 1 each)."""
    pairs: Counter = Counter()
    offset = None
    while True:
        recs, offset = store.client.scroll(store.facets, limit=500, offset=offset, with_payload=True)
        pairs.update((r.payload["conversation_id"], r.payload["facet"]) for r in recs)
        if offset is None:
            return pairs


def facet_payloads(store: QdrantStore, facet: str) -> dict[str, dict[str, Any]]:
    """Conversation id -> payload of its ``facet`` point."""
    out: dict[str, dict[str, Any]] = {}
    offset = None
    flt = qm.Filter(must=[qm.FieldCondition(key="facet", match=qm.MatchValue(value=facet))])
    while True:
        recs, offset = store.client.scroll(store.facets, scroll_filter=flt, limit=500, offset=offset,
                                           with_payload=True)
        out.update((r.payload["conversation_id"], dict(r.payload)) for r in recs)
        if offset is None:
            return out


def valued(store: QdrantStore, facet: str) -> set[str]:
    """Conversations whose ``facet`` got a usable answer."""
    return {cid for cid, p in facet_payloads(store, facet).items() if p.get("value")}


def conversation_payloads(store: QdrantStore) -> dict[str, dict[str, Any]]:
    """Conversation id -> its status payload (status, updated_at, source offset, ...)."""
    out: dict[str, dict[str, Any]] = {}
    offset = None
    while True:
        recs, offset = store.client.scroll(store.conversations, limit=500, offset=offset, with_payload=True)
        out.update((r.payload["conversation_id"], dict(r.payload)) for r in recs)
        if offset is None:
            return out


def wait_for(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def safe_count(store: QdrantStore) -> int:
    """Processed conversations, or -1 while Qdrant does not answer."""
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


def point_tally(store: QdrantStore, convs: list[dict[str, Any]], facets: Sequence[Facet] = FACETS) -> dict[str, int]:
    """What the store holds against what was sent, counted: the figures a results file may quote.

    ``lost_points``: (conversation, facet) pairs sent but not stored; ``unexpected_points``: stored but never
    sent; ``duplicated_points``: extra copies of a pair (point ids make these impossible unless the id scheme
    breaks); ``not_processed``: conversations sent whose status is not ``processed``.
    """
    pairs = stored_pairs(store)
    want = {(c["id"], f.name) for c in convs for f in facets}
    statuses = {cid: p.get("status") for cid, p in conversation_payloads(store).items()}
    return {"lost_points": len(want - set(pairs)), "unexpected_points": len(set(pairs) - want),
            "duplicated_points": sum(n - 1 for n in pairs.values() if n > 1),
            "not_processed": sum(1 for c in convs if statuses.get(c["id"]) != "processed")}


def check_stored_once(store: QdrantStore, convs: list[dict[str, Any]], facets: Sequence[Facet] = FACETS) -> None:
    """Every conversation processed, with exactly one point per facet, and nothing else stored."""
    pairs = stored_pairs(store)
    want = {(c["id"], f.name) for c in convs for f in facets}
    assert set(pairs) == want, f"missing {sorted(want - set(pairs))[:5]}, extra {sorted(set(pairs) - want)[:5]}"
    assert all(n == 1 for n in pairs.values())
    assert sum(pairs.values()) == len(convs) * len(facets)
    assert processed_count(store) == len(convs)


def missing_numeric(store: QdrantStore, ids: Sequence[str], facet: Facet = CONCERNING) -> list[str]:
    """Conversations whose numeric facet has no value.

    A numeric facet is asked with vLLM structured outputs (one of its choices), so the model cannot answer it
    unparseably: a missing value there means the LLM request itself was lost (an outage stored as data).
    """
    payloads = facet_payloads(store, facet.name)
    return sorted(cid for cid in ids if payloads.get(cid, {}).get("numeric") is None)


# --------------------------------------------------------------------------- workers in threads


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


# --------------------------------------------------------------------------- workers as processes


def consume_env(s: ClioSettings, worker_id: str, config_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``clio-stream consume`` process for settings ``s`` (no TOML file is read)."""
    config = config_dir / "none.toml"
    config.write_text("")
    env = {
        "CLIO_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "CLIO_TOPIC": s.topic, "CLIO_DLQ_TOPIC": s.dlq_topic,
        "CLIO_DELTAS_TOPIC": s.deltas_topic, "CLIO_CONSUMER_GROUP": s.consumer_group,
        "CLIO_TOPIC_PARTITIONS": str(s.topic_partitions), "CLIO_MAX_POLL_RECORDS": str(s.max_poll_records),
        "CLIO_QDRANT_URL": s.qdrant_url, "CLIO_QDRANT_GRPC_PORT": str(s.qdrant_grpc_port),
        "CLIO_QDRANT_PREFIX": s.qdrant_prefix, "CLIO_EMBEDDING_MODEL": "all-MiniLM-L6-v2",
        "CLIO_SHOW_PROGRESS": "false", "CLIO_LLM_MAX_RETRIES": "1", "CLIO_USER_ID_HASH_KEY": "test-key",
        "CLIO_WORKER_ID": worker_id, "CLIO_METRICS_EVERY_BATCHES": "1", "HF_HUB_OFFLINE": "1",
        "CLIO_CONFIG": str(config), "CLIO_BACKOFF_INITIAL_S": str(s.backoff_initial_s),
        "CLIO_BACKOFF_MAX_S": str(s.backoff_max_s), "TOKENIZERS_PARALLELISM": "false",
    }
    env.update(extra)
    return env


def consume_process(s: ClioSettings, worker_id: str, llm_base_url: str, log_dir: Path,
                    facets: Sequence[Facet] = FACETS, **extra_env: str) -> ManagedProcess:
    """``clio-stream consume`` as a real process (not started), for SIGKILL tests."""
    argv = [sys.executable, "-m", "clio_stream.cli", "consume", "--facets", ",".join(f.name for f in facets),
            "--llm-base-url", llm_base_url]
    return ManagedProcess(f"consume-{worker_id}", argv, log_path=log_dir / f"{worker_id}.log",
                          env=consume_env(s, worker_id, log_dir, **extra_env), cwd=REPO, stop_timeout=60.0,
                          die_with_parent=True)


_BATCH_LINE = re.compile(r"batch: \d+ records -> (\d+) conversations")


def conversations_logged(log_path: Path) -> int:
    """Conversations a worker's log says it processed, over every life of the process (redeliveries included)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(int(m.group(1)) for m in _BATCH_LINE.finditer(text))


# --------------------------------------------------------------------------- a Qdrant of one's own


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


def external_vllm() -> bool:
    """True when the tests reuse a vLLM server they did not start (``CLIO_TEST_VLLM_URL``): never stop that one."""
    return bool(os.environ.get("CLIO_TEST_VLLM_URL"))
