"""A batch redelivered over a different range after a failed commit: its deltas count once.

Real broker (Tansu) and real Qdrant server; the LLM and the embedder are the scripted stand-ins of the unit
tests, because what is under test is Kafka's redelivery and the shared deltas topic, not the answers (a real
model would add minutes and nothing to check).

Worker A polls 4 records at a time; the commit of its first batch after a clustering is published fails and
A stops, as a worker does when a rebalance takes its partitions. Worker B (16 records a poll) gets the
partition, is redelivered A's 4 records inside a longer range, and processes them again. The centroids of
B, and of a replica replaying the deltas topic from scratch, must equal the bootstrap clustering plus every
stored record once (A's assignment for the records A processed first). Batch ids derived from the poll range
counted A's 4 records twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from kafka.errors import CommitFailedError

from clio_stream.embedding import embedding_text
from clio_stream.streaming.kafka_io import ensure_topics
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from consumers.bootstrap import bootstrap_clustering
from consumers.centroids import SharedCentroids
from consumers.deltas_io import receive
from consumers.worker import ConsumerWorker
from tests.streaming_helpers import (
    FACETS,
    check_stored_once,
    banking,
    committed,
    facet_payloads,
    read_topic,
    reader_store,
    send_conversations,
    streaming_settings,
    wait_for,
)
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


def make_worker(s: ClioSettings, name: str) -> ConsumerWorker:
    return ConsumerWorker(s.with_overrides(worker_id=name), facets=FACETS, llm=ScriptedLLM(sensible_script),
                          embedder=HashEmbedder())


def run_until(worker: ConsumerWorker, processed: int, timeout: float = 120) -> None:
    wait_for(lambda: worker.run_once(500) >= 0 and worker.metrics.processed >= processed, timeout,
             f"{worker.worker_id} to process {processed}", every=0.0)


def fail_next_commit(worker: ConsumerWorker) -> list[int]:
    """Make the worker's next commit fail as after a rebalance; returns the list the failures are counted in."""
    consumer = worker._consumer
    assert consumer is not None
    real, failures = consumer.commit, []

    def commit(offsets: Any = None) -> None:
        if not failures:
            failures.append(1)
            raise CommitFailedError("injected: the group rebalanced")
        real(offsets)

    consumer.commit = commit  # type: ignore[method-assign]
    return failures


def source_offsets(store: QdrantStore, ids: list[str]) -> dict[str, int]:
    return {cid: int(store.points.get_conversation(cid)["source"]["offset"]) for cid in ids}  # type: ignore[index]


def expected_model(bootstrap: OnlineKMeans, points: list[dict[str, Any]], vectors: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(counts, centroids) from scratch: the bootstrap clustering's sums plus each given point once."""
    sums = bootstrap.centroids.astype(np.float64) * bootstrap.counts[:, None]
    counts = bootstrap.counts.copy()
    for p in points:
        sums[p["cluster_id"]] += vectors[p["conversation_id"]]
        counts[p["cluster_id"]] += 1
    return counts, sums / np.maximum(counts, 1)[:, None]


@pytest.fixture
def settings(kafka_broker, qdrant_server, unique_name) -> Iterator[ClioSettings]:
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=1, max_poll_records=4, n_base_clusters=lambda n: 3)
    ensure_topics(s.kafka_bootstrap, {s.topic: 1, s.dlq_topic: 1, s.deltas_topic: 1})
    yield s


def test_a_redelivery_over_a_longer_range_after_a_failed_commit_counts_each_record_once(settings) -> None:
    s = settings
    seed, stream = banking(12, 0, "seed"), banking(16, 12, "live")
    store = reader_store(s)
    a = make_worker(s, "worker-a")
    b: ConsumerWorker | None = None
    try:
        send_conversations(s.kafka_bootstrap, s.topic, seed)
        run_until(a, len(seed))
        assert bootstrap_clustering(store, FACETS, s) == 1
        bootstrap = OnlineKMeans.from_state(store.versions.get_centroids("Request", 1))  # type: ignore[arg-type]

        send_conversations(s.kafka_bootstrap, s.topic, stream)
        failures = fail_next_commit(a)
        run_until(a, len(seed) + 4)  # one batch of 4, its deltas published, its commit lost
        assert failures == [1] and a.metrics.commit_failures == 1
        first_ids = [c["id"] for c in stream[:4]]
        first = {cid: p for cid, p in facet_payloads(store, "Request").items() if cid in first_ids}
        assert len(first) == 4 and all(p["cluster_version"] == 1 for p in first.values())
        a.close()  # leaves the group without committing: the new owner starts at the last commit
        assert committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(seed)

        b = make_worker(s.with_overrides(max_poll_records=16), "worker-b")
        run_until(b, len(stream))  # A's four records again, in one range with the twelve after them
        assert b.metrics.processed == len(stream)
        assert committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(seed) + len(stream)
        offsets = source_offsets(store, [c["id"] for c in stream])
        assert sorted(offsets.values()) == list(range(len(seed), len(seed) + len(stream)))
        wait_for(lambda: b.run_once(200) >= 0 and b.centroids.models["Request"].learned >= len(stream), 60,  # type: ignore[union-attr]
                 "worker-b to apply every delta", every=0.0)

        # From scratch: the bootstrap plus each record once, with the assignment of its first delivery.
        stored = facet_payloads(store, "Request")
        points = [first.get(c["id"], stored[c["id"]]) for c in stream]
        # The vector of a value is that of its answer after the facet's prefill (what the worker embeds).
        vectors = dict(zip([p["conversation_id"] for p in points],
                           HashEmbedder().encode([embedding_text(FACETS[0], p["value"]) for p in points])))
        counts, centroids = expected_model(bootstrap, points, vectors)
        model_b = b.centroids.models["Request"]  # type: ignore[union-attr]
        assert model_b.learned == len(stream), "a redelivered record was counted twice"
        np.testing.assert_array_equal(model_b.counts, counts)
        np.testing.assert_allclose(model_b.centroids, centroids, atol=1e-5)

        # A replica replaying the deltas topic from the beginning agrees.
        replica = SharedCentroids(["Request"], HashEmbedder.dim)
        assert replica.refresh(store.versions) == ["Request"]
        received = [receive(r) for r in read_topic(s.kafka_bootstrap, s.deltas_topic, 100, timeout=5)]
        ranges = [(r.deltas.first, r.deltas.last) for r in received if r.deltas is not None]
        n0 = len(seed)
        assert ranges[0] == (n0, n0 + 3) and ranges[1][0] == n0 and ranges[1][1] > n0 + 3, ranges  # another range
        report = replica.apply(received)
        assert report.rejected == [] and report.records == len(stream)
        np.testing.assert_array_equal(replica.models["Request"].counts, counts)
        np.testing.assert_allclose(replica.models["Request"].centroids, model_b.centroids, atol=1e-6)
        log.info("redelivered 4 of %d records over a longer range: counts %s match the replay",
                 len(stream), counts.tolist())
    finally:
        a.close()
        if b is not None:
            b.close()
        store.close()


class SlowFailingOnce(ScriptedLLM):
    """A scripted LLM that takes a moment per call (so batches overlap) and fails the first call that asks
    about a conversation containing ``needle``, as an LLM outage would."""

    def __init__(self, needle: str) -> None:
        super().__init__(sensible_script)
        self.needle, self.failed = needle, False

    def generate(self, prompts: Any, sampling: Any, *, seed: int | None = None, desc: str | None = None) -> Any:
        import time

        time.sleep(0.3)
        if not self.failed and any(self.needle in str(p.values.get("conversation", "")) for p in prompts):
            self.failed = True
            raise ConnectionError("injected: the LLM server went away")
        return super().generate(prompts, sampling, seed=seed, desc=desc)


def test_a_batch_failing_with_later_batches_in_flight_is_redone_with_them_and_nothing_is_lost(settings) -> None:
    """Batch 2 of 4 fails in the LLM while batch 3 is already in flight: batch 3 is given up uncommitted, the
    worker seeks back to batch 2's first offset, and every conversation ends up stored once and committed."""
    s = settings.with_overrides(max_in_flight_batches=3)
    convs = banking(16, 40, "flight")
    needle = convs[5]["conversation"][0]["content"]  # in the second batch of four
    store = reader_store(s)
    worker = ConsumerWorker(s.with_overrides(worker_id="flight"), facets=FACETS, llm=SlowFailingOnce(needle),
                            embedder=HashEmbedder())
    try:
        send_conversations(s.kafka_bootstrap, s.topic, convs)
        run_until(worker, len(convs))
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 30, "the commits")
        snap = worker.metrics_snapshot()
        assert snap["failed_batches"] == 1 and snap["abandoned_batches"] >= 1, snap
        check_stored_once(store, convs)
        offsets = source_offsets(store, [c["id"] for c in convs])
        assert sorted(offsets.values()) == list(range(len(convs)))
    finally:
        worker.close()
        store.close()
