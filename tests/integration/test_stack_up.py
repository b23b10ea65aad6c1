"""README command 1's main job, end to end: `clio-stream up` streams example data into a live dashboard.

Everything is real and on loopback: Tansu broker, Qdrant server, vLLM's OpenAI
server, a consumer process, the API with the dashboard, the scheduler.
"""

from __future__ import annotations

import time

import httpx
import pytest

from clio_stream.devstack.processes import free_port
from clio_stream.settings import ClioSettings
from clio_stream.devstack.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_up_streams_examples_into_a_published_dashboard(tmp_path):
    from tests.unit.test_views_alerts import Receiver

    receiver = Receiver()
    web = free_port()
    qport = free_port()
    settings = ClioSettings(
        cache_dir=tmp_path, kafka_bootstrap=f"127.0.0.1:{free_port()}", qdrant_url=f"http://127.0.0.1:{qport}",
        qdrant_grpc_port=free_port(), web_port=web, embedding_model="all-MiniLM-L6-v2", show_progress=False,
        n_name_description_samples_per_cluster=1, n_rename_samples=1, n_categorize_samples=1,
        min_cluster_users=2, min_cluster_conversations=3, max_conversation_tokens=400, max_poll_records=16,
        alert_rules=[{"name": "any-concern", "kind": "mean_above", "numeric_facet": "Concerning", "threshold": 1}],
        alert_webhooks=[receiver.url], alert_webhook_secret="stack-test-secret")
    stack = Stack(settings, consumers=1, n_examples=16, first_cluster_at=12, recluster_interval_s=3600)
    try:
        stack.start()
        base = f"http://127.0.0.1:{web}"
        admin = {"Authorization": f"Bearer {stack.admin_key}"}
        deadline = time.time() + 900
        status = {}
        while time.time() < deadline:
            status = httpx.get(f"{base}/v1/status", headers=admin, timeout=10).json()
            if status.get("version"):
                break
            time.sleep(5)
        assert status.get("version"), f"no clustering was published: {status}"
        assert status.get("store_health") == "ok"
        tree = httpx.get(f"{base}/v1/facets/Request/tree", headers=admin, timeout=10)
        assert tree.status_code == 200 and tree.json()
        # The log-in link `up` prints to the terminal (never to the logs) logs the viewer in and serves the site.
        page = httpx.get(stack.urls["dashboard_login"], follow_redirects=True, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        from clio_stream.batch_input import get_example_data

        first = get_example_data(16)[0]["id"]
        conv = httpx.get(f"{base}/v1/conversations/{first}", headers=admin, timeout=10)
        assert conv.status_code == 200 and conv.json()["status"] in ("processed", "pending"), conv.text
        check_every_part_is_scraped(stack, base, admin, status["version"])
        check_the_views(base, admin, receiver)
    finally:
        stack.stop()
        receiver.close()


def check_the_views(base: str, admin: dict[str, str], receiver: object) -> None:
    """The issue's "done when" on the embedded stack: map, breakdown, a metadata filter, search, an alert."""
    root = httpx.get(f"{base}/v1/facets/Request/tree", headers=admin, timeout=10).json()["roots"][0]["id"]
    nodes = httpx.get(f"{base}/v1/facets/Request/map", headers=admin, timeout=10).json()["nodes"]
    assert nodes and {"x", "y", "path"} <= set(nodes[0])
    dims = httpx.get(f"{base}/v1/facets/Request/clusters/{root}/breakdown", headers=admin, timeout=10).json()
    assert "metadata.length" in {d["dimension"] for d in dims["dimensions"]}  # the example data's key
    sliced = httpx.get(f"{base}/v1/facets/Request/tree", params={"metadata.length": "long"}, headers=admin, timeout=10)
    assert sliced.status_code == 200 and sliced.json()["filter"] == "metadata.length=long"
    found = httpx.get(f"{base}/v1/search", params={"q": "help me write a python script"}, headers=admin, timeout=120)
    assert found.status_code == 200 and found.json()["facets"]["Request"], found.text
    deadline = time.time() + 60
    while not receiver.calls and time.time() < deadline:  # type: ignore[attr-defined]
        time.sleep(1)
    assert receiver.calls, "no alert reached the webhook"  # type: ignore[attr-defined]
    listed = httpx.get(f"{base}/v1/alerts", headers=admin, timeout=10).json()["alerts"]
    assert listed and all(a["delivered"] for a in listed)


def _samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text exposition (comments skipped)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f"{s.name}{{{','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))}}}": s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def check_every_part_is_scraped(stack: Stack, base: str, admin: dict[str, str], version: int | str) -> None:
    """A Prometheus scrape of `up` reaches the API, every consumer and the scheduler, with live figures."""
    api = _samples(httpx.get(f"{base}/metrics", headers=admin, timeout=10).text)
    assert any(k.startswith("clio_api_requests_total{") and v > 0 for k, v in api.items()), sorted(api)[:10]
    consumers = [u for k, u in stack.urls.items() if k.startswith("consumer-") and k.endswith("metrics")]
    assert len(consumers) == stack.consumers
    for url in consumers:
        got = _samples(httpx.get(url, timeout=10).text)
        processed = sum(v for k, v in got.items() if k.startswith("clio_consumer_conversations_processed_total{"))
        assert processed > 0, sorted(got)[:20]
        assert got["clio_consumer_health{state=ok,worker=consumer-0}"] == 1.0
        assert httpx.get(url.replace("/metrics", "/readyz"), timeout=10).status_code == 200
    sched = _samples(httpx.get(stack.urls["scheduler metrics"], timeout=10).text)
    assert sched["clio_recluster_runs_total{}"] >= 1 and sched["clio_recluster_published_version{}"] >= int(version)
