"""Prometheus metrics of one API app, in a registry of its own.

A registry per app (not the process-global default) keeps several apps in one
process (tests, an embedding service) from clashing over metric names.

With several uvicorn workers (``api_workers`` > 1) ``clio-stream api`` sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start, so prometheus_client keeps
every worker's values in shared files and ``render`` sums them: a scrape that
lands on any worker sees the whole API, not one process's share.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_across_workers() -> None:
    """A fresh folder for prometheus_client's multiprocess mode; call before the uvicorn workers start."""
    import logging
    import tempfile

    if not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="clio-api-metrics-")
        logging.getLogger(__name__).info("API workers share their metrics through %s", os.environ[MULTIPROC_ENV])

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    """Counters and histograms the middleware and routes update; ``render`` is the /metrics body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "clio_api_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "clio_api_request_duration_seconds", "Time to answer a request, by route template.",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("clio_api_requests_in_flight", "Requests being answered now.", registry=self.registry,
                               multiprocess_mode="livesum")
        self.accepted = Counter(
            "clio_api_conversations_accepted", "Conversations produced to Kafka.", registry=self.registry)
        self.rejected = Counter(
            "clio_api_conversations_rejected", "Conversations refused by validation, by reason code.",
            ["code"], registry=self.registry)
        self.auth_failures = Counter(
            "clio_api_auth_failures", "Refused requests: 401 (no or bad credentials) and 403 (role too low).",
            ["status"], registry=self.registry)
        self.accepted_total = 0  # the same number as ``accepted``, readable without registry internals
        self.published_loads = Counter(
            "clio_api_published_loads", "Published versions loaded into the API.", registry=self.registry)

    def count_accepted(self, n: int = 1) -> None:
        self.accepted.inc(n)
        self.accepted_total += n

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
