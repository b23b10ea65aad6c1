"""Unit tests of the static site writer and server (no browser)."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clio_stream.site import read_gz_json, start_site_server_in_thread, write_site
from clio_stream.site import writer as site_writer
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.clusters import ClioResult
from tests.fixtures_site import (
    CONCERNING,
    HIDDEN_NAME,
    HIDDEN_NODE_ID,
    HIDDEN_SUMMARY,
    LANGUAGE,
    REQUEST,
    SECRET_TOKEN,
    SiteFixture,
    make_site_fixture,
)


@pytest.fixture(scope="module")
def fixture() -> SiteFixture:
    return make_site_fixture()


def _decoded_files(site: Path) -> dict[str, str]:
    """Every file of the site as text (gzip files decompressed), keyed by relative path."""
    out = {}
    for path in sorted(site.rglob("*")):
        if path.is_file():
            raw = path.read_bytes()
            out[str(path.relative_to(site))] = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    return out


def _walk(site: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest, every node reachable from it, and every leaf member entry."""
    data = site / "data"
    manifest = read_gz_json(data / "manifest.json.gz")
    nodes: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    stack = [n for f in manifest["facets"] if f["has_hierarchy"] for n in f["roots"]]
    while stack:
        node = stack.pop()
        nodes.append(node)
        if node["children_file"]:
            chunk = read_gz_json(data / node["children_file"])
            assert chunk["parent_id"] == node["id"]
            assert len(chunk["children"]) == node["n_children"]
            stack.extend(chunk["children"])
        for rel in node["member_files"]:
            members.extend(read_gz_json(data / rel)["members"])
    return manifest, nodes, members


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 100])
def test_chunks_never_exceed_chunk_size(tmp_path: Path, fixture: SiteFixture, chunk_size: int) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=chunk_size)
    data = site / "data"
    index = read_gz_json(data / "conversations/index.json.gz")["chunks"]
    seen = []
    for entry in index:
        records = read_gz_json(data / entry["file"])["conversations"]
        assert 1 <= len(records) <= chunk_size
        assert len(records) == entry["count"]
        assert records[0]["id"] == entry["first"] and records[-1]["id"] == entry["last"]
        seen += [r["id"] for r in records]
    assert len(seen) == len(set(seen)) == len(fixture.result.conversations) - len(fixture.hidden_member_ids)
    for path in (data / "f0" / "members").glob("*.json.gz"):
        assert 1 <= len(read_gz_json(path)["members"]) <= chunk_size


def test_every_file_is_gzip_json_of_one_version(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=5)
    version = read_gz_json(site / "data" / "manifest.json.gz")["version"]
    gz_files = list(site.rglob("*.gz"))
    assert len(gz_files) > 10
    for path in gz_files:
        assert path.read_bytes()[:2] == b"\x1f\x8b", path
        assert read_gz_json(path)["version"] == version, path
    assert json.loads((site / "data" / "version.json").read_text())["version"] == version
    html = (site / "index.html").read_text()
    assert "<script" in html and "{{CLIO_" not in html
    html = html.replace('"http://www.w3.org/2000/svg"', "")  # the map's SVG namespace: a name, never fetched
    assert "http://" not in html and "https://" not in html  # no CDN, nothing remote


def test_every_visible_node_is_reachable(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=4)
    manifest, nodes, members = _walk(site)
    hierarchy = fixture.result.hierarchies[REQUEST]
    visible = {nid for nid, n in hierarchy.nodes.items() if not n.hidden}
    assert {n["id"] for n in nodes} == visible
    assert len(nodes) == len(visible)  # each once
    score = {cf.conversation_id: cf.values[CONCERNING].numeric for cf in fixture.result.facet_values}
    for node in nodes:
        assert node["size"] == hierarchy.nodes[node["id"]].size
        # Statistics are over the visible members only (a parent's never count its withheld leaf's).
        shown = [score[c] for c in hierarchy.nodes[node["id"]].conversation_ids if c not in fixture.hidden_member_ids]
        assert node["numeric"][CONCERNING]["mean"] == pytest.approx(sum(shown) / len(shown))
    # Every shown conversation is listed exactly once in the tree's leaves.
    ids = [m["id"] for m in members]
    assert sorted(ids) == sorted(c.id for c in fixture.result.conversations if c.id not in fixture.hidden_member_ids)
    facet = manifest["facets"][0]
    assert facet["name"] == REQUEST and facet["total"] == 60 and facet["other_count"] == 0
    assert [f["has_hierarchy"] for f in manifest["facets"]] == [True, False, False]
    assert manifest["numeric_facets"] == [{"name": CONCERNING, "min": 1, "max": 5}]
    travel = next(n for n in nodes if n["name"] == "Travel planning")
    assert travel["other_count"] == len(fixture.hidden_member_ids)
    assert travel["n_children"] == 2


def test_hidden_node_is_written_nowhere(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=4)
    files = _decoded_files(site)
    secrets = [HIDDEN_NAME, HIDDEN_SUMMARY, HIDDEN_NODE_ID, SECRET_TOKEN, "Zephyr", "Kestrel",
               "user-secret", "do-not-publish", "fewer than 2 distinct users"]
    secrets += [f'"{cid}"' for cid in fixture.hidden_member_ids]
    for rel, text in files.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked into {rel}"
    # Sanity: the grep would have found a visible member id the same way.
    assert any('"conv-0001"' in text for text in files.values())


def test_hidden_root_and_hidden_parent_hide_their_subtrees(tmp_path: Path) -> None:
    result = make_site_fixture().result.model_copy(deep=True)
    nodes = result.hierarchies[REQUEST].nodes
    nodes["request-r1"].hidden = True  # a whole root
    nodes["request-r0-m1"].hidden = True  # a middle node; its leaves are not marked themselves
    site = write_site(result, tmp_path / "site", chunk_size=10)
    manifest, walked, members = _walk(site)
    ids = {n["id"] for n in walked}
    assert not any(i.startswith("request-r1") or i.startswith("request-r0-m1") for i in ids)
    assert manifest["facets"][0]["other_count"] == nodes["request-r1"].size
    r0 = next(n for n in walked if n["id"] == "request-r0")
    assert r0["other_count"] == nodes["request-r0-m1"].size
    text = "\n".join(_decoded_files(site).values())
    for cid in nodes["request-r0-m1-l0"].conversation_ids + nodes["request-r1"].conversation_ids:
        assert f'"{cid}"' not in text
    assert "React state management" not in text


def test_show_conversations_false_writes_no_messages(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=8, show_conversations=False)
    files = _decoded_files(site)
    text = "\n".join(files.values())
    for phrase in ["Can you help me with", "step by step", "One follow-up question", "Of course, go ahead"]:
        assert phrase not in text
    manifest = read_gz_json(site / "data" / "manifest.json.gz")
    assert manifest["show_conversations"] is False
    for entry in read_gz_json(site / "data/conversations/index.json.gz")["chunks"]:
        for record in read_gz_json(site / "data" / entry["file"])["conversations"]:
            assert "messages" not in record and "timestamp" not in record
            assert set(record["facets"]) == {REQUEST, LANGUAGE, CONCERNING}


def test_conversation_records_have_every_facet_value_and_cluster_path(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=50)
    records = {r["id"]: r for e in read_gz_json(site / "data/conversations/index.json.gz")["chunks"]
               for r in read_gz_json(site / "data" / e["file"])["conversations"]}
    rec = records["conv-0001"]
    assert rec["facets"][REQUEST]["value"] == "The user asked for help with fixing python import errors."
    assert rec["facets"][LANGUAGE]["value"] in {"English", "Spanish", "French", "German"}
    assert 1 <= rec["facets"][CONCERNING]["numeric"] <= 5
    assert rec["clusters"][REQUEST] == {"path": ["request-r0", "request-r0-m0", "request-r0-m0-l0"],
                                        "name": "Fixing Python import errors"}
    assert rec["messages"][0]["role"] == "user"
    assert "user_id" not in rec and "metadata" not in rec


def test_conversation_chunks_are_sorted_like_javascript_strings(tmp_path: Path) -> None:
    ids = ["b", "a", "\U0001f600", "\uff5e", "Z", "a-10", "a-2", "é"]
    result = ClioResult(
        facets=[{"name": LANGUAGE, "question": "?", "numeric": None}],
        conversations=[Conversation(id=i, messages=[Message(role="user", content="hi")]) for i in ids],
        facet_values=[ConversationFacets(conversation_id=i, values={LANGUAGE: FacetValue(facet=LANGUAGE, value="x")})
                      for i in ids],
        hierarchies={},
    )
    site = write_site(result, tmp_path / "site", chunk_size=3)
    chunks = read_gz_json(site / "data/conversations/index.json.gz")["chunks"]
    order = [r["id"] for e in chunks for r in read_gz_json(site / "data" / e["file"])["conversations"]]
    # JavaScript compares UTF-16 code units: the emoji (surrogates 0xD83D...) sorts before U+FF5E.
    assert order == sorted(ids, key=lambda s: s.encode("utf-16-be", "surrogatepass"))
    assert order.index("\U0001f600") < order.index("\uff5e")


def test_html_root_and_title_are_applied_and_escaped(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=10, html_root="/clio/sub/",
                      title='Usage </script><b>&"')
    html = (site / "index.html").read_text()
    config = html.split('<script id="clio-config" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert json.loads(config) == {"htmlRoot": "/clio/sub", "title": 'Usage </script><b>&"', "format": 1}
    assert "<title>Usage &lt;/script&gt;&lt;b&gt;&amp;&quot;</title>" in html
    assert site_writer.normalize_html_root("clio") == "/clio"
    assert site_writer.normalize_html_root("") == ""
    assert site_writer.normalize_html_root("https://cdn.example/x/") == "https://cdn.example/x"


def test_server_serves_chunks_raw_under_html_root(tmp_path: Path, fixture: SiteFixture) -> None:
    site = write_site(fixture.result, tmp_path / "site", chunk_size=10, html_root="/clio")
    server, url = start_site_server_in_thread(site, "127.0.0.1", 0, html_root="/clio")
    try:
        assert url.endswith("/clio/")
        with urllib.request.urlopen(url + "data/manifest.json.gz") as resp:
            assert resp.headers.get("Content-Encoding") is None
            assert resp.headers["Content-Type"] in {"application/gzip", "application/octet-stream"}
            assert json.loads(gzip.decompress(resp.read()))["facets"][0]["name"] == REQUEST
        with urllib.request.urlopen(url) as resp:
            assert b'id="clio-config"' in resp.read()
        base = url[: -len("/clio/")]
        with urllib.request.urlopen(base + "/") as resp:  # redirected to the root
            assert resp.url.endswith("/clio/")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/data/manifest.json.gz")
        assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def _check_rewrite(tmp_path: Path, fixture: SiteFixture) -> None:
    target = tmp_path / "site"
    write_site(fixture.result, target, chunk_size=2)
    v1 = read_gz_json(target / "data/manifest.json.gz")["version"]
    assert (target / "data/conversations/00020.json.gz").exists()
    changed = fixture.result.model_copy(deep=True)
    changed.hierarchies[REQUEST].nodes["request-r0"].name = "Renamed root"
    write_site(changed, target, chunk_size=100)
    manifest = read_gz_json(target / "data/manifest.json.gz")
    assert manifest["version"] != v1
    assert manifest["facets"][0]["roots"][0]["name"] == "Renamed root"
    assert not (target / "data/conversations/00020.json.gz").exists()  # nothing stale from the old site
    for path in target.rglob("*.gz"):
        assert read_gz_json(path)["version"] == manifest["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no temp or old siblings left


def test_atomic_rewrite_replaces_old_site(tmp_path: Path, fixture: SiteFixture) -> None:
    _check_rewrite(tmp_path, fixture)


def test_atomic_rewrite_without_rename_exchange(tmp_path: Path, fixture: SiteFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site_writer, "_rename_exchange", lambda a, b: False)
    _check_rewrite(tmp_path, fixture)


def test_failed_build_keeps_old_site(tmp_path: Path, fixture: SiteFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "site"
    write_site(fixture.result, target, chunk_size=10)
    before = _decoded_files(target)

    def boom(self: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(site_writer._SiteBuilder, "_write_index_html", boom)
    with pytest.raises(RuntimeError):
        write_site(fixture.result, target, chunk_size=3)
    assert _decoded_files(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path, fixture: SiteFixture) -> None:
    target = tmp_path / "important"
    target.mkdir()
    (target / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError):
        write_site(fixture.result, target, chunk_size=10)
    assert (target / "thesis.tex").read_text() == "precious"
    with pytest.raises(ValueError):
        write_site(fixture.result, tmp_path / "x", chunk_size=0)
