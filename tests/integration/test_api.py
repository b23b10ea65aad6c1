"""The HTTP API against a real Qdrant server and a real Kafka-protocol broker.

One module-wide setup: the site fixture result (tests/fixtures_site.py, one
withheld leaf full of secret strings) published twice with ``PublishedVersions.publish``
(v1, then v2 with lineage), matching facet and conversation points in Qdrant
(every leaf mapped to an online cluster id through ``result.store_links``),
worker and scheduler state documents, and the app over all of it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.routes_clusters import encode_cursor
from clio_stream.streaming.kafka_io import ensure_topics, make_consumer
from clio_stream.streaming.wire_format import decode_message
from clio_stream.privacy.users import keyed_user_hash
from clio_stream.storage.published import PublishedVersions
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import (
    RECLUSTER_REQUEST,
    SCHEDULER_STATE,
    WORKER_METRICS,
    SchedulerState,
    WorkerMetricsDoc,
)
from clio_stream.storage.records import FACETS_COPY, ConversationRecord, FacetPoint
from clio_stream.storage.store import QdrantStore
from clio_stream.domain.clusters import ClioResult, StoreLink
from tests.fixtures_site import (
    CONCERNING,
    HIDDEN_NAME,
    HIDDEN_NODE_ID,
    HIDDEN_SUMMARY,
    REQUEST,
    SECRET_TOKEN,
    make_site_fixture,
)

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

DIM = 8
CLUSTER_VERSION = 1
HASH_KEY = "api-test-hash-key"
KEYS = {"viewer": "viewer-" + "v" * 24, "analyst": "analyst-" + "a" * 24, "admin": "admin-" + "d" * 24}
ROLES = ["viewer", "analyst", "admin"]
SECRETS = [HIDDEN_NODE_ID, HIDDEN_NAME, HIDDEN_SUMMARY, SECRET_TOKEN, "Zephyr", "Kestrel"]
LIVE_HIDDEN = "live-hidden-0001"  # assigned online to the withheld cluster after publishing
PENDING = "pending-0001"
DOOMED_USER = "user-to-delete"


def _auth(role: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"} if role else {}


@dataclass
class Env:
    settings: ClioSettings
    store: QdrantStore
    client: TestClient
    result: ClioResult
    hidden_members: list[str]
    leaf_cluster: dict[str, int]


def _points(result: ClioResult, leaf_cluster: dict[str, int], rng: np.random.Generator) -> tuple[list[FacetPoint], list[ConversationRecord]]:
    leaf_of = {cid: node.id for node in result.hierarchies[REQUEST].nodes.values() if node.level == 0
               for cid in node.conversation_ids}
    values = {cf.conversation_id: cf.values for cf in result.facet_values}
    points, records = [], []
    for conv in result.conversations:
        user_hash = keyed_user_hash(conv.user_id or "", HASH_KEY)
        for facet, fv in values[conv.id].items():
            cluster = leaf_cluster[leaf_of[conv.id]] if facet == REQUEST else None
            points.append(FacetPoint(
                conversation_id=conv.id, facet=facet, vector=rng.normal(size=DIM), value=fv.value,
                numeric=fv.numeric, user_hash=user_hash, timestamp=conv.timestamp, cluster_id=cluster,
                cluster_version=CLUSTER_VERSION if cluster is not None else None, similarity=0.9))
        records.append(ConversationRecord(conversation_id=conv.id, status="processed", user_hash=user_hash,
                                          timestamp=conv.timestamp, raw=[m.model_dump() for m in conv.messages]))
    return points, records


def _extra_points(leaf_cluster: dict[str, int], rng: np.random.Generator) -> tuple[list[FacetPoint], list[ConversationRecord]]:
    """A conversation assigned online to the withheld cluster, a pending one, and one of the doomed user."""
    doomed = keyed_user_hash(DOOMED_USER, HASH_KEY)
    points = [
        FacetPoint(conversation_id=LIVE_HIDDEN, facet=REQUEST, vector=rng.normal(size=DIM),
                   value=f"The user requested {SECRET_TOKEN} codes again.", user_hash="u-live",
                   cluster_id=leaf_cluster[HIDDEN_NODE_ID], cluster_version=CLUSTER_VERSION),
        FacetPoint(conversation_id="doomed-0001", facet=REQUEST, vector=rng.normal(size=DIM),
                   value="The user asked for help with baking bread.", user_hash=doomed,
                   cluster_id=leaf_cluster["request-r2-m0-l1"], cluster_version=CLUSTER_VERSION),
    ]
    records = [
        ConversationRecord(conversation_id=LIVE_HIDDEN, status="processed", user_hash="u-live",
                           raw=[{"role": "user", "content": f"{SECRET_TOKEN} please"}]),
        ConversationRecord(conversation_id=PENDING, status="pending", user_hash="u-pending"),
        ConversationRecord(conversation_id="doomed-0001", status="processed", user_hash=doomed),
    ]
    return points, records


@pytest.fixture(scope="module")
def env(qdrant_server: Any, kafka_broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:10]
    settings_ = ClioSettings(
        qdrant_url=qdrant_server.url, qdrant_grpc_port=qdrant_server.grpc_port, qdrant_prefix=f"api{suffix}",
        qdrant_timeout_s=10, kafka_bootstrap=kafka_broker.bootstrap, topic=f"api-conversations-{suffix}",
        publish_dir=tmp_path_factory.mktemp("published"), site_chunk_size=4, user_id_hash_key=HASH_KEY,
        api_keys=",".join(f"{role}:{key}" for role, key in KEYS.items()), api_max_page_size=50,
        api_status_cache_s=0, api_max_body_bytes=64 * 1024, api_max_batch=20, api_produce_timeout_s=20,
        show_conversations=True, store_raw_conversations=True,
        api_auth_failures_burst=100_000,  # the auth matrix presents wrong keys on purpose, all from one address
    )
    ensure_topics(kafka_broker.bootstrap, {settings_.topic: 1})
    fixture = make_site_fixture()
    result = fixture.result
    leaves = sorted(n.id for n in result.hierarchies[REQUEST].nodes.values() if n.level == 0)
    leaf_cluster = {nid: i for i, nid in enumerate(leaves)}
    result.store_links[REQUEST] = StoreLink(version=CLUSTER_VERSION, clusters=leaf_cluster)

    store = QdrantStore.from_settings(settings_)
    store.ensure_collections(DIM)
    rng = np.random.default_rng(0)
    for points, records in (_points(result, leaf_cluster, rng), _extra_points(leaf_cluster, rng)):
        store.points.upsert_facets(points)
        store.points.mark_conversations(records)
    store.versions.set_current_version(REQUEST, CLUSTER_VERSION)
    now = time.time()
    store.states.write(WORKER_METRICS.of("w1"), WorkerMetricsDoc(
        worker_id="w1", processed=600, dead_lettered=3, consumer_lag=7, health="ok", started_at=now - 60,
        updated_at=now))
    store.states.write(WORKER_METRICS.of("stale"), WorkerMetricsDoc(
        worker_id="stale", processed=10**6, dead_lettered=99, health="failing", started_at=now - 9000,
        updated_at=now - 8000))
    store.states.write(SCHEDULER_STATE, SchedulerState(last_run_at=now - 100, next_run_at=now + 3500))

    PublishedVersions.at(settings_.publish_dir).publish(result, "v1", lineage={"ancient-1": "old-2"}, settings=settings_)
    PublishedVersions.at(settings_.publish_dir).publish(result, "v2",
                    lineage={"old-2": "request-r0-m0", "old-hidden": HIDDEN_NODE_ID}, settings=settings_)
    app = create_app(settings_, store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Env(settings_, store, client, result, fixture.hidden_member_ids, leaf_cluster)
    store.close()


# ----------------------------------------------------------------------------- publishing


def test_publish_layout_pointer_and_pruning(env: Env, tmp_path: Path) -> None:
    root = Path(env.settings.publish_dir)  # type: ignore[arg-type]
    assert PublishedVersions.at(root).read_pointer() == "v2"
    for version in ("v1", "v2"):
        folder = root / "versions" / version
        assert ClioResult.model_validate_json((folder / "result.json").read_bytes()).hierarchies[REQUEST].nodes
        assert (folder / "site" / "index.html").exists() and (folder / "site" / "data" / "version.json").exists()
    assert json.loads((root / "versions" / "v2" / "lineage.json").read_text())["old-2"] == "request-r0-m0"
    with pytest.raises(FileExistsError):
        PublishedVersions.at(root).publish(env.result, "v2", settings=env.settings)
    with pytest.raises(ValueError):
        PublishedVersions.at(root).publish(env.result, "../evil", settings=env.settings)
    # Pruning, on a directory of its own: keep the newest `keep`.
    other = tmp_path / "pub"
    for i in range(4):
        PublishedVersions.at(other).publish(env.result, f"p{i}", keep=2, settings=env.settings)
    kept = PublishedVersions.at(other)
    assert kept.list_versions() == ["p2", "p3"] and kept.read_pointer() == "p3"
    assert not list((other / "versions").glob(".tmp-*"))


def test_view_follows_the_recluster_job_conventions(tmp_path: Path) -> None:
    """A result written before ``store_links`` (old JSON) still joins: leaf ids '<facet>-l0-<n>' map to online
    cluster n, and the old ``stats['version']`` is every facet's clustering version."""
    from api.views import build_view
    from clio_stream.storage.published import PublishedVersion
    from clio_stream.domain.clusters import ClusterNode, FacetHierarchy

    nodes = {
        "request-l1-0": ClusterNode(id="request-l1-0", facet=REQUEST, name="Parent", summary="", level=1,
                                    children=["request-l0-4", "request-l0-7"], conversation_ids=["a", "b", "c"]),
        "request-l0-4": ClusterNode(id="request-l0-4", facet=REQUEST, name="Four", summary="", level=0,
                                    parent_id="request-l1-0", conversation_ids=["a", "b"]),
        "request-l0-7": ClusterNode(id="request-l0-7", facet=REQUEST, name="Seven", summary="", level=0,
                                    parent_id="request-l1-0", conversation_ids=["c"], hidden=True),
    }
    old = ClioResult(facets=[{"name": REQUEST, "question": "?"}], conversations=[], facet_values=[],
                     hierarchies={REQUEST: FacetHierarchy(facet=REQUEST, nodes=nodes, root_ids=["request-l1-0"])})
    legacy = old.model_dump(mode="json", exclude={"store_links"})
    legacy["stats"] = {"version": 3}
    result = ClioResult.model_validate_json(json.dumps(legacy))
    view = build_view(PublishedVersion("3", tmp_path, result, {}, None))
    fv = view.facet_views[REQUEST]
    assert fv.cluster_version == 3 and fv.store_cluster == {"request-l0-4": 4, "request-l0-7": 7}
    assert fv.leaf_for(4, 3) == "request-l0-4" and fv.leaf_for(4, 2) is None and fv.leaf_for(None, 3) is None
    assert fv.node("request-l0-7") is None and fv.leaf_for(7, 3) == "request-l0-7"  # known, but withheld
    assert view.withheld == {"c": {REQUEST}}
    assert json.loads(fv.tree_json)["roots"][0]["other_count"] == 1


# ----------------------------------------------------------------------------- auth matrix

VALID = {"id": "matrix-ok", "user_id": "u-matrix", "conversation": [{"role": "user", "content": "hi"}]}

# (method, path, json body, minimum role or None for public, success status)
ROUTES: list[tuple[str, str, Any, str | None, int]] = [
    ("GET", "/healthz", None, None, 200),
    ("GET", "/readyz", None, None, 200),
    ("GET", "/metrics", None, "viewer", 200),
    ("GET", "/openapi.json", None, "viewer", 200),
    ("GET", "/docs", None, "viewer", 200),
    ("GET", "/", None, "viewer", 200),
    ("GET", "/data/version.json", None, "viewer", 200),
    ("GET", "/v1/status", None, "viewer", 200),
    ("GET", "/v1/facets", None, "viewer", 200),
    ("GET", f"/v1/facets/{REQUEST}/tree", None, "viewer", 200),
    ("GET", f"/v1/facets/{REQUEST}/clusters/request-r0", None, "viewer", 200),
    ("GET", f"/v1/facets/{REQUEST}/trends", None, "viewer", 200),
    ("GET", f"/v1/facets/{REQUEST}/clusters/request-r0/conversations?limit=3", None, "analyst", 200),
    ("GET", "/v1/conversations/conv-0001", None, "analyst", 200),
    ("POST", "/v1/conversations", VALID, "admin", 202),
    ("POST", "/v1/conversations:batch", {"conversations": [VALID]}, "admin", 202),
    ("POST", "/v1/recluster", {"reason": "matrix"}, "admin", 202),
    ("DELETE", "/v1/users/nobody-at-all", None, "admin", 202),
    ("GET", "/v1/deletions/no-such-request", None, "admin", 404),
]


@pytest.mark.parametrize("method, path, body, needed, ok", ROUTES, ids=[f"{r[0]} {r[1]}" for r in ROUTES])
def test_auth_matrix(env: Env, method: str, path: str, body: Any, needed: str | None, ok: int) -> None:
    for role in [None, *ROLES]:
        r = env.client.request(method, path, json=body, headers=_auth(role))
        if needed is None or (role is not None and ROLES.index(role) >= ROLES.index(needed)):
            expected = ok
        else:
            expected = 401 if role is None else 403
        assert r.status_code == expected, (role, r.status_code, r.text[:200])
        if expected == 401:
            assert r.headers.get("www-authenticate") == "Bearer" or path in ("/", "/data/version.json")
    if needed is not None:  # a wrong key is 401, never anonymous
        r = env.client.request(method, path, json=body, headers={"Authorization": "Bearer wrong-key-wrong-key"})
        assert r.status_code == 401


def test_cookie_session_is_for_reading_only(env: Env) -> None:
    client = TestClient(env.client.app, raise_server_exceptions=False)
    r = client.get(f"/?key={KEYS['admin']}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and KEYS["admin"] not in cookie
    assert client.get("/v1/conversations/conv-0001").status_code == 200  # GET with the cookie: the key's role
    assert client.post("/v1/recluster").status_code == 401  # never for writes
    assert client.delete("/v1/users/nobody").status_code == 401
    assert TestClient(env.client.app).get("/?key=not-a-key", follow_redirects=False).status_code == 401


def test_no_keys_refuses_to_start_and_anonymous_is_viewer(env: Env) -> None:
    bare = env.settings.with_overrides(api_keys=None)
    with pytest.raises(ValueError, match="no API keys configured"):
        create_app(bare, store=env.store)
    anonymous = TestClient(create_app(bare.with_overrides(api_allow_anonymous=True), store=env.store))
    assert anonymous.get("/v1/facets").status_code == 200
    assert anonymous.get("/v1/conversations/conv-0001").status_code == 403
    assert anonymous.post("/v1/recluster").status_code == 403


def test_cors_is_closed_unless_configured(env: Env) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    r = env.client.options("/v1/facets", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = env.client.get("/v1/facets", headers={**_auth("viewer"), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    opened = TestClient(create_app(env.settings.with_overrides(api_cors_origins=["https://ok.example"]), store=env.store))
    r = opened.get("/v1/facets", headers={**_auth("viewer"), "Origin": "https://ok.example"})
    assert r.headers["access-control-allow-origin"] == "https://ok.example"


# ----------------------------------------------------------------------------- clusters and privacy


def test_tree_and_cluster_details(env: Env) -> None:
    c = env.client
    facets = c.get("/v1/facets", headers=_auth("viewer")).json()
    assert facets["version"] == "v2"
    by_name = {f["name"]: f for f in facets["facets"]}
    assert by_name[REQUEST]["has_hierarchy"] and by_name[REQUEST]["total"] == 60
    assert not by_name[CONCERNING]["has_hierarchy"] and by_name[CONCERNING]["numeric"] == [1, 5]
    tree = c.get(f"/v1/facets/{REQUEST}/tree", headers=_auth("viewer")).json()
    assert [r["id"] for r in tree["roots"]] == ["request-r0", "request-r1", "request-r2"]
    travel = next(m for r in tree["roots"] for m in r["children"] if m["name"] == "Travel planning")
    assert travel["other_count"] == 3 and len(travel["children"]) == 2 and travel["n_children"] == 2
    assert travel["size"] == 13  # its own size includes the withheld leaf (shown only as "other")
    assert tree["roots"][0]["numeric"][CONCERNING]["count"] == 22
    detail = c.get(f"/v1/facets/{REQUEST}/clusters/request-r0-m0-l1", headers=_auth("viewer")).json()
    assert detail["name"] == "Debugging pandas dataframes" and detail["size"] == 6
    assert [p["id"] for p in detail["parent_path"]] == ["request-r0", "request-r0-m0"]
    assert detail["children"] == [] and detail["successor_of"] is None
    assert c.get(f"/v1/facets/{REQUEST}/clusters/nope", headers=_auth("viewer")).status_code == 404
    assert c.get("/v1/facets/Nope/tree", headers=_auth("viewer")).status_code == 404
    assert c.get(f"/v1/facets/{CONCERNING}/tree", headers=_auth("viewer")).status_code == 404


def test_trends_rank_new_growth_and_skip_withheld_clusters(env: Env) -> None:
    """The fixture's leaf request-r1-m0-l0 is all new; the withheld leaf is too but must never be ranked."""
    c = env.client
    t = c.get(f"/v1/facets/{REQUEST}/trends", headers=_auth("viewer")).json()
    assert t["version"] == "v2" and t["window_s"] == 8 * 3600
    emerging = [n["id"] for n in t["emerging"]]
    assert emerging[0] == "request-r1-m0-l0" and HIDDEN_NODE_ID not in emerging
    assert all(n["trend"]["emerging"] for n in t["emerging"])
    growth = [n["trend"]["growth"] for n in t["growing"]]
    assert growth == sorted(growth, reverse=True)
    tree = c.get(f"/v1/facets/{REQUEST}/tree", headers=_auth("viewer")).json()
    root = tree["roots"][0]
    assert len(root["trend"]["counts"]) == 8 and sum(root["trend"]["counts"]) <= root["size"]
    assert c.get(f"/v1/facets/{REQUEST}/trends", params={"limit": 0}, headers=_auth("viewer")).status_code == 422


def test_old_id_answers_with_its_successor(env: Env) -> None:
    c = env.client
    r = c.get(f"/v1/facets/{REQUEST}/clusters/ancient-1", headers=_auth("viewer"))  # ancient-1 -> old-2 -> request-r0-m0
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "request-r0-m0" and body["successor_of"] == "ancient-1"
    assert r.headers["content-location"] == f"/v1/facets/{REQUEST}/clusters/request-r0-m0"
    members = c.get(f"/v1/facets/{REQUEST}/clusters/old-2/conversations", headers=_auth("analyst")).json()
    assert members["cluster_id"] == "request-r0-m0" and len(members["items"]) == 12
    # An old id whose successor is withheld answers exactly like an unknown one.
    hidden = c.get(f"/v1/facets/{REQUEST}/clusters/old-hidden", headers=_auth("viewer"))
    unknown = c.get(f"/v1/facets/{REQUEST}/clusters/never-existed", headers=_auth("viewer"))
    assert hidden.status_code == unknown.status_code == 404 and hidden.json() == unknown.json()


def test_members_pagination_with_cursor(env: Env) -> None:
    c, headers = env.client, _auth("analyst")
    url = f"/v1/facets/{REQUEST}/clusters/request-r0/conversations"
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5, **({"cursor": cursor} if cursor else {})}
        page = c.get(url, params=params, headers=headers).json()
        assert len(page["items"]) <= 5
        seen += [m["conversation_id"] for m in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 20
    expected = env.result.hierarchies[REQUEST].nodes["request-r0"].conversation_ids
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen)) == 22
    assert pages >= 5
    item = c.get(url, params={"limit": 1}, headers=headers).json()["items"][0]
    assert item["value"].startswith("The user asked for help with") and item["similarity"] == pytest.approx(0.9)
    # The page size is clamped to the server's maximum (50), bad and foreign cursors are 400, old ones 410.
    assert len(c.get(f"/v1/facets/{REQUEST}/clusters/request-r1/conversations", params={"limit": 10_000},
                     headers=headers).json()["items"]) <= 50
    assert c.get(url, params={"limit": 0}, headers=headers).status_code == 422
    assert c.get(url, params={"cursor": "garbage!"}, headers=headers).status_code == 400
    assert c.get(url, params={"cursor": encode_cursor("v2", "request-r0", 0, "not-a-uuid")},
                 headers=headers).status_code == 400
    assert c.get(url, params={"cursor": encode_cursor("v2", "request-r1", 0, None)}, headers=headers).status_code == 400
    assert c.get(url, params={"cursor": encode_cursor("v1", "request-r0", 0, None)}, headers=headers).status_code == 410


def test_hidden_cluster_never_appears_in_any_answer(env: Env) -> None:
    """Crawl every route as admin (the most privileged reader) and grep all bodies for the withheld cluster."""
    c, admin = env.client, _auth("admin")
    bodies: dict[str, str] = {}

    def get(path: str, **kw: Any) -> Any:
        r = c.get(path, headers=admin, **kw)
        bodies[path + json.dumps(kw.get("params", {}))] = r.text
        return r

    get("/v1/facets")
    tree = get(f"/v1/facets/{REQUEST}/tree").json()
    stack = list(tree["roots"])
    cluster_ids = []
    while stack:
        node = stack.pop()
        cluster_ids.append(node["id"])
        stack.extend(node["children"])
    assert HIDDEN_NODE_ID not in cluster_ids and len(cluster_ids) == 21
    trends = get(f"/v1/facets/{REQUEST}/trends", params={"limit": 100}).json()
    assert trends["emerging"] and HIDDEN_NODE_ID not in {n["id"] for n in trends["growing"]}
    for cid in [*cluster_ids, HIDDEN_NODE_ID, "old-hidden"]:
        get(f"/v1/facets/{REQUEST}/clusters/{cid}")
        cursor = None
        while True:
            page = get(f"/v1/facets/{REQUEST}/clusters/{cid}/conversations",
                       params={"limit": 50, **({"cursor": cursor} if cursor else {})})
            if page.status_code != 200 or not (cursor := page.json()["next_cursor"]):
                break
    listed = {m["conversation_id"] for k, b in bodies.items() if "/conversations" in k and b.startswith('{"facet"')
              for m in json.loads(b)["items"]}
    assert listed and not listed & {*env.hidden_members, LIVE_HIDDEN}
    for cid in [*(conv.id for conv in env.result.conversations[:5]), *env.hidden_members]:
        get(f"/v1/conversations/{cid}")
    live = get(f"/v1/conversations/{LIVE_HIDDEN}").json()
    assert live["facets"][REQUEST] == {"withheld": True, "value": None, "numeric": None, "cluster_id": None,
                                       "cluster_name": None, "path": [], "cluster_version": None}
    assert live["messages"] is None
    hidden_conv = get(f"/v1/conversations/{env.hidden_members[0]}").json()
    assert hidden_conv["facets"][REQUEST]["withheld"] and hidden_conv["messages"] is None
    for path in ("/v1/status", "/metrics", "/openapi.json", "/", "/data/version.json"):
        get(path)
    # Every data file of the served site, too.
    manifest_files = [p.relative_to(Path(env.settings.publish_dir) / "versions" / "v2" / "site")  # type: ignore[arg-type]
                      for p in (Path(env.settings.publish_dir) / "versions" / "v2" / "site" / "data").rglob("*")  # type: ignore[arg-type]
                      if p.is_file()]
    for rel in manifest_files:
        r = c.get("/" + str(rel), headers=admin)
        assert r.status_code == 200
        raw = r.content
        if raw[:2] == b"\x1f\x8b":
            import gzip

            raw = gzip.decompress(raw)
        bodies[str(rel)] = raw.decode("utf-8")
    assert len(bodies) > 60
    for where, text in bodies.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in {where}"


# ----------------------------------------------------------------------------- conversations


def test_conversation_answers(env: Env) -> None:
    c, analyst = env.client, _auth("analyst")
    body = c.get("/v1/conversations/conv-0002", headers=analyst).json()
    assert body["status"] == "processed" and body["version"] == "v2"
    request = body["facets"][REQUEST]
    assert request["cluster_id"] == "request-r0-m0-l0" and request["cluster_name"] == "Fixing Python import errors"
    assert [p["name"] for p in request["path"]] == ["Software development", "Debugging Python code",
                                                  "Fixing Python import errors"]
    assert request["cluster_version"] == CLUSTER_VERSION and "fixing python import errors" in request["value"]
    assert body["facets"][CONCERNING]["numeric"] in range(1, 6) and body["facets"][CONCERNING]["cluster_id"] is None
    assert body["messages"][0]["role"] == "user" and "import errors" in body["messages"][0]["content"]
    assert "user_hash" not in json.dumps(body) and "user-" not in json.dumps(body)
    assert c.get(f"/v1/conversations/{PENDING}", headers=analyst).json()["status"] == "pending"
    assert c.get("/v1/conversations/never-seen", headers=analyst).status_code == 404
    slashed = c.get("/v1/conversations/a/b/c", headers=analyst)  # ids may contain slashes
    assert slashed.status_code == 404 and slashed.json()["detail"] == "conversation not found"
    no_raw = TestClient(create_app(env.settings.with_overrides(show_conversations=False), store=env.store))
    assert no_raw.get("/v1/conversations/conv-0002", headers=analyst).json()["messages"] is None


def _consume(env: Env, wanted: set[str], timeout_s: float = 30.0) -> dict[str, bytes]:
    consumer = make_consumer(env.settings.kafka_bootstrap, None)
    try:
        from kafka import TopicPartition

        parts = [TopicPartition(env.settings.topic, p) for p in consumer.partitions_for_topic(env.settings.topic) or {0}]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found: dict[str, bytes] = {}
        deadline = time.monotonic() + timeout_s
        while not wanted <= set(found) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    found[rec.key.decode()] = rec.value
        return found
    finally:
        consumer.close()


def test_post_lands_on_the_topic_and_reads_as_pending(env: Env) -> None:
    c, admin = env.client, _auth("admin")
    cid = f"posted-{uuid.uuid4().hex[:8]}"
    conv = {"id": cid, "user_id": "u-post", "timestamp": "2024-05-01T12:00:00Z", "metadata": {"source": "api"},
            "conversation": [{"role": "user", "content": "How do I bake bread?"},
                             {"role": "assistant", "content": "Start with flour."}]}
    r = c.post("/v1/conversations", json=conv, headers=admin)
    assert r.status_code == 202 and r.json() == {"id": cid, "status": "accepted"}
    assert r.headers["location"] == f"/v1/conversations/{cid}"
    batch_ids = [f"{cid}-b{i}" for i in range(3)]
    r = c.post("/v1/conversations:batch", headers=admin,
               json={"conversations": [{**conv, "id": i} for i in batch_ids]})
    assert r.status_code == 202 and r.json()["ids"] == batch_ids
    found = _consume(env, {cid, *batch_ids})
    assert {cid, *batch_ids} <= set(found)
    decoded = decode_message(cid.encode(), found[cid], require_key_match=True)
    assert decoded.user_id == "u-post" and decoded.conversation[1].content == "Start with flour."
    assert decoded.timestamp == pytest.approx(1714564800.0) and decoded.metadata == {"source": "api"}
    # Accepted but not yet stored by a worker: pending, not 404.
    assert c.get(f"/v1/conversations/{cid}", headers=_auth("analyst")).json() == {
        "id": cid, "status": "pending", "timestamp": None, "version": None, "withheld": False, "facets": {},
        "messages": None}


BAD_BODIES: list[tuple[Any, str, str]] = [
    (b"{not json", "not_json", "body is not JSON"),
    ([1, 2], "not_a_map", "must be a JSON object"),
    ({"conversation": [{"role": "user", "content": "x"}]}, "bad_id", "missing id"),
    ({"id": "", "conversation": [{"role": "user", "content": "x"}]}, "bad_id", "empty id"),
    ({"id": "x" * 300, "conversation": [{"role": "user", "content": "x"}]}, "bad_id", "over the 256 limit"),
    ({"id": "a", "conversation": []}, "bad_conversation", "empty conversation"),
    ({"id": "a", "conversation": "hello"}, "bad_conversation", "must be an array"),
    ({"id": "a", "conversation": [{"role": "robot", "content": "x"}]}, "unknown_role", "unknown role 'robot'"),
    ({"id": "a", "conversation": [{"role": "user"}]}, "bad_turn", "turn 0 has no content"),
    ({"id": "a", "conversation": [{"role": "user", "content": 5}]}, "bad_content", "content must be a string"),
    ({"id": "a", "user_id": 7, "conversation": [{"role": "user", "content": "x"}]}, "bad_user_id", "user_id must be"),
    ({"id": "a", "timestamp": 1714564800000, "conversation": [{"role": "user", "content": "x"}]},
     "bad_timestamp", "milliseconds?"),
    ({"id": "a", "timestamp": "yesterday", "conversation": [{"role": "user", "content": "x"}]},
     "bad_timestamp", "unparseable timestamp"),
    ({"id": "a", "metadata": [1], "conversation": [{"role": "user", "content": "x"}]}, "bad_metadata", "must be a map"),
    ({"id": "a", "metadata": {"n": 10**30}, "conversation": [{"role": "user", "content": "x"}]},
     "not_encodable", "out of range"),
]


@pytest.mark.parametrize("body, code, reason", BAD_BODIES, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD_BODIES)])
def test_post_validation_reasons(env: Env, body: Any, code: str, reason: str) -> None:
    kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = env.client.post("/v1/conversations", headers={**_auth("admin"), "Content-Type": "application/json"}, **kwargs)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code and reason in r.json()["detail"]


def test_batch_is_all_or_nothing_and_limits_apply(env: Env) -> None:
    c, admin = env.client, _auth("admin")
    good = {"id": "batch-good", "conversation": [{"role": "user", "content": "x"}]}
    r = c.post("/v1/conversations:batch", headers=admin,
               json={"conversations": [good, {"id": "batch-bad", "conversation": []}, 5]})
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"index": 1, "id": "batch-bad", "code": "bad_conversation", "reason": "empty conversation"},
        {"index": 2, "id": None, "code": "not_a_map", "reason": "a conversation must be a JSON object, not int"}]
    assert c.post("/v1/conversations:batch", headers=admin, json={"conversations": [good] * 21}).status_code == 422
    assert c.post("/v1/conversations:batch", headers=admin, json={"items": []}).status_code == 422
    big = {"id": "big", "conversation": [{"role": "user", "content": "x" * 70_000}]}
    r = c.post("/v1/conversations", headers=admin, json=big)
    assert r.status_code == 413 and "request_id" in r.json()


# ----------------------------------------------------------------------------- admin, status, metrics, errors


def test_recluster_request_and_status(env: Env) -> None:
    c = env.client
    r = c.post("/v1/recluster", headers=_auth("admin"), json={"reason": "new data"})
    assert r.status_code == 202 and r.json()["requested_by"].startswith("admin:")
    doc = env.store.states.read(RECLUSTER_REQUEST)
    assert doc is not None and doc.reason == "new data" and KEYS["admin"] not in doc.model_dump_json()
    status = c.get("/v1/status", headers=_auth("viewer")).json()
    assert status["version"] == "v2" and status["store_health"] == "ok"
    assert status["cluster_versions"] == {REQUEST: CLUSTER_VERSION}
    assert status["consumer_lag"] == 7 and status["dlq_count"] == 3  # the stale worker is ignored
    assert status["ingest_rate_per_s"] == pytest.approx(10.0, rel=0.05)
    assert [w["id"] for w in status["workers"]] == ["w1"] and status["llm_health"] == "ok"
    assert status["next_recluster_at"] > time.time() and status["recluster_requested_at"] == pytest.approx(
        r.json()["requested_at"])


def test_status_degrades_to_nulls_when_the_store_is_down(env: Env) -> None:
    dead = QdrantStore("http://127.0.0.1:9", prefix="none", prefer_grpc=False, timeout_s=1)
    client = TestClient(create_app(env.settings, store=dead), raise_server_exceptions=False)
    status = client.get("/v1/status", headers=_auth("viewer"))
    assert status.status_code == 200
    body = status.json()
    assert body["store_health"] == "unavailable" and body["consumer_lag"] is None and body["version"] == "v2"
    assert client.get("/readyz").status_code == 503 and client.get("/healthz").status_code == 200
    r = client.get("/v1/conversations/conv-0001", headers=_auth("analyst"))
    assert r.status_code == 503 and r.headers["retry-after"] == "5" and "Traceback" not in r.text
    dead.close()


def test_a_status_point_with_its_facet_copy_is_answered_in_one_call_as_from_the_facet_points(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker writes each processed conversation's status with a copy of its facet values: the lookup then
    reads that one point, and the answer (clusters and paths from the served version, withholding) is the
    same as from the facet points themselves."""
    members = [cid for n in env.result.hierarchies[REQUEST].nodes.values() if n.level == 0
               for cid in n.conversation_ids if cid not in env.hidden_members]
    ids = [members[0], LIVE_HIDDEN, env.hidden_members[0]]  # a member, assigned online, withheld
    before = {cid: env.client.get(f"/v1/conversations/{cid}", headers=_auth("analyst")).json() for cid in ids}
    for cid in ids:
        doc = env.store.points.get_conversation(cid)
        assert doc is not None
        copy = {name: {k: v for k, v in point.items() if k not in ("conversation_id", "user_hash", "timestamp",
                                                                     "content_hash")}
                for name, point in doc["facets"].items()}
        env.store.points.mark_conversations([ConversationRecord(
            conversation_id=cid, status="processed", user_hash=doc.get("user_hash"), timestamp=doc.get("timestamp"),
            raw=doc.get("raw"), extra={FACETS_COPY: copy})])

    def no_second_call(cid: str) -> None:
        raise AssertionError("the facet points were read although the status point's copy answers")

    monkeypatch.setattr(env.store.points, "_facets_of", no_second_call)  # the second call: the facet points
    for cid in ids:
        after = env.client.get(f"/v1/conversations/{cid}", headers=_auth("analyst"))
        assert after.status_code == 200 and after.json() == before[cid], cid


def test_unexpected_errors_are_bare_500s_with_a_request_id(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_: str) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(env.store.points, "lookup_conversation", boom)
    r = env.client.get("/v1/conversations/conv-0001", headers={**_auth("analyst"), "X-Request-ID": "req-123"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error", "request_id": "req-123"}
    assert r.headers["x-request-id"] == "req-123"


def test_delete_user(env: Env) -> None:
    """202 with a request that deletes the points at once; a repeat answers the same request."""
    c = env.client
    assert c.get("/v1/conversations/doomed-0001", headers=_auth("analyst")).status_code == 200
    r = c.delete(f"/v1/users/{DOOMED_USER}", headers=_auth("admin"))
    assert r.status_code == 202
    request = r.json()
    assert request["status"] == "pending" and (request["facet_points"], request["conversations"]) == (1, 1)
    assert "token" not in request and "user_hash" not in request
    assert c.get("/v1/conversations/doomed-0001", headers=_auth("analyst")).status_code == 404
    again = c.delete(f"/v1/users/{DOOMED_USER}", headers=_auth("admin"))
    assert again.status_code == 202 and again.json()["request_id"] == request["request_id"]
    status = c.get(f"/v1/deletions/{request['request_id']}", headers=_auth("admin"))
    assert status.status_code == 200 and status.json()["status"] == "pending"


def test_metrics_parse(env: Env) -> None:
    env.client.get("/v1/facets", headers=_auth("viewer"))
    r = env.client.get("/metrics", headers=_auth("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert {"clio_api_requests", "clio_api_request_duration_seconds", "clio_api_conversations_accepted",
            "clio_api_auth_failures"} <= set(families)
    routes = {s.labels["route"] for s in families["clio_api_requests"].samples}
    assert "/v1/facets" in routes and "/v1/facets/{facet}/tree" in routes
    assert not any("conv-0001" in route for route in routes)  # templates, not raw paths
    for key in KEYS.values():
        assert key not in r.text


# ----------------------------------------------------------------------------- fuzzing: zero 5xx

try:
    import schemathesis
except ImportError:  # pragma: no cover - it is in the test extra
    schemathesis = None


@pytest.mark.skipif(schemathesis is None, reason="schemathesis is not installed")
def test_schemathesis_no_server_errors(env: Env) -> None:
    """Requests generated from the whole OpenAPI spec, sent as admin: never a 5xx.

    Driven per operation through hypothesis (schemathesis' pytest fixture
    loader does not work with pytest 9, and the app needs this module's fixture).
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", env.client.app, headers=_auth("admin"))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            response = case.call(headers=_auth("admin"))
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{response.status_code} for {case.as_curl_command()}: {response.text[:200]}")

        run()
    log.info("schemathesis: %d requests over %d operations, statuses %s", sum(statuses.values()), len(operations),
             dict(sorted(statuses.items())))
    assert sum(statuses.values()) >= 5 * len(operations)
    assert not failures, "\n".join(failures[:10])


def test_status_shows_a_running_reclustering_and_hides_a_finished_or_dead_one(env: Env) -> None:
    from clio_stream.living.progress import JobProgress, store_writer
    from clio_stream.storage.documents import CLUSTERING_LOCK, RECLUSTER_PROGRESS

    def status() -> dict:
        app = create_app(env.settings.with_overrides(api_status_cache_s=0), store=env.store)
        with TestClient(app, raise_server_exceptions=False) as client:
            return client.get("/v1/status", headers=_auth("viewer")).json()

    clock = iter(range(1000, 2000, 10))
    job = JobProgress(7, {"Request": 300, "Task": 100}, store_writer(env.store.states), clock=lambda: float(next(clock)))
    job.stage("warm start", "Request")
    job.stage("cluster and name", "Request")
    token = env.store.locks.acquire(CLUSTERING_LOCK, "recluster-test", 60)
    assert token is not None
    try:
        shown = status()["recluster_progress"]
        assert shown["version"] == 7 and shown["stage"] == "cluster and name" and shown["facet"] == "Request"
        # Request holds 3/4 of the points: a stage inside it is past the start and short of its share.
        assert (shown["facet_index"], shown["facets"]) == (1, 2) and 0.05 < shown["fraction"] < 0.75
        assert shown["eta_s"] is not None and shown["eta_s"] > 0
    finally:
        env.store.locks.release(CLUSTERING_LOCK, token)
    assert status()["recluster_progress"] is None  # the lease is gone: a job killed mid-way is not "running"
    job.facet_done("Request")
    job.stage("done")
    assert env.store.states.read(RECLUSTER_PROGRESS).finished_at is not None


def test_status_lists_the_children_of_a_running_up(env: Env) -> None:
    from api.routes_status import UP_CHILDREN_STALE_S
    from clio_stream.storage.documents import UP_CHILDREN, ChildStatus, UpChildren

    def children() -> list | None:
        app = create_app(env.settings.with_overrides(api_status_cache_s=0), store=env.store)
        with TestClient(app, raise_server_exceptions=False) as client:
            return client.get("/v1/status", headers=_auth("viewer")).json()["up_children"]

    now = time.time()
    env.store.states.write(UP_CHILDREN, UpChildren(updated_at=now, children=[
        ChildStatus(name="consumer-0", alive=True, restarts=2, last_exit_code=-9, last_exit_at=now - 5),
        ChildStatus(name="qdrant", alive=True)]))
    shown = children()
    assert [c["name"] for c in shown] == ["consumer-0", "qdrant"]
    assert shown[0]["restarts"] == 2 and shown[0]["last_exit_code"] == -9
    env.store.states.write(UP_CHILDREN, UpChildren(updated_at=now - UP_CHILDREN_STALE_S - 1, children=[]))
    assert children() is None  # `up` stopped reporting: nothing claimed about it
