"""The re-clustering scheduler as Prometheus metrics and probes (``clio_recluster_`` names)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from clio_stream.living.run_metrics import PREFIX, report_families
from clio_stream.living.scheduler import ReclusterScheduler
from clio_stream.ops.metrics_server import Health, MetricsServer, start_metrics_server
from clio_stream.settings import ClioSettings


class SchedulerCollector(Collector):
    """Runs, failures, the last run's duration, and the last published run's figures, read at scrape."""

    def __init__(self, scheduler: ReclusterScheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler
        yield CounterMetricFamily(PREFIX + "runs", "Re-clustering runs that finished.", value=float(s.runs))
        yield CounterMetricFamily(PREFIX + "failures", "Re-clustering runs that failed (retried at the next "
                                  "trigger).", value=float(s.failures))
        last = GaugeMetricFamily(PREFIX + "last_run_seconds", "Wall time of the last finished run.")
        if s.last_run_seconds is not None:
            last.add_metric([], s.last_run_seconds)
        yield last
        yield from report_families(s.last_report)


def scheduler_registry(scheduler: ReclusterScheduler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SchedulerCollector(scheduler))
    return registry


def scheduler_health(scheduler: ReclusterScheduler, *, stale_after_s: float) -> Health:
    """Live while the loop polls (a run in progress counts: it may take long); ready once it has polled."""
    polled = scheduler.last_poll_at
    running = scheduler.is_alive() or polled is not None
    fresh = polled is not None and time.monotonic() - polled < stale_after_s
    return Health(live=running and not scheduler.stop_event.is_set(), ready=fresh,
                  detail=f"runs={scheduler.runs} failures={scheduler.failures}"
                         + (f" last_error={scheduler.last_error[:120]}" if scheduler.last_error else ""))


def serve_scheduler_metrics(settings: ClioSettings, scheduler: ReclusterScheduler, *,
                            port: int | None = None) -> MetricsServer:
    """The scheduler's /metrics, /livez and /readyz on ``metrics_host:metrics_port`` (or ``port``)."""
    stale = max(60.0, 3 * scheduler.poll_s)
    return start_metrics_server(settings, scheduler_registry(scheduler),
                                lambda: scheduler_health(scheduler, stale_after_s=stale), port=port)
