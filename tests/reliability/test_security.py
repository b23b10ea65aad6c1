"""Security: secrets stay out of logs, viewers never get raw text, paths and cursors stay in their lane,
and a published site holds no withheld cluster and no raw text unless the settings allow it.

The role matrix of every route is ``tests/integration/test_api.py::test_auth_matrix`` (imported here as
``ROUTES`` and re-checked for what it does not cover: header variants, keys in query strings on API
routes, cookie sessions on writes). The set-up is test_api's module fixture ``env`` (the API over a real
Qdrant and broker, the site fixture published twice with one withheld leaf full of secret strings).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.routes_clusters import encode_cursor
from clio_stream.domain.facets import REQUEST as REQUEST_FACET
from clio_stream.streaming.kafka_io import ensure_topics, make_producer
from clio_stream.streaming.wire_format import encode_message
from clio_stream.storage.published import PublishedVersions
from clio_stream.devstack.processes import ManagedProcess, free_port, http_probe
from clio_stream.site.server import start_site_server_in_thread
from clio_stream.storage.store import QdrantStore
from tests.fixtures_site import HIDDEN_NODE_ID, REQUEST, make_site_fixture
from tests.integration.test_api import KEYS, ROUTES, SECRETS, Env, env  # noqa: F401 - module fixture

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def _text(body: bytes) -> str:
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    return body.decode("utf-8", errors="replace")


def _message_texts(env: Env) -> list[str]:
    """Every raw message text of the fixture that is long enough to be unmistakable."""
    return sorted({m.content for c in env.result.conversations for m in c.messages if len(m.content) > 25})


def site_violations(site_dir: Path, *, min_conversations: int, min_users: int, forbidden: list[str]) -> list[str]:
    """What a published site must never contain: a node under the minimums, or any ``forbidden`` string.

    Reads every file (gzip chunks decompressed); nodes are the entries of the children chunks and the
    manifest's roots. Used by the privacy-attack tests too.
    """
    problems: list[str] = []
    for path in sorted(site_dir.rglob("*")):
        if not path.is_file():
            continue
        text = _text(path.read_bytes())
        rel = str(path.relative_to(site_dir))
        problems += [f"{s!r} in {rel}" for s in forbidden if s and s in text]
        if path.name.endswith(".json.gz") and ("/children/" in rel or rel.endswith("manifest.json.gz")):
            doc = json.loads(text)
            nodes = doc.get("children") or [r for f in doc.get("facets", []) for r in f.get("roots", [])]
            for node in nodes:
                if not isinstance(node, dict) or "size" not in node:
                    continue
                if node["size"] < min_conversations or node.get("distinct_users", min_users) < min_users:
                    problems.append(f"{node.get('id')} under the minimums in {rel}")
    return problems


# --------------------------------------------------------------------------- secrets in logs


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_keys_and_secrets_never_logged(kafka_broker: Any, qdrant_server: Any, vllm_server: Any,  # noqa: F811
                                       tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                       reliability_report: Callable[..., None]) -> None:
    """The API and a consumer run as processes with known secrets at DEBUG; no log line may contain one."""
    import httpx

    tag = uuid.uuid4().hex[:8]
    keys = {role: f"{role}-secret-{tag}-{'k' * 20}" for role in ("viewer", "analyst", "admin")}
    secrets = {**keys, "hash_key": f"hash-secret-{tag}-hhhhhhhh", "llm_key": f"llm-secret-{tag}-llllllll"}
    publish_dir = tmp_path / "published"
    PublishedVersions.at(publish_dir).publish(make_site_fixture().result, "v1", settings=_site_settings(tmp_path))
    port, topic = free_port(), f"sec-{tag}"
    (tmp_path / "empty.toml").write_text("")
    common = {"CLIO_CONFIG": str(tmp_path / "empty.toml"), "CLIO_LOG_LEVEL": "DEBUG", "HF_HUB_OFFLINE": "1",
              "CLIO_USER_ID_HASH_KEY": secrets["hash_key"], "CLIO_LLM_API_KEY": secrets["llm_key"],
              "CLIO_QDRANT_URL": qdrant_server.url, "CLIO_QDRANT_GRPC_PORT": str(qdrant_server.grpc_port),
              "CLIO_QDRANT_PREFIX": f"sec{tag}", "CLIO_KAFKA_BOOTSTRAP": kafka_broker.bootstrap, "CLIO_TOPIC": topic,
              "CLIO_DLQ_TOPIC": f"{topic}.dlq", "CLIO_DELTAS_TOPIC": f"{topic}.deltas",
              "CLIO_CONSUMER_GROUP": f"sec-group-{tag}", "CLIO_TOPIC_PARTITIONS": "1",
              "CLIO_EMBEDDING_MODEL": "all-MiniLM-L6-v2", "CLIO_SHOW_PROGRESS": "false",
              "CLIO_LLM_MAX_RETRIES": "1", "CLIO_PUBLISH_DIR": str(publish_dir),
              "CLIO_API_KEYS": ",".join(f"{r}:{k}" for r, k in keys.items()), "CLIO_METRICS_EVERY_BATCHES": "1"}
    api = ManagedProcess("api", [sys.executable, "-m", "clio_stream.cli", "-v", "api", "--port", str(port)],
                         log_path=tmp_path / "api.log", env=common, cwd=REPO, die_with_parent=True,
                         ready_probe=http_probe(f"http://127.0.0.1:{port}/healthz"), ready_timeout=120)
    consumer = ManagedProcess("consume", [sys.executable, "-m", "clio_stream.cli", "-v", "consume", "--facets",
                                          "Request", "--llm-base-url", vllm_server.base_url],
                              log_path=tmp_path / "consume.log", env=common, cwd=REPO, die_with_parent=True)
    ensure_topics(kafka_broker.bootstrap, {topic: 1})
    producer = make_producer(kafka_broker.bootstrap)
    for i in range(2):
        conv = {"id": f"sec-{tag}-{i}", "user_id": f"sec-user-{i}",
                "conversation": [{"role": "user", "content": f"How do I budget for a trip, case {i}?"}]}
        producer.send(topic, key=conv["id"].encode(), value=encode_message(conv))
    producer.flush(30)
    producer.close()
    store = QdrantStore(qdrant_server.url, prefix=f"sec{tag}", grpc_port=qdrant_server.grpc_port)
    requests = 0
    try:
        api.start()
        consumer.start()
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as http:
            for role, key in keys.items():
                for path in ("/v1/facets", f"/v1/facets/{REQUEST}/tree", "/v1/conversations/conv-0001", "/metrics"):
                    http.get(path, headers={"Authorization": f"Bearer {key}"})
                    requests += 1
                http.get(f"/?key={key}", follow_redirects=False)
                http.get("/v1/facets", headers={"Authorization": f"Bearer {key[:-1]}X"})  # a near miss
                http.get("/v1/facets", params={"key": key})
                requests += 3
            http.post("/v1/recluster", headers={"Authorization": f"Bearer {keys['admin']}"}, json={"reason": "x"})
            http.delete("/v1/users/someone", headers={"Authorization": f"Bearer {keys['admin']}"})
            requests += 2
        _wait(lambda: _processed(store) >= 2, 600, "the consumer to store both conversations")
    finally:
        consumer.stop()
        api.stop()
        store.close()
    # The processes' logs, and this process's own library loggers except the test's HTTP client (httpx logs
    # the URLs the test itself sends, ?key= logins included: that is the caller, not the system under test).
    own = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    logs = {"api.log": (tmp_path / "api.log").read_text(errors="replace"),
            "consume.log": (tmp_path / "consume.log").read_text(errors="replace"), "pytest": own}
    leaks = [f"{name} in {where}" for where, text in logs.items() for name, s in secrets.items() if s in text]
    reliability_report(log_bytes_searched=sum(len(t) for t in logs.values()), requests_with_keys=requests,
                       secrets_checked=len(secrets), leaks=len(leaks))
    assert all(len(t) > 200 for t in logs.values() if t is not logs["pytest"]), "a process wrote (almost) no log"
    assert not leaks, leaks


def _processed(store: QdrantStore) -> int:
    try:
        return store.points.count()
    except Exception:  # noqa: BLE001 - collections not created yet
        return 0


def _site_settings(tmp_path: Path, **overrides: Any) -> Any:
    from clio_stream.settings import ClioSettings

    return ClioSettings(publish_dir=tmp_path / "published", site_chunk_size=4, **overrides)


# --------------------------------------------------------------------------- what each role gets


def test_auth_edge_cases_the_matrix_does_not_cover(env: Env, reliability_report: Callable[..., None]) -> None:
    """ROUTES (test_api's matrix) with malformed credentials: never admitted, never a 5xx."""
    c = env.client
    protected = [r for r in ROUTES if r[3] is not None]
    variants = {
        "lowercase scheme": lambda k: {"Authorization": f"bearer {k}"},  # RFC 7235: the scheme is case-insensitive
        "basic scheme": lambda k: {"Authorization": f"Basic {k}"},
        "key with spaces": lambda k: {"Authorization": f"Bearer  {k} "},  # the same key: admitting it is fine
        "key prefix": lambda k: {"Authorization": f"Bearer {k[:-1]}"},
        "key + suffix": lambda k: {"Authorization": f"Bearer {k}x"},
        "two keys": lambda k: {"Authorization": f"Bearer {KEYS['viewer']},{k}"},
        "empty bearer": lambda k: {"Authorization": "Bearer "},
        "X-API-Key header": lambda k: {"X-API-Key": k},
    }
    admitted: list[str] = []
    checked = 0
    for method, path, body, needed, ok in protected:
        for name, make in variants.items():
            r = c.request(method, path, json=body, headers=make(KEYS["admin"]))
            checked += 1
            assert r.status_code < 500, (name, path, r.status_code)
            if r.status_code == ok and name not in ("lowercase scheme", "key with spaces"):
                admitted.append(f"{name}: {method} {path}")
        if not path.startswith("/data") and path != "/":  # the key belongs in a header; ?key= is a dashboard login only
            r = c.request(method, path.split("?")[0], params={"key": KEYS["admin"]}, json=body)
            checked += 1
            assert r.status_code == 401, (path, r.status_code)
    # A viewer's cookie session never reaches analyst routes; nobody's cookie is accepted for writes.
    viewer = TestClient(c.app)
    assert viewer.get(f"/?key={KEYS['viewer']}", follow_redirects=False).status_code == 303
    assert viewer.get("/v1/conversations/conv-0001").status_code == 403
    assert viewer.get(f"/v1/facets/{REQUEST}/clusters/request-r0/conversations").status_code == 403
    assert viewer.post("/v1/recluster").status_code == 401
    reliability_report(auth_variants_checked=checked, wrongly_admitted=len(admitted))
    assert not admitted, admitted


def test_no_route_returns_raw_conversations_to_a_viewer(env: Env, reliability_report: Callable[..., None]) -> None:
    """Crawl everything a viewer can reach (API answers and every site data file) for raw message text."""
    c, viewer = env.client, _auth("viewer")
    texts = _message_texts(env)
    site_data = Path(env.settings.publish_dir) / "versions" / "v2" / "site" / "data"  # type: ignore[arg-type]
    paths = ["/", "/v1/facets", f"/v1/facets/{REQUEST}/tree", "/v1/status", "/metrics", "/openapi.json",
             *(f"/v1/facets/{REQUEST}/clusters/{n}" for n in env.result.hierarchies[REQUEST].nodes),
             *(f"/v1/conversations/{conv.id}" for conv in env.result.conversations[:10]),
             *(f"/data/{p.relative_to(site_data)}" for p in site_data.rglob("*") if p.is_file())]
    leaks: list[str] = []
    statuses: dict[int, int] = {}
    for path in paths:
        r = c.get(path, headers=viewer)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        body = _text(r.content)
        leaks += [f"{t[:30]!r} in {path}" for t in texts if t in body]
        if path.startswith("/data/conversations/") or "/members/" in path:  # conversation-level: analysts only
            assert r.status_code == 403, path
    # The same data files still carry the messages for an analyst (show_conversations is on here).
    analyst_view = _text(c.get("/data/conversations/00000.json.gz", headers=_auth("analyst")).content)
    reliability_report(viewer_requests=len(paths), viewer_statuses={str(k): v for k, v in sorted(statuses.items())},
                       raw_text_leaks=len(leaks))
    assert not leaks, leaks[:10]
    assert '"messages"' in analyst_view


# --------------------------------------------------------------------------- paths and cursors


TRAVERSALS = ["../result.json", "..%2fresult.json", "%2e%2e/result.json", "%2e%2e%2fresult.json",
              "%252e%252e%252fresult.json", "..%5cresult.json", "....//result.json", "/etc/passwd",
              "%2fetc%2fpasswd", "..%2f..%2f..%2fcurrent", "conversations/..%2f..%2fresult.json",
              "..%00/result.json", "%c0%ae%c0%ae/result.json", "data/../../meta.json"]


def _raw_get(host: str, port: int, target: str) -> tuple[int, bytes]:
    """One HTTP/1.0 request with the target exactly as given (clients would normalise '..')."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: x\r\n\r\n".encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_paths_and_cursors_cannot_reach_other_facets_or_files(env: Env, tmp_path: Path,
                                                              reliability_report: Callable[..., None]) -> None:
    c, admin = env.client, _auth("admin")
    version_dir = Path(env.settings.publish_dir) / "versions" / "v2"  # type: ignore[arg-type]
    outside = [(version_dir / "result.json").read_bytes()[:200], b"root:x:0:0"]
    checked = 0
    # The API's dashboard data route.
    for t in TRAVERSALS:
        r = c.get(f"/data/{t}", headers=admin)
        checked += 1
        assert r.status_code in (404, 400) or not any(o in r.content for o in outside), t
    # Facet and cluster ids with traversal: 404, never another facet's tree.
    for bad in ("..", "Request%2f..", "..%2fRequest", "Request%2f..%2fRequest", "%2e%2e", "Language", "Concerning"):
        r = c.get(f"/v1/facets/{bad}/tree", headers=admin)
        checked += 1
        assert r.status_code == 404, (bad, r.status_code)
    # Cursors: minted for one cluster and replayed on another, for another version, or forged offsets.
    first = c.get(f"/v1/facets/{REQUEST}/clusters/request-r0/conversations", params={"limit": 2}, headers=admin).json()
    cursor = first["next_cursor"]
    assert cursor
    for target, want in ((f"/v1/facets/{REQUEST}/clusters/request-r1/conversations", 400),
                         (f"/v1/facets/{REQUEST_FACET}/clusters/{HIDDEN_NODE_ID}/conversations", 404),
                         ("/v1/facets/Language/clusters/request-r0/conversations", 404)):
        checked += 1
        assert c.get(target, params={"cursor": cursor}, headers=admin).status_code == want, target
    old = encode_cursor("v1", "request-r0", 0, None)
    assert c.get(f"/v1/facets/{REQUEST}/clusters/request-r0/conversations", params={"cursor": old},
                 headers=admin).status_code == 410
    # An offset pointing at a point of the withheld cluster still lists only the visible leaf's members.
    hidden_points, _ = env.store.points.cluster_members(REQUEST, env.leaf_cluster[HIDDEN_NODE_ID], limit=5)
    leaf = "request-r0-m0-l0"
    for p in hidden_points:
        forged = encode_cursor("v2", leaf, 0, p["id"])
        r = c.get(f"/v1/facets/{REQUEST}/clusters/{leaf}/conversations", params={"cursor": forged}, headers=admin)
        checked += 1
        assert r.status_code in (200, 400)
        if r.status_code == 200:
            assert not {m["conversation_id"] for m in r.json()["items"]} & set(env.hidden_members)
    # The static site server, with and without a sub-path root.
    site = version_dir / "site"
    for root in ("", "/clio"):
        server, url = start_site_server_in_thread(site, port=0, html_root=root)
        try:
            port = server.server_address[1]
            for t in TRAVERSALS:
                status, body = _raw_get("127.0.0.1", port, f"{root}/{t}")
                checked += 1
                assert status >= 400 or not any(o in body for o in outside), (root, t, status)
            status, _ = _raw_get("127.0.0.1", port, f"{root}/data/version.json")
            assert status == 200
        finally:
            server.shutdown()
            server.server_close()
    reliability_report(traversal_and_cursor_checks=checked)


# --------------------------------------------------------------------------- the published site


@pytest.mark.parametrize("show", [False, True], ids=["no-raw-text", "raw-text-allowed"])
def test_published_site_has_no_small_cluster_and_raw_text_only_if_allowed(
        tmp_path: Path, show: bool, reliability_report: Callable[..., None]) -> None:
    fixture = make_site_fixture()
    settings = _site_settings(tmp_path, show_conversations=show)
    folder = PublishedVersions.at(settings.publish_dir).publish(fixture.result, "v1", settings=settings)
    hidden = set(fixture.hidden_member_ids)
    visible_texts = sorted({m.content for c in fixture.result.conversations if c.id not in hidden
                            for m in c.messages if len(m.content) > 25})
    forbidden = list(SECRETS) + ([] if show else visible_texts)
    problems = site_violations(folder / "site", min_conversations=3, min_users=2, forbidden=forbidden)
    files = [p for p in (folder / "site").rglob("*") if p.is_file()]
    shown = sum(t in _text(p.read_bytes()) for p in files for t in visible_texts[:5])
    reliability_report(site_files=len(files), violations=len(problems), raw_text_hits=shown)
    assert not problems, problems[:10]
    assert (shown > 0) == show  # raw text appears exactly when allowed
