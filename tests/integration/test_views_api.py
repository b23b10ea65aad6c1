"""The views' API under the privacy minimums (three users, three conversations): every filter kind, breakdowns,
the map, export, diff, search. Ground truth is recomputed here from the fixture, not read from the code.

A slice is any group of conversations an answer counts: a filtered cluster, what a filter removes from a
cluster (its remainder, which the unfiltered answer gives away by subtraction), a breakdown bucket. None may
hold fewer than the minimum of users or conversations.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from clio_stream.domain.clusters import ClioResult
from clio_stream.privacy.visibility import result_visibility
from tests.fixtures_site import HIDDEN_NAME, HIDDEN_NODE_ID, REQUEST
from tests.fixtures_views import PRO_USERS, publish_two_versions, store_with_centroids, views_result, views_settings
from tests.integration.conftest import minilm  # noqa: F401 - session fixture

KEYS = {"viewer": "views-viewer-" + "v" * 16, "analyst": "views-analyst-" + "a" * 16}
MIN = 3
DAY = 86400.0  # filter_time_cell_s: time filters are whole days
T0 = 1.7e9
FILTERS: list[dict[str, str]] = [
    {"metadata.tier": "free"}, {"metadata.tier": "pro"}, {"Language": "Spanish"}, {"Language": "english"},
    {"Concerning>": "2"}, {"Concerning": "1"}, {"Concerning<": "2"},  # URL forms of >=2, =1, <=2
    {"from": str(T0 + 20 * 3600), "to": str(T0 + 50 * 3600)},
    {"metadata.tier": "free", "Concerning<": "2"},
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> Iterator[tuple[TestClient, ClioResult]]:  # noqa: F811
    keys = ",".join(f"{role}:{key}" for role, key in KEYS.items())
    settings = views_settings(tmp_path_factory.mktemp("published"), api_keys=keys, trend_window_s=3600)
    publish_two_versions(settings, minilm)
    result = views_result(minilm, renamed=True)
    store = store_with_centroids(minilm, result)
    with TestClient(create_app(settings, store=store, embedder=minilm)) as c:
        yield c, result
    store.close()


def get(c: TestClient, path: str, role: str = "viewer", **params: Any) -> Any:
    r = c.get(path, params=params, headers={"Authorization": f"Bearer {KEYS[role]}"})
    return r


class Truth:
    """The fixture's conversations as plain data: who, when, which values, in which visible node."""

    def __init__(self, result: ClioResult) -> None:
        vis = result_visibility(result)
        self.fv = vis.facets[REQUEST]
        self.withheld = set(vis.withheld)
        self.user = {c.id: c.user_id for c in result.conversations}
        self.time = {c.id: c.timestamp for c in result.conversations}
        self.tier = {c.id: c.metadata["tier"] for c in result.conversations}
        values = {cf.conversation_id: cf.values for cf in result.facet_values}
        self.lang = {cid: v["Language"].value.lower() for cid, v in values.items()}
        self.concern = {cid: v["Concerning"].numeric for cid, v in values.items()}

    def members(self, node_id: str) -> set[str]:
        return set(self.fv.hierarchy.nodes[node_id].conversation_ids) - self.withheld

    def matches(self, cid: str, flt: dict[str, str]) -> bool:
        for key, value in flt.items():
            ok = {"metadata.tier": lambda: self.tier[cid] == value, "Language": lambda: self.lang[cid] == value.lower(),
                  "Concerning>": lambda: self.concern[cid] >= int(value), "Concerning": lambda: self.concern[cid] == int(value),
                  "Concerning<": lambda: self.concern[cid] <= int(value),
                  "from": lambda: self.time[cid] >= DAY * math.floor(float(value) / DAY),
                  "to": lambda: self.time[cid] < DAY * math.ceil(float(value) / DAY)}[key]()
            if not ok:
                return False
        return True

    def safe(self, group: set[str]) -> bool:
        return not group or (len(group) >= MIN and len({self.user[c] for c in group}) >= MIN)


def _nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = list(tree["roots"])
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node["children"])


@pytest.mark.parametrize("flt", FILTERS, ids=["&".join(f"{k}{v}" for k, v in f.items()) for f in FILTERS])
def test_every_filter_shows_only_slices_that_meet_the_minimums(client: Any, flt: dict[str, str]) -> None:
    c, result = client
    truth = Truth(result)
    r = get(c, f"/v1/facets/{REQUEST}/tree", **flt)
    assert r.status_code == 200, r.text
    shown = {n["id"]: n for n in _nodes(r.json())}
    looser = [dict(p) for p in ([], *[[kv] for kv in flt.items()]) if len(p) < len(flt)]  # every sub-filter
    withheld_by_filter = 0
    for nid in truth.fv.visible:
        node = truth.fv.hierarchy.nodes[nid]
        if node.children:
            continue
        members = truth.members(nid)
        group = {cid for cid in members if truth.matches(cid, flt)}
        if nid not in shown:
            withheld_by_filter += bool(group)
            continue
        assert shown[nid]["size"] == len(group) and truth.safe(group) and group, (nid, flt)
        assert shown[nid]["distinct_users"] == len({truth.user[x] for x in group})
        for sub in looser:  # what this filter removes against any looser one is itself a safe group
            rest = {cid for cid in members if truth.matches(cid, sub)} - group
            assert truth.safe(rest), (nid, flt, sub, len(rest))
        for key in [k for k in flt if k.startswith("Concerning") or k in ("from", "to")][:1]:
            # Two range answers differ by whole cells (one score, one day): each cell here is empty or safe.
            others = {k: v for k, v in flt.items() if not (k.startswith("Concerning") or k in ("from", "to"))}
            cell_of = (lambda x: truth.concern[x]) if key.startswith("Concerning") else (lambda x: truth.time[x] // DAY)
            for cell in {cell_of(x) for x in members}:
                assert truth.safe({x for x in members if cell_of(x) == cell and truth.matches(x, others)}), (nid, cell)
    for node in shown.values():  # a parent counts its shown children only: nothing unshown leaks through it
        if node["children"]:
            assert node["size"] == sum(k["size"] for k in node["children"]), node["id"]
    assert HIDDEN_NODE_ID not in shown
    if flt == {"metadata.tier": "pro"}:
        assert not shown  # two users: no slice of them can ever be shown
    if flt == {"metadata.tier": "free"}:
        assert shown and withheld_by_filter  # shown where no "pro" user is, withheld where one would stand out
    if flt in ({"Concerning": "1"}, {"from": str(T0 + 20 * 3600), "to": str(T0 + 50 * 3600)}):
        assert shown  # ordered filters do show the clusters whose every cell is safe (not vacuous)


def test_filtered_cluster_members_breakdown_map_and_export_agree(client: Any) -> None:
    c, result = client
    truth = Truth(result)
    flt = {"metadata.tier": "free"}
    tree = get(c, f"/v1/facets/{REQUEST}/tree", **flt).json()
    leaf = next(n for n in _nodes(tree) if not n["children"])
    hidden_under_filter = next(nid for nid in sorted(truth.fv.visible) if not truth.fv.hierarchy.nodes[nid].children
                               and nid not in {n["id"] for n in _nodes(tree)})
    assert get(c, f"/v1/facets/{REQUEST}/clusters/{hidden_under_filter}", **flt).status_code == 404
    assert get(c, f"/v1/facets/{REQUEST}/clusters/{hidden_under_filter}").status_code == 200
    detail = get(c, f"/v1/facets/{REQUEST}/clusters/{leaf['id']}", **flt).json()
    assert detail["size"] == leaf["size"]
    assert get(c, f"/v1/facets/{REQUEST}/clusters/{leaf['id']}/conversations", **flt).status_code == 403  # viewer
    page = get(c, f"/v1/facets/{REQUEST}/clusters/{leaf['id']}/conversations", "analyst", **flt).json()
    listed = {m["conversation_id"] for m in page["items"]}
    assert listed == {cid for cid in truth.members(leaf["id"]) if truth.tier[cid] == "free"}
    assert all(truth.user[cid] not in PRO_USERS for cid in listed)

    bd = get(c, f"/v1/facets/{REQUEST}/clusters/request-r0/breakdown").json()
    members = truth.members("request-r0")
    for dim in bd["dimensions"]:
        assert dim["dimension"] != "metadata.source"  # declared for analysts only
        for bucket in dim["buckets"]:
            key = {"Language": lambda cid: truth.lang[cid] == bucket["label"].lower(),
                   "Concerning": lambda cid: str(truth.concern[cid]) == bucket["label"],
                   "metadata.tier": lambda cid: truth.tier[cid] == bucket["label"]}[dim["dimension"]]
            group = {cid for cid in members if key(cid)}
            assert bucket["count"] == len(group) and truth.safe(group), (dim["dimension"], bucket)
        other = {cid for cid in members} - {cid for b in dim["buckets"] for cid in members if
                                           (truth.lang[cid] if dim["dimension"] == "Language" else
                                            str(truth.concern[cid]) if dim["dimension"] == "Concerning" else
                                            truth.tier[cid]).lower() == b["label"].lower()}
        assert dim["other"] == len(other) and truth.safe(other), dim
    assert "metadata.source" in {d["dimension"] for d in get(
        c, f"/v1/facets/{REQUEST}/clusters/request-r0/breakdown", "analyst").json()["dimensions"]}
    assert get(c, f"/v1/facets/{REQUEST}/tree", **{"metadata.source": "fixture"}).status_code == 400
    assert get(c, f"/v1/facets/{REQUEST}/tree", "analyst", **{"metadata.source": "fixture"}).status_code == 200

    full_map = get(c, f"/v1/facets/{REQUEST}/map").json()["nodes"]
    assert {n["id"] for n in full_map} == truth.fv.visible and all(0 <= n["x"] <= 1 for n in full_map)
    assert get(c, f"/v1/facets/{REQUEST}/map", points="true").status_code == 403
    sample = get(c, f"/v1/facets/{REQUEST}/map", "analyst", points="true").json()["points"]
    assert sample and not {p["conversation_id"] for p in sample} & truth.withheld
    filtered_map = get(c, f"/v1/facets/{REQUEST}/map", **flt).json()["nodes"]
    assert {n["id"]: n["size"] for n in filtered_map} == {n["id"]: n["size"] for n in _nodes(tree)}

    rows = list(csv.DictReader(io.StringIO(get(c, f"/v1/facets/{REQUEST}/export", **flt).text)))
    assert {r["id"]: int(r["size"]) for r in rows} == {n["id"]: n["size"] for n in _nodes(tree)}
    assert get(c, f"/v1/facets/{REQUEST}/export", members="true").status_code == 403
    parquet = get(c, f"/v1/facets/{REQUEST}/export", "analyst", members="true", format="parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(parquet.content)).to_pylist()
    assert {r["conversation_id"] for r in table} == set().union(
        *(truth.members(n) for n in truth.fv.visible if not truth.fv.hierarchy.nodes[n].children))
    assert not {r["conversation_id"] for r in table} & truth.withheld


def test_bad_filters_are_refused_with_a_reason(client: Any) -> None:
    c, _ = client
    for params, words in [({"Colour": "red"}, "unknown filter field"), ({"Concerning>": "high"}, "not an integer"),
                          ({"Request": HIDDEN_NODE_ID}, "visible cluster"), ({"Language>": "2"}, "not numeric"),
                          ({"from": "2030-01-01", "to": "2020-01-01"}, "empty")]:
        r = get(c, f"/v1/facets/{REQUEST}/tree", **params)
        assert r.status_code == 400 and words in r.json()["detail"], (params, r.text)


def test_diff_and_search(client: Any) -> None:
    c, _ = client
    diff = get(c, "/v1/versions/1/diff/2").json()["facets"][REQUEST]
    changed = {d["id"]: d for d in diff["size_changes"]}
    assert changed["request-r1-m1-l0"]["change"] == -1 and changed["request-r0"]["old_name"] == "Software development"
    assert get(c, "/v1/versions/1/diff/nope").status_code == 404

    hits = get(c, "/v1/search", q="How do I fix 'ModuleNotFoundError: No module named numpy' in Python?").json()
    assert hits["facets"][REQUEST][0]["id"] == "request-r0-m0-l0"
    assert hits["facets"][REQUEST][0]["path"][0]["id"] == "request-r0"
    secret = get(c, "/v1/search", q=HIDDEN_NAME, k=20).json()["facets"][REQUEST]
    assert secret and HIDDEN_NODE_ID not in {h["id"] for h in secret}  # a withheld cluster is never an answer
    assert get(c, "/v1/search", q="").status_code == 422
