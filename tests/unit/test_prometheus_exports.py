"""Consumers and the scheduler export what they count, with Prometheus names, and answer the probes."""

from __future__ import annotations

import time

import httpx
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clio_stream.ops.metrics_server import Health, MetricsServer
from clio_stream.living.scheduler import ReclusterScheduler, Triggers
from clio_stream.living.scheduler_metrics import scheduler_health, scheduler_registry
from consumers.decoding import DeadLetter, Record
from consumers.metrics import WorkerMetrics
from consumers.processing import BatchOutcome
from consumers.prometheus import COUNTERS, worker_health, worker_registry


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _outcome() -> BatchOutcome:
    rec = Record("t", 0, 5, b"k", b"v")
    return BatchOutcome([], [], [DeadLetter(rec, "bad", "not_msgpack"), DeadLetter(rec, "bad", "not_msgpack")], [],
                        {("t", 0): (0, 5)}, llm_calls=1, llm_prompts=8, llm_seconds=1.5, embed_seconds=0.25)


def test_a_worker_scrape_reports_its_counters_and_health() -> None:
    metrics = WorkerMetrics("w1")
    metrics.record_batch(_outcome(), records=6, seconds=2.0)
    metrics.set_health("degraded", "Qdrant down")
    metrics.set_clusters({"Request": 0.25}, {"Request": 3})
    server = MetricsServer(worker_registry(metrics), lambda: worker_health(metrics, loop_alive=True)).start()
    try:
        got = _values(httpx.get(f"{server.url}/metrics").text)
        ready = httpx.get(f"{server.url}/readyz")
        live = httpx.get(f"{server.url}/livez")
    finally:
        server.stop()
    w = ("worker", "w1")
    assert got[("clio_consumer_records_dead_lettered_total", (w,))] == 2
    assert got[("clio_consumer_records_dead_lettered_by_reason_total", (("code", "not_msgpack"), w))] == 2
    assert got[("clio_consumer_llm_prompts_total", (w,))] == 8
    assert got[("clio_consumer_llm_seconds_total", (w,))] == 1.5
    assert got[("clio_consumer_health", (("state", "degraded"), w))] == 1
    assert got[("clio_consumer_cluster_version", (("facet", "Request"), w))] == 3
    assert {f"clio_consumer_{name}" for name, _ in COUNTERS.values()} <= {name for name, _ in got}
    assert ready.status_code == 503 and "Qdrant down" in ready.text and live.status_code == 200


def test_the_scrape_token_guards_metrics_but_not_the_probes() -> None:
    server = MetricsServer(worker_registry(WorkerMetrics("w")), lambda: Health(True, True), token="s3cret").start()
    try:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{server.url}/livez").status_code == 200
    finally:
        server.stop()


def test_the_scheduler_reports_runs_failures_and_the_published_version() -> None:
    from clio_stream.living.job import ReclusterReport
    from clio_stream.living.progress import StageTime

    report = ReclusterReport(version=7, points={"Request": 120}, clusters={"Request": 12}, llm_prompts=40,
                             stages=[StageTime("Request", "cluster and name", 3.5), StageTime("*", "write", 0.25)])
    calls = iter([report, RuntimeError("boom")])

    def run(reason: str) -> ReclusterReport:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    from clio_stream.living.scheduler import Snapshot

    snap = lambda: Snapshot(now=0.0, last_run_at=None, points_at_last_run=0, points_now=100)  # noqa: E731
    sched = ReclusterScheduler(snap, run, Triggers(min_points=1), poll_s=0.01)
    sched.start()
    deadline = time.monotonic() + 10
    while (sched.runs < 1 or sched.failures < 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    sched.stop_event.set()
    sched.join(5)
    got = _values(generate_latest(scheduler_registry(sched)).decode())
    assert got[("clio_recluster_runs_total", ())] == 1 and got[("clio_recluster_failures_total", ())] >= 1
    assert got[("clio_recluster_published_version", ())] == 7
    assert got[("clio_recluster_stage_seconds", (("facet", "Request"), ("stage", "cluster and name")))] == 3.5
    assert got[("clio_recluster_stage_seconds", (("facet", "*"), ("stage", "write")))] == 0.25
    assert got[("clio_recluster_llm_prompts", ())] == 40 and got[("clio_recluster_points", (("facet", "Request"),))] == 120
    assert not scheduler_health(sched, stale_after_s=60).live  # stopped


def test_the_grafana_dashboard_only_uses_metrics_that_exist() -> None:
    """Every clio_* name in deploy/grafana/clio-stream.json is one a process exports (a renamed metric fails)."""
    import json
    import re
    from pathlib import Path

    from api.metrics import ApiMetrics

    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "clio-stream.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"clio_[a-z_]+", t["expr"])}
    metrics = WorkerMetrics("w")
    metrics.record_batch(_outcome(), records=6, seconds=1.0)  # a dead letter, so its by-reason sample exists
    metrics.set_clusters({"Request": 0.1}, {"Request": 1})
    metrics.set_drift({"Request": {"detections": 1}})
    metrics.set_lag(0)
    exported = set()
    texts = [generate_latest(worker_registry(metrics)).decode(), ApiMetrics().render().decode()]
    sched = ReclusterScheduler(lambda: None, lambda r: None, Triggers())  # type: ignore[arg-type, return-value]
    sched.last_run_seconds = 1.0
    texts.append(generate_latest(scheduler_registry(sched)).decode())
    from prometheus_client import CollectorRegistry

    from clio_stream.living.run_metrics import OneRunCollector, RunOutcome

    pushed = CollectorRegistry(auto_describe=False)  # what a one-shot run (the CronJob) pushes
    pushed.register(OneRunCollector(RunOutcome.PUBLISHED, 1.0, None, finished_at=0.0))
    texts.append(generate_latest(pushed).decode())
    for text in texts:
        for family in text_string_to_metric_families(text):
            exported.add(family.name)
            exported.update(s.name for s in family.samples)
    api = ApiMetrics()
    api.observe("GET", "/x", 200, 0.01)
    exported.update(s.name for f in text_string_to_metric_families(api.render().decode()) for s in f.samples)
    assert used - exported == set(), f"the dashboard uses metrics nobody exports: {sorted(used - exported)}"
