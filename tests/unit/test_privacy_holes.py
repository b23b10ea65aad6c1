"""Issue 13, defect 7: the privacy holes, each probed from the outside (site files and API answers).

Real minimums throughout (3 conversations, 2 distinct users), over the site fixture: one withheld leaf
of one user under "Travel planning", published and served with an in-memory Qdrant store that holds
every conversation's facet points and raw messages.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from clio_stream.domain.facets import Facet
from clio_stream.privacy.audit import annotate, mark_below_minimums
from clio_stream.privacy.users import keyed_user_hash, user_key_of
from clio_stream.storage.published import PublishedVersions
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import ConversationRecord, FacetPoint
from clio_stream.storage.store import QdrantStore
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, StoreLink
from tests.fixtures_site import CONCERNING, HIDDEN_NODE_ID, LANGUAGE, REQUEST, make_site_fixture

HASH_KEY = "unit-test-hash-key"
KEYS = {"viewer": "viewer-" + "v" * 24, "analyst": "analyst-" + "a" * 24}
DIM = 4


# ----------------------------------------------------------------------------- users without an id


def _anonymous(n: int, prefix: str = "anon") -> list[Conversation]:
    return [Conversation(id=f"{prefix}{i}", messages=[Message(role="user", content=f"question {i}")])
            for i in range(n)]


def test_conversations_without_a_user_id_count_as_one_user() -> None:
    """One person sending k conversations without a user id is one user, not k: the minimum withholds them."""
    convs = _anonymous(4)
    users_of = {c.id: user_key_of(c, HASH_KEY) for c in convs}
    assert len(set(users_of.values())) == 1
    leaf = ClusterNode(id="f-l0-0", facet="f", name="n", summary="s", level=0,
                       conversation_ids=[c.id for c in convs])
    assert mark_below_minimums([leaf], users_of, min_conversations=3, min_users=2) == 1
    assert leaf.hidden and leaf.hidden_reason == "fewer than 2 distinct users"
    # The anonymous user is nobody's real id (not even a user called "anonymous") ...
    named = Conversation(id="named", messages=[Message(role="user", content="q")], user_id="anonymous")
    assert user_key_of(named, HASH_KEY) not in users_of.values()
    assert keyed_user_hash("anonymous", HASH_KEY) not in users_of.values()
    # ... and counts as exactly one more user next to real ones.
    mixed = [*convs, named]
    node = ClusterNode(id="f-l0-1", facet="f", name="n", summary="s", level=0, conversation_ids=[c.id for c in mixed])
    hierarchy = FacetHierarchy(facet="f", nodes={node.id: node}, root_ids=[node.id])
    annotate(hierarchy, mixed, [], [Facet(name="f", question="?")], min_conversations=3, min_users=2,
             user_hash_key=HASH_KEY)
    assert node.distinct_users == 2 and not node.hidden


def test_re_clustering_counts_the_stored_anonymous_hash_as_one_user() -> None:
    """Re-clustering counts the hashes the consumers stored (user_id = stored hash): still one user."""
    stored = {c.id: user_key_of(c, HASH_KEY) for c in _anonymous(3)}
    again = [Conversation(id=cid, messages=[Message(role="user", content="")], user_id=h) for cid, h in stored.items()]
    assert len({user_key_of(c, HASH_KEY) for c in again}) == 1


# ----------------------------------------------------------------------------- the published fixture


@dataclass
class Served:
    client: TestClient
    result: ClioResult
    hidden: list[str]
    site: Path


def _populate(store: QdrantStore, result: ClioResult, leaf_cluster: dict[str, int]) -> None:
    leaf_of = {cid: n.id for n in result.hierarchies[REQUEST].nodes.values() if n.level == 0 for cid in n.conversation_ids}
    values = {cf.conversation_id: cf.values for cf in result.facet_values}
    rng = np.random.default_rng(0)
    points, records = [], []
    for conv in result.conversations:
        user_hash = keyed_user_hash(conv.user_id or "", HASH_KEY)
        for facet, fv in values[conv.id].items():
            cluster = leaf_cluster[leaf_of[conv.id]] if facet == REQUEST else None
            points.append(FacetPoint(conversation_id=conv.id, facet=facet, vector=rng.normal(size=DIM), value=fv.value,
                                     numeric=fv.numeric, user_hash=user_hash, timestamp=conv.timestamp,
                                     cluster_id=cluster, cluster_version=1 if cluster is not None else None))
        records.append(ConversationRecord(conversation_id=conv.id, status="processed", user_hash=user_hash,
                                          timestamp=conv.timestamp, raw=[m.model_dump() for m in conv.messages]))
    store.points.upsert_facets(points)
    store.points.mark_conversations(records)
    store.versions.set_current_version(REQUEST, 1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    fixture = make_site_fixture()
    result = fixture.result
    leaves = sorted(n.id for n in result.hierarchies[REQUEST].nodes.values() if n.level == 0)
    leaf_cluster = {nid: i for i, nid in enumerate(leaves)}
    result.store_links[REQUEST] = StoreLink(version=1, clusters=leaf_cluster)
    settings = ClioSettings(publish_dir=tmp_path_factory.mktemp("published"), site_chunk_size=4,
                            user_id_hash_key=HASH_KEY, api_keys=",".join(f"{r}:{k}" for r, k in KEYS.items()),
                            min_cluster_conversations=3, min_cluster_users=2, show_conversations=True,
                            store_raw_conversations=True)
    store = QdrantStore(":memory:", keep_raw=True)
    store.ensure_collections(DIM)
    _populate(store, result, leaf_cluster)
    folder = PublishedVersions.at(settings.publish_dir).publish(result, "v1", settings=settings)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as client:
        yield Served(client, result, fixture.hidden_member_ids, folder / "site")
    store.close()


def _auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children", []):
        yield from _walk(child)


# ----------------------------------------------------------------------------- parents minus children


def _expected(served: Served, node_id: str) -> dict[str, Any]:
    """What a visible node may show, computed from the raw fixture over its visible members only."""
    node = served.result.hierarchies[REQUEST].nodes[node_id]
    members = [c for c in node.conversation_ids if c not in served.hidden]
    conv = {c.id: c for c in served.result.conversations}
    score = {cf.conversation_id: cf.values[CONCERNING].numeric for cf in served.result.facet_values}
    hist = [0] * 5
    for c in members:
        hist[score[c] - 1] += 1
    counts = [0] * len(node.trend.counts)  # type: ignore[union-attr]
    for c in members:
        i = math.floor((conv[c].timestamp - node.trend.start) / node.trend.window_s)  # type: ignore[union-attr,operator]
        if 0 <= i < len(counts):
            counts[i] += 1
    return {"users": len({conv[c].user_id for c in members}), "hist": hist, "counts": counts}


def _check_node(served: Served, node: dict[str, Any], children: list[dict[str, Any]], where: str) -> None:
    want = _expected(served, node["id"])
    assert node["numeric"][CONCERNING]["histogram"] == want["hist"], where
    assert node["numeric"][CONCERNING]["count"] == sum(want["hist"]), where
    assert node["trend"]["counts"] == want["counts"], where
    assert node["distinct_users"] == want["users"], where
    if children:  # differencing: the parent is exactly the sum of what is shown below it
        assert want["hist"] == [sum(c["numeric"][CONCERNING]["histogram"][i] for c in children) for i in range(5)]
        assert node["trend"]["counts"] == [sum(c["trend"]["counts"][i] for c in children)
                                           for i in range(len(want["counts"]))], where
        assert node["trend"]["new_members"] == sum(c["trend"]["new_members"] for c in children), where


def test_parents_aggregate_over_visible_children_only(served: Served) -> None:
    """Parent minus visible children must not give the withheld leaf's scores, times or users (site and API)."""
    c = served.client
    tree = c.get(f"/v1/facets/{REQUEST}/tree", headers=_auth("viewer")).json()
    nodes = [n for r in tree["roots"] for n in _walk(r)]
    travel = next(n for n in nodes if n["name"] == "Travel planning")
    full = served.result.hierarchies[REQUEST].nodes[travel["id"]]
    assert travel["other_count"] == 3 and full.numeric[CONCERNING].histogram != _expected(served, travel["id"])["hist"]
    for node in nodes:
        _check_node(served, node, node["children"], f"API tree {node['id']}")
        detail = c.get(f"/v1/facets/{REQUEST}/clusters/{node['id']}", headers=_auth("viewer")).json()
        _check_node(served, detail, detail["children"], f"API cluster {node['id']}")
    growing = c.get(f"/v1/facets/{REQUEST}/trends", params={"limit": 100}, headers=_auth("viewer")).json()["growing"]
    for node in growing:
        _check_node(served, node, [], f"API trends {node['id']}")
    assert not any(n["trend"]["emerging"] for n in growing if n["id"] in (travel["id"], "request-r2"))
    # The site's files, as the dashboard reads them.
    data = served.site / "data"
    manifest = json.loads(gzip.decompress((data / "manifest.json.gz").read_bytes()))
    stack = list(manifest["facets"][0]["roots"])
    checked = 0
    while stack:
        node = stack.pop()
        children = (json.loads(gzip.decompress((data / node["children_file"]).read_bytes()))["children"]
                    if node["children_file"] else [])
        _check_node(served, node, children, f"site {node['id']}")
        stack.extend(children)
        checked += 1
    assert checked == len(nodes)


# ----------------------------------------------------------------------------- one conversation


def test_a_conversation_in_a_withheld_cluster_is_withheld_whole(served: Served) -> None:
    """The site never writes it; the API must not answer its other facets, its time or its messages either."""
    hidden = served.hidden[0]
    body = served.client.get(f"/v1/conversations/{hidden}", headers=_auth("analyst")).json()
    assert set(body["facets"]) == {REQUEST, LANGUAGE, CONCERNING}
    for facet, answer in body["facets"].items():
        assert answer["value"] is None and answer["numeric"] is None and answer["withheld"], facet
        assert answer["cluster_id"] is None and answer["path"] == [], facet
    assert body["messages"] is None and body["timestamp"] is None and body["withheld"] is True
    shown = served.client.get("/v1/conversations/conv-0001", headers=_auth("analyst")).json()
    assert not shown["withheld"] and shown["facets"][LANGUAGE]["value"] and shown["messages"]
    site_ids = {r["id"] for p in (served.site / "data" / "conversations").glob("0*.json.gz")
                for r in json.loads(gzip.decompress(p.read_bytes()))["conversations"]}
    assert hidden not in site_ids and "conv-0001" in site_ids


# ----------------------------------------------------------------------------- one rule for members


def test_conversation_level_data_needs_the_analyst_role_in_the_api_and_in_data(served: Served) -> None:
    c = served.client
    data = served.site / "data"
    rel = lambda p: "/data/" + str(p.relative_to(data))  # noqa: E731
    member_pages = sorted(data.glob("f0/members/*.json.gz"))
    chunks = sorted((data / "conversations").glob("*.json.gz"))
    aggregates = [data / "manifest.json.gz", *sorted(data.glob("f0/children/*.json.gz"))]
    assert member_pages and chunks and len(aggregates) > 1
    leaf = "request-r0-m0-l0"
    for path in member_pages + chunks:
        assert c.get(rel(path), headers=_auth("viewer")).status_code == 403, path
        assert c.get(rel(path), headers=_auth("analyst")).status_code == 200, path
    assert c.get(f"/v1/facets/{REQUEST}/clusters/{leaf}/conversations", headers=_auth("viewer")).status_code == 403
    assert c.get(f"/v1/facets/{REQUEST}/clusters/{leaf}/conversations", headers=_auth("analyst")).status_code == 200
    assert c.get(f"/v1/conversations/conv-0001", headers=_auth("viewer")).status_code == 403
    for path in aggregates:
        assert c.get(rel(path), headers=_auth("viewer")).status_code == 200, path
    # Nothing served to a viewer names a conversation.
    viewer_text = "".join(gzip.decompress(c.get(rel(p), headers=_auth("viewer")).content).decode() for p in aggregates)
    assert "conv-0" not in viewer_text and HIDDEN_NODE_ID not in viewer_text
