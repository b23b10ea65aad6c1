"""With several uvicorn workers, a scrape of the API's /metrics counts every worker's requests.

Before multiprocess mode each worker had its own registry, so a scrape showed whichever process answered it.
A real `clio-stream api --workers 2` against the session's Qdrant server; 60 requests on fresh connections
(the kernel spreads them over both workers), then several scrapes must each count all of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clio_stream.devstack.processes import ManagedProcess, free_port, http_probe

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).parents[2]
VIEWER = "viewer-key-metrics-workers"
TOKEN = "scrape-token-metrics-workers"


def _livez_requests(text: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "clio_api_requests_total" and s.labels.get("route") == "/healthz")


def test_a_scrape_counts_the_requests_of_every_worker(qdrant_server, tmp_path, unique_name) -> None:
    port = free_port()
    empty = tmp_path / "none.toml"
    empty.write_text("")
    env = {"CLIO_CONFIG": str(empty), "CLIO_QDRANT_URL": qdrant_server.url,
           "CLIO_QDRANT_GRPC_PORT": str(qdrant_server.grpc_port), "CLIO_QDRANT_PREFIX": unique_name("m").replace("-", "_"),
           "CLIO_API_KEYS": f"viewer:{VIEWER}", "CLIO_METRICS_TOKEN": TOKEN, "CLIO_USER_ID_HASH_KEY": "metrics-test-key",
           "CLIO_PUBLISH_DIR": str(tmp_path / "published"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    base = f"http://127.0.0.1:{port}"
    proc = ManagedProcess("api-2-workers", [sys.executable, "-m", "clio_stream.cli", "api", "--port", str(port),
                                            "--workers", "2"],
                          log_path=tmp_path / "api.log", env=env, cwd=REPO, ready_probe=http_probe(f"{base}/healthz"),
                          ready_timeout=120.0, die_with_parent=True).start()
    try:
        before = _livez_requests(httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text)
        for _ in range(60):
            with httpx.Client() as fresh:  # a new connection each time, so both workers answer some
                assert fresh.get(f"{base}/healthz").status_code == 200
        scrapes = []
        for _ in range(6):
            with httpx.Client() as fresh:
                r = fresh.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 200, r.text
                scrapes.append(_livez_requests(r.text) - before)
        assert min(scrapes) >= 60, f"scrapes saw {scrapes} of 60 requests: one worker's share each"
        # The scrape token reads /metrics only; the viewer key still does, a wrong key does not.
        assert httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {VIEWER}"}).status_code == 200
        assert httpx.get(f"{base}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{base}/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    finally:
        proc.stop()
