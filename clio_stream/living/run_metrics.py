"""One re-clustering run as Prometheus metrics: scraped from the scheduler, pushed by a one-shot run.

The scheduler is a long-running process, so Prometheus scrapes it (``living.scheduler_metrics``). A Kubernetes
CronJob's ``clio-stream recluster`` lives for one run and is gone before any scrape: it pushes the same families
to a Prometheus Pushgateway (``metrics_pushgateway_url``) when it ends, the convention for batch jobs. Both
describe a run with the families below, defined once here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # pragma: no cover
    from clio_stream.living.job import ReclusterReport

log = logging.getLogger(__name__)

PREFIX = "clio_recluster_"
PUSH_JOB = "clio-recluster"


class RunOutcome(str, Enum):
    """How a one-shot run ended (the CronJob's exit status says only ok or not)."""

    PUBLISHED = "published"
    SKIPPED = "skipped"  # another run held the lock, or nothing was stored yet
    NOT_DUE = "not_due"  # --if-due and no trigger fired
    FAILED = "failed"


def report_families(report: ReclusterReport | None) -> Iterator[Metric]:
    """The last published run: its version, wall time per facet and stage, LLM prompts, points and clusters."""
    version = GaugeMetricFamily(PREFIX + "published_version", "Clustering version the last run published.")
    stages = GaugeMetricFamily(PREFIX + "stage_seconds", "Wall time of each stage of the last published run "
                               "(facet '*': stages over all facets, such as the write).", labels=["facet", "stage"])
    prompts = GaugeMetricFamily(PREFIX + "llm_prompts", "LLM prompts the last published run sent.")
    points = GaugeMetricFamily(PREFIX + "points", "Points per facet the last published run clustered.",
                               labels=["facet"])
    clusters = GaugeMetricFamily(PREFIX + "clusters", "Base clusters per facet the last published run produced.",
                                 labels=["facet"])
    if report is not None:
        version.add_metric([], float(report.version))
        for t in report.stages:
            stages.add_metric([t.facet, t.stage], t.seconds)
        prompts.add_metric([], float(report.llm_prompts))
        for facet, n in sorted(report.points.items()):
            points.add_metric([facet], float(n))
        for facet, n in sorted(report.clusters.items()):
            clusters.add_metric([facet], float(n))
    yield from (version, stages, prompts, points, clusters)


class OneRunCollector(Collector):
    """What one ``clio-stream recluster`` did, for the Pushgateway."""

    def __init__(self, outcome: RunOutcome, seconds: float, report: ReclusterReport | None,
                 *, finished_at: float) -> None:
        self.outcome, self.seconds, self.report, self.finished_at = outcome, seconds, report, finished_at

    def collect(self) -> Iterator[Metric]:
        ended = GaugeMetricFamily(PREFIX + "job_last_end_timestamp_seconds", "When the last one-shot run ended, "
                                  "by outcome (alert when the 'published' or 'not_due' one grows old).",
                                  labels=["outcome"])
        ended.add_metric([self.outcome.value], self.finished_at)
        yield ended
        yield GaugeMetricFamily(PREFIX + "job_last_run_seconds", "Wall time of the last one-shot run.",
                                value=self.seconds)
        yield from report_families(self.report)


def push_run_metrics(url: str, outcome: RunOutcome, seconds: float, report: ReclusterReport | None, *,
                     timeout_s: float = 10.0) -> bool:
    """Push one run's metrics to the Pushgateway at ``url``; False (logged) when it cannot be reached.

    A push that fails never fails the run: the clustering is published either way.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OneRunCollector(outcome, seconds, report, finished_at=time.time()))
    try:
        push_to_gateway(url, job=PUSH_JOB, registry=registry, timeout=timeout_s)
    except Exception:  # noqa: BLE001 - metrics are informative; the run's outcome stands
        log.warning("could not push the run's metrics to the Pushgateway at %s", url, exc_info=True)
        return False
    log.info("pushed the run's metrics (%s) to %s", outcome.value, url)
    return True
