"""PublishedVersions (its cache, scrub, invalidation), the API's per-version memo, typed store links and stats."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from api.deps import VersionMemo
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, RunStats, StoreLink
from clio_stream.domain.conversation import Conversation, Message
from clio_stream.settings import ClioSettings
from clio_stream.privacy.visibility import Minimums
from clio_stream.storage.published import PublishedVersions
from clio_stream.storage.result_folder import SiteOptions

F = "Request"


def _result(**extra) -> ClioResult:
    nodes = {
        "request-l1-0": ClusterNode(id="request-l1-0", facet=F, name="P", summary="", level=1,
                                    children=["request-l0-2", "x-leaf"], conversation_ids=["a", "b", "c"]),
        "request-l0-2": ClusterNode(id="request-l0-2", facet=F, name="L", summary="", level=0,
                                    parent_id="request-l1-0", conversation_ids=["a", "b"]),
        "x-leaf": ClusterNode(id="x-leaf", facet=F, name="X", summary="", level=0, parent_id="request-l1-0",
                              conversation_ids=["c"]),
    }
    convs = [Conversation(id=c, messages=[Message(role="user", content=f"text {c}")], user_id=f"u{c}") for c in "abc"]
    return ClioResult(facets=[{"name": F, "question": "?"}], conversations=convs, facet_values=[],
                      hierarchies={F: FacetHierarchy(facet=F, nodes=nodes, root_ids=["request-l1-0"])}, **extra)


def test_old_result_json_reads_its_store_link_from_the_stats_keys() -> None:
    legacy = _result().model_dump(mode="json", exclude={"store_links"})
    legacy["stats"] = {"store_clusters": {"x-leaf": 9}, "cluster_versions": {F: 4}, "llm": {"prompts": 3}, "odd": 1}
    result = ClioResult.model_validate_json(json.dumps(legacy))
    assert result.store_links == {F: StoreLink(version=4, clusters={"request-l0-2": 2, "x-leaf": 9})}
    assert result.stats.llm.prompts == 3 and "store_clusters" not in result.stats.model_dump()
    legacy["stats"] = {"version": 7}
    assert ClioResult.model_validate(legacy).store_links[F].version == 7


def test_a_new_result_keeps_exactly_the_links_it_was_given() -> None:
    result = _result(store_links={F: StoreLink(version=1, clusters={"x-leaf": 5})}, stats=RunStats(points={F: 3}))
    again = ClioResult.model_validate_json(result.model_dump_json())
    assert again.store_links == {F: StoreLink(version=1, clusters={"x-leaf": 5})}  # no leaf-id parsing
    assert again.stats.points == {F: 3}


def test_site_options_of_a_published_result_are_its_recorded_ones() -> None:
    current = ClioSettings(show_conversations=True, site_chunk_size=50, html_root="/now")
    recorded = _result(settings={"show_conversations": False, "site_chunk_size": 7})
    assert SiteOptions.as_published(recorded, current) == SiteOptions(7, "/now", False, Minimums.of(current))
    assert SiteOptions.as_published(_result(), current) == SiteOptions.from_settings(current)


def test_scrub_rewrites_and_the_cache_and_memo_follow(tmp_path: Path) -> None:
    settings = ClioSettings(publish_dir=tmp_path / "pub", show_conversations=True)
    versions = PublishedVersions.from_settings(settings)
    assert PublishedVersions.at(tmp_path / "pub") is versions
    versions.publish(_result(), "v1", settings=settings)
    first = versions.load_current()
    assert first is not None and versions.load_current() is first and versions.current_if_loaded() is first
    built: list[str] = []
    memo: VersionMemo[int] = VersionMemo(lambda p: built.append(p.version) or len(p.result.conversations))
    assert memo.get(first) == 3 and memo.get(first) == 3 and built == ["v1"]

    def drop_c(result: ClioResult) -> bool:
        result.conversations = [c for c in result.conversations if c.id != "c"]
        return True

    assert versions.scrub(drop_c, settings) == ["v1"]
    assert versions.current_if_loaded() is None  # invalidated at once in this process
    second = versions.load_current()
    assert second is not None and second is not first and second.identity != first.identity
    assert [c.id for c in second.result.conversations] == ["a", "b"]
    assert memo.peek(second) is None and memo.get(second) == 2 and built == ["v1", "v1"]
    assert "redacted_at" in json.loads((second.path / "meta.json").read_text())
    assert versions.scrub(lambda r: False, settings) == [] and versions.load_current() is second
    versions.invalidate()
    assert versions.current_if_loaded() is None and versions.load_current().identity == second.identity


def test_another_process_publish_is_seen_within_the_pointer_check_interval_without_a_stat_per_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clio_stream.storage import published as published_module

    settings = ClioSettings(publish_dir=tmp_path / "pub", show_conversations=True)
    writer, reader = PublishedVersions(tmp_path / "pub"), PublishedVersions(tmp_path / "pub")  # two processes
    writer.publish(_result(), "v1", settings=settings)
    first = reader.load_current()
    assert first is not None and first.version == "v1"
    stats: list[str] = []
    real_stamp = published_module._stamp
    monkeypatch.setattr(published_module, "_stamp", lambda p: stats.append(str(p)) or real_stamp(p))
    for _ in range(100):
        assert reader.current_if_loaded() is first and reader.load_current() is first
    assert stats == []  # within the interval: no file access at all
    writer.publish(_result(), "v2", settings=settings)
    assert reader.current_if_loaded() is first  # not yet looked at
    time.sleep(published_module.POINTER_CHECK_S + 0.05)
    assert reader.current_if_loaded() is None  # the pointer moved: the caller loads the new version
    second = reader.load_current()
    assert second is not None and second.version == "v2"
    assert reader.current_if_loaded() is second
