"""Consumers joining and leaving while conversations stream in, with clustering on: no delta counts twice.

Real parts: the Tansu broker, the Qdrant server, the shared vLLM server (OpenAI back-end) and MiniLM. A seed
wave is clustered (``bootstrap_clustering``), so every later batch ships centroid deltas. Then, while the
stream is sent in waves, worker A's commit of the batch in hand is refused as a rebalance refuses it and A
leaves (that batch is redelivered to the next owner, over another offset range), B and C join together, then
B leaves mid-stream. Every delivery of a batch ships deltas, so a record processed twice ships twice.

Checked from what was observed: every conversation stored once; every worker's clusters, and a replica that
replays the deltas topic from scratch, hold the bootstrap's counts plus exactly one per stored value (a
double-applied delta adds more); the replicas agree with each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from kafka.errors import CommitFailedError

from clio_stream.streaming.kafka_io import ensure_topics
from clio_stream.llm import make_llm
from clio_stream.settings import ClioSettings
from clio_stream.online.kmeans import OnlineKMeans
from consumers.bootstrap import bootstrap_clustering
from consumers.centroids import SharedCentroids
from consumers.deltas_io import receive
from consumers.worker import ConsumerWorker
from tests.integration.conftest import minilm  # noqa: F401 - session fixture
from tests.reliability.helpers import pooled_conversations
from tests.streaming_helpers import (
    FACETS,
    LockedEmbedder,
    check_stored_once,
    committed,
    facet_payloads,
    point_tally,
    read_topic,
    reader_store,
    send_conversations,
    start_thread,
    stop_thread,
    streaming_settings,
    wait_for,
)

log = logging.getLogger(__name__)


def _fail_one_commit(worker: ConsumerWorker, then: Callable[[], None]) -> list[int]:
    """The worker's next commit is refused as after a rebalance, and ``then`` runs (its batch will be redelivered).

    ``then`` stops the worker's loop at once: a worker that polled on would commit a later batch of the same
    partition, and its offsets would move past the refused batch before anyone else owned it.
    """
    consumer = worker._consumer
    assert consumer is not None
    real, refused = consumer.commit, []

    def commit(offsets: Any = None) -> None:
        if not refused:
            refused.append(1)
            then()
            raise CommitFailedError("injected: the group rebalanced before the commit")
        real(offsets)

    consumer.commit = commit  # type: ignore[method-assign]
    return refused


class Group:
    """Workers of one consumer group, each on a thread of its own, sharing one embedder."""

    def __init__(self, s: ClioSettings, embedder: Any) -> None:
        self.s, self.embedder = s, embedder
        self.workers: dict[str, ConsumerWorker] = {}
        self.threads: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def start(self, name: str) -> ConsumerWorker:
        w = ConsumerWorker(self.s.with_overrides(worker_id=name), facets=FACETS, llm=make_llm(self.s),
                           embedder=self.embedder)
        self.workers[name] = w
        self.threads[name] = start_thread(w)
        return w

    def stop(self, name: str) -> None:
        stop_thread(*self.threads.pop(name))

    def close(self) -> None:
        for name in list(self.threads):
            self.stop(name)
        for w in self.workers.values():
            w.close()


def seed_clustering(group: Group, store: Any, seed: list[dict[str, Any]]) -> tuple[ConsumerWorker, OnlineKMeans]:
    """Worker A stores ``seed``, a first clustering is made of it, and A loads it: every later batch ships deltas."""
    s = group.s
    a = group.start("worker-a")
    send_conversations(s.kafka_bootstrap, s.topic, seed)
    wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(seed), 300, "the seed")
    assert bootstrap_clustering(store, FACETS, s) == 1
    bootstrap = OnlineKMeans.from_state(store.versions.get_centroids("Request", 1))  # type: ignore[arg-type]
    wait_for(lambda: "Request" in a.centroids.models, 60, "worker-a to load the clustering")  # type: ignore[union-attr]
    return a, bootstrap


def test_rebalances_during_a_clustered_stream_apply_each_delta_once(
    kafka_broker: Any, qdrant_server: Any, vllm_server: Any, minilm: Any,  # noqa: F811
    unique_name: Callable[[str], str], long_run: bool, reliability_report: Callable[..., None],
) -> None:
    n_stream = 96 if long_run else 36
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=3, max_poll_records=4, llm_backend="openai",
                           llm_base_url=vllm_server.base_url, n_base_clusters=lambda n: 4)
    ensure_topics(s.kafka_bootstrap, {s.topic: 3, s.dlq_topic: 3, s.deltas_topic: 1})
    convs = pooled_conversations(12 + n_stream, 12, unique_name("rb"))
    seed, stream = convs[:12], convs[12:]
    embedder = LockedEmbedder(minilm)
    store = reader_store(s)
    group = Group(s, embedder)
    workers, threads, start = group.workers, group.threads, group.start

    t0 = time.monotonic()
    try:
        a, bootstrap = seed_clustering(group, store, seed)

        waves = [stream[i::3] for i in range(3)]
        refused = _fail_one_commit(a, then=threads["worker-a"][1].set)
        send_conversations(s.kafka_bootstrap, s.topic, waves[0])
        wait_for(lambda: bool(refused), 300, "worker-a's refused commit")
        stop_thread(*threads.pop("worker-a"))  # leaves without that commit: its batch goes to the next owner
        start("worker-b")
        start("worker-c")  # two join: the group rebalances
        sent = len(seed) + len(waves[0])
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == sent, 300,
                 "the refused batch redelivered and committed")
        send_conversations(s.kafka_bootstrap, s.topic, waves[1])
        sent += len(waves[1])
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) >= sent - 4, 300,
                 "most of the second wave")
        stop_thread(*threads.pop("worker-b"))  # one leaves mid-stream: another rebalance
        send_conversations(s.kafka_bootstrap, s.topic, waves[2])
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 600,
                 "every conversation committed")
        t_done = time.monotonic()
        live = [w for name, w in workers.items() if name in threads]
        # Every live replica has read every delta once the topic is drained (the reader never blocks a batch).
        n_deltas_topic = len(read_topic(s.kafka_bootstrap, s.deltas_topic, 10_000, timeout=5))
        for w in live:
            wait_for(lambda w=w: w.run_once(200) >= 0 and w._deltas.caught_up.is_set(), 60,  # type: ignore[union-attr]
                     f"{w.worker_id} to read every delta", every=0.0)
        for name in list(threads):
            stop_thread(*threads.pop(name))

        check_stored_once(store, convs)
        valued = [p for cid, p in facet_payloads(store, "Request").items()
                  if p.get("value") and cid in {c["id"] for c in stream}]
        expected_added = len(valued)  # each stored value once; the seed's points are in the bootstrap
        replica = SharedCentroids(["Request"], embedder.dim)
        assert replica.refresh(store.versions) == ["Request"]
        received = [receive(r) for r in read_topic(s.kafka_bootstrap, s.deltas_topic, n_deltas_topic, timeout=10)]
        report = replica.apply(received)
        models = {"replay": replica.models["Request"], **{w.worker_id: w.centroids.models["Request"] for w in live}}  # type: ignore[union-attr]
        added = {name: int(m.counts.sum() - bootstrap.counts.sum()) for name, m in models.items()}
        snaps = {name: w.metrics_snapshot() for name, w in workers.items()}
        deliveries = sum(v["processed"] for v in snaps.values())
        figures = dict(conversations=len(convs), stream=len(stream), workers=sorted(workers),
                       injected_commit_refusals=len(refused),
                       commit_failures=sum(v["commit_failures"] for v in snaps.values()),
                       conversations_stored_more_than_once=deliveries - len(convs),
                       delta_messages=n_deltas_topic, deltas_rejected=len(report.rejected),
                       values_stored=expected_added, records_added_by_model=added, **point_tally(store, convs),
                       seconds=round(t_done - t0, 1))
        reliability_report(**figures)
        log.info("rebalance figures: %s", figures)

        assert deliveries > len(convs), "no batch was delivered twice: the test did not exercise a redelivery"
        assert report.rejected == []
        assert all(n == expected_added for n in added.values()), (
            f"each stored value must count once: expected +{expected_added}, got {added}")
        for name, m in models.items():
            np.testing.assert_allclose(m.centroids, models["replay"].centroids, atol=1e-6, err_msg=name)
    finally:
        group.close()
        store.close()


def test_a_rebalance_with_batches_in_flight_loses_and_duplicates_nothing(
    kafka_broker: Any, qdrant_server: Any, vllm_server: Any, minilm: Any,  # noqa: F811
    unique_name: Callable[[str], str], reliability_report: Callable[..., None],
) -> None:
    """Worker A has several batches in flight (the LLM is still answering them) when B joins the group.

    A's rebalance listener writes and commits the batches already done and gives up the rest uncommitted;
    whoever owns their partitions next polls them again from the committed offsets. Every conversation must
    end up stored once, every offset committed, and each stored value counted once by a replica that replays
    the deltas topic from scratch (a batch written twice ships its deltas twice).
    """
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=2, max_poll_records=3, max_in_flight_batches=3, llm_backend="openai",
                           llm_base_url=vllm_server.base_url, n_base_clusters=lambda n: 4)
    ensure_topics(s.kafka_bootstrap, {s.topic: 2, s.dlq_topic: 2, s.deltas_topic: 1})
    convs = pooled_conversations(36, 36, unique_name("fl"))  # all texts distinct: every batch asks the LLM
    seed, stream = convs[:12], convs[12:]
    stream_ids = {c["id"] for c in stream}
    group, store, t0 = Group(s, LockedEmbedder(minilm)), reader_store(s), time.monotonic()
    try:
        a, bootstrap = seed_clustering(group, store, seed)

        send_conversations(s.kafka_bootstrap, s.topic, stream)
        wait_for(lambda: len(a._in_flight) >= 2, 120, "worker-a to have two batches in flight", every=0.05)
        in_flight_at_join = len(a._in_flight)
        group.start("worker-b")  # joins: the group rebalances while A's batches are in flight
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 600,
                 "every conversation committed")
        seconds = time.monotonic() - t0
        n_deltas_topic = len(read_topic(s.kafka_bootstrap, s.deltas_topic, 10_000, timeout=5))
        for name in list(group.threads):
            group.stop(name)

        check_stored_once(store, convs)
        valued = [cid for cid, p in facet_payloads(store, "Request").items() if p.get("value") and cid in stream_ids]
        replica = SharedCentroids(["Request"], group.embedder.dim)
        assert replica.refresh(store.versions) == ["Request"]
        received = [receive(r) for r in read_topic(s.kafka_bootstrap, s.deltas_topic, n_deltas_topic, timeout=10)]
        report = replica.apply(received)
        added = int(replica.models["Request"].counts.sum() - bootstrap.counts.sum())
        snaps = {name: w.metrics_snapshot() for name, w in group.workers.items()}
        figures = dict(conversations=len(convs), stream=len(stream), in_flight_at_join=in_flight_at_join,
                       batches_abandoned={n: v["abandoned_batches"] for n, v in snaps.items()},
                       conversations_stored_more_than_once=sum(v["processed"] for v in snaps.values()) - len(convs),
                       delta_messages=n_deltas_topic, deltas_rejected=len(report.rejected),
                       values_stored=len(valued), records_added_by_replayed_deltas=added,
                       **point_tally(store, convs), seconds=round(seconds, 1))
        reliability_report(**figures)
        log.info("rebalance with batches in flight: %s", figures)

        assert snaps["worker-a"]["abandoned_batches"] >= 1, "no batch was in flight at the rebalance: nothing tested"
        assert report.rejected == []
        assert added == len(valued), f"each stored value must count once: +{len(valued)} expected, +{added} applied"
    finally:
        group.close()
        store.close()
