"""A consumer's ``WorkerMetrics`` as Prometheus metrics, read at scrape time (nothing is counted twice).

Names follow Prometheus conventions (``clio_consumer_`` prefix, ``_total`` counters, base units); the label
``worker`` is the worker id, so a dashboard can sum over the group or pick one member.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clio_stream.ops.metrics_server import Health, MetricsServer, start_metrics_server
from clio_stream.settings import ClioSettings
from consumers.metrics import WorkerMetrics

if TYPE_CHECKING:  # pragma: no cover
    from consumers.worker import ConsumerWorker

# WorkerMetrics field -> (metric name without prefix, help). Every one is a counter since the worker started.
COUNTERS: dict[str, tuple[str, str]] = {
    "processed": ("conversations_processed_total", "Conversations stored (facet points and status written)."),
    "dead_lettered": ("records_dead_lettered_total", "Records sent to the dead-letter topic."),
    "reused_by_hash": ("conversations_reused_total", "Conversations answered from stored values of identical content."),
    "duplicates": ("records_superseded_total", "Records superseded by a later record with the same id in a batch."),
    "batches": ("batches_total", "Batches committed."),
    "failed_batches": ("batches_failed_total", "Batch attempts that failed and were retried (a dependency down)."),
    "commit_failures": ("commit_failures_total", "Offset commits refused (a rebalance took the partitions)."),
    "abandoned_batches": ("batches_abandoned_total", "Batches in flight given up uncommitted (after a failure "
                          "before them, a refused commit, a rebalance or a stop) and polled again."),
    "denied_dropped": ("records_denied_total", "Records of deleted users dropped before writing."),
    "llm_calls": ("llm_calls_total", "Batched LLM generate calls."),
    "llm_prompts": ("llm_prompts_total", "Prompts sent to the LLM."),
    "unparseable": ("llm_unparseable_total", "Facet answers that stayed unparseable after the re-asks."),
    "deltas_published": ("centroid_deltas_published_total", "Centroid deltas produced to the deltas topic."),
    "deltas_applied": ("centroid_deltas_applied_total", "Centroid deltas applied to this worker's clusters."),
    "deltas_rejected": ("centroid_deltas_rejected_total", "Malformed or hostile centroid deltas rejected."),
    "busy_seconds": ("busy_seconds_total", "Time spent on batches, poll to commit."),
    "llm_seconds": ("llm_seconds_total", "Time spent getting facet values (reuse lookups and the LLM)."),
    "embed_seconds": ("embed_seconds_total", "Time spent embedding facet values."),
    "store_write_seconds": ("store_write_seconds_total", "Time spent writing facet points and statuses to Qdrant."),
}
HEALTH_STATES = ("starting", "ok", "degraded", "stopped")
PREFIX = "clio_consumer_"


class WorkerCollector(Collector):
    """Yields one worker's counters and gauges from a consistent snapshot."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snap = self.metrics.snapshot()
        worker = [str(snap["worker_id"])]
        for field_name, (name, doc) in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name.removesuffix("_total"), doc, labels=["worker"])
            family.add_metric(worker, float(snap[field_name]))
            yield family
        by_code = CounterMetricFamily(PREFIX + "records_dead_lettered_by_reason",
                                      "Dead letters by reason code.", labels=["worker", "code"])
        for code, n in sorted(snap["dead_lettered_by_code"].items()):
            by_code.add_metric([*worker, code], float(n))
        yield by_code
        lag = GaugeMetricFamily(PREFIX + "lag_records", "Records waiting on this worker's partitions: high-water "
                                "mark minus the group's committed offset.", labels=["worker"])
        if snap["consumer_lag"] is not None:
            lag.add_metric(worker, float(snap["consumer_lag"]))
        yield lag
        by_partition = GaugeMetricFamily(PREFIX + "partition_lag_records", "Records waiting per owned partition "
                                         "(high-water mark minus committed offset).",
                                         labels=["worker", "topic", "partition"])
        for key, n in sorted(snap["partition_lag"].items()):
            topic, _, partition = key.rpartition("/")
            by_partition.add_metric([*worker, topic, partition], float(n))
        yield by_partition
        for field_name, name, doc in (("assigned", "assignments", "Facet vectors assigned to a cluster online."),
                                      ("outliers", "outliers", "Of those assignments, the outliers.")):
            family = CounterMetricFamily(PREFIX + name, doc, labels=["worker", "facet"])
            for facet, n in sorted(snap[field_name].items()):
                family.add_metric([*worker, facet], float(n))
            yield family
        health = GaugeMetricFamily(PREFIX + "health", "1 for the worker's current health state.",
                                   labels=["worker", "state"])
        for state in HEALTH_STATES:
            health.add_metric([*worker, state], 1.0 if snap["health"] == state else 0.0)
        yield health
        outliers = GaugeMetricFamily(PREFIX + "outlier_rate", "Recent share of assignments that were outliers.",
                                     labels=["worker", "facet"])
        for facet, rate in sorted(snap["outlier_rate"].items()):
            outliers.add_metric([*worker, facet], float(rate))
        yield outliers
        versions = GaugeMetricFamily(PREFIX + "cluster_version", "Clustering version the worker assigns with.",
                                     labels=["worker", "facet"])
        for facet, version in sorted(snap["cluster_versions"].items()):
            versions.add_metric([*worker, facet], float(version))
        yield versions
        drift = CounterMetricFamily(PREFIX + "drift_detections", "ADWIN drift detections since start.",
                                    labels=["worker", "facet"])
        for facet, state in sorted(snap["drift"].items()):
            drift.add_metric([*worker, facet], float(state.get("detections") or 0))
        yield drift


def worker_registry(metrics: WorkerMetrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(metrics))
    return registry


def worker_health(metrics: WorkerMetrics, loop_alive: bool) -> Health:
    """Live while the loop runs; ready while it is ``ok`` (degraded: a dependency is down, retrying)."""
    snap_health, reason = metrics.health, metrics.health_reason
    return Health(live=loop_alive and snap_health != "stopped", ready=snap_health == "ok",
                  detail=snap_health + (f" ({reason})" if reason else ""))


def serve_worker_metrics(settings: ClioSettings, worker: "ConsumerWorker", *, port: int | None = None) -> MetricsServer:
    """``worker``'s /metrics, /livez and /readyz on ``metrics_host:metrics_port`` (or ``port``)."""
    return start_metrics_server(settings, worker_registry(worker.metrics),
                                lambda: worker_health(worker.metrics, loop_alive=True), port=port)
