"""A one-shot re-clustering run (the Kubernetes CronJob) pushes its metrics to a Pushgateway when it ends.

The receiver is a real HTTP server on loopback speaking the Pushgateway's push protocol (PUT
/metrics/job/<job> with the text exposition format); the body is parsed with prometheus_client's parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clio_stream.living.job import ReclusterReport
from clio_stream.living.progress import StageTime
from clio_stream.living.run_metrics import PUSH_JOB, RunOutcome, push_run_metrics
from tests.loopback_http import Recorder


class Pushgateway(Recorder):
    """Records every push it receives: (method, path, body)."""

    @property
    def pushes(self) -> list[tuple[str, str, str]]:
        return [(r.method, r.path, r.body.decode()) for r in self.requests]

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        (_, _, body), = self.pushes
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(body) for s in f.samples}


@pytest.fixture
def gateway() -> Iterator[Pushgateway]:
    gw = Pushgateway()
    yield gw
    gw.close()


def test_a_published_run_pushes_its_outcome_stages_and_version(gateway: Pushgateway) -> None:
    report = ReclusterReport(version=4, points={"Request": 50}, clusters={"Request": 5}, llm_prompts=12,
                             stages=[StageTime("Request", "cluster and name", 2.0)])
    assert push_run_metrics(gateway.url, RunOutcome.PUBLISHED, 9.5, report)
    assert gateway.pushes[0][1] == f"/metrics/job/{PUSH_JOB}"
    got = gateway.samples()
    assert got[("clio_recluster_published_version", ())] == 4
    assert got[("clio_recluster_job_last_run_seconds", ())] == 9.5
    assert ("clio_recluster_job_last_end_timestamp_seconds", (("outcome", "published"),)) in got
    assert got[("clio_recluster_stage_seconds", (("facet", "Request"), ("stage", "cluster and name")))] == 2.0


def test_an_unreachable_gateway_never_fails_the_run() -> None:
    assert push_run_metrics("http://127.0.0.1:9", RunOutcome.PUBLISHED, 1.0, None, timeout_s=2) is False


def test_a_failed_recluster_command_exits_1_and_still_pushes(gateway: Pushgateway, monkeypatch, tmp_path) -> None:
    """The CLI path: Qdrant is unreachable, so the run fails; the push says so (outcome 'failed')."""
    from clio_stream.cli.living import cmd_recluster

    monkeypatch.setenv("CLIO_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("CLIO_METRICS_PUSHGATEWAY_URL", gateway.url)
    monkeypatch.setenv("CLIO_QDRANT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("CLIO_USER_ID_HASH_KEY", "a-test-key-that-is-not-a-placeholder")
    monkeypatch.setenv("CLIO_PUBLISH_DIR", str(tmp_path / "published"))
    args = argparse.Namespace(facets=None, if_due=False, interval=None, new_fraction=None, min_points=None,
                              llm_model=None, embedding_model=None, llm_base_url=None, kafka_bootstrap=None,
                              topic=None, qdrant_url=None)
    assert cmd_recluster(args) == 1
    got = gateway.samples()
    assert ("clio_recluster_job_last_end_timestamp_seconds", (("outcome", "failed"),)) in got
    assert ("clio_recluster_published_version", ()) not in got
