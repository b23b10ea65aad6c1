"""Pure logic of the views: metadata bounds, filter parsing, the slice and bucket rules, the map layout."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clio_stream.domain.metadata import MetadataKey, bound_metadata, visible_keys
from clio_stream.privacy.visibility import Minimums, shown_buckets, shown_slice
from clio_stream.views.filters import FilterError, parse_filter
from clio_stream.views.layout import cluster_map
from tests.fixtures_site import REQUEST, make_site_fixture

FACETS = [{"name": "Request"}, {"name": "Language"}, {"name": "Concerning", "numeric": [1, 5]}]
MIN = Minimums(conversations=3, users=3)


def test_metadata_is_bounded_with_a_reason_for_every_drop() -> None:
    kept, notes = bound_metadata({"a": "x" * 10, "b": 1.5, "c": 2.0, "d": [1], "e": None, "k" * 9: "v", "f": False},
                                 max_keys=4, max_key_chars=8, max_value_chars=5)
    assert kept == {"a": "xxxxx", "b": "1.5", "c": "2", "f": "false"}
    assert len(notes) == 4 and any("list value dropped" in n for n in notes) and any("cut to 5" in n for n in notes)
    assert bound_metadata({}, max_keys=1, max_key_chars=1, max_value_chars=1) == ({}, [])
    keys = [MetadataKey(name="p"), MetadataKey(name="t", role="analyst"), MetadataKey(name="s", role="admin")]
    assert visible_keys(keys, "viewer") == ["p"] and visible_keys(keys, "analyst") == ["p", "t"]


def test_filter_parsing_reads_both_url_forms_and_refuses_what_is_not_allowed() -> None:
    def parse(*pairs: tuple[str, str], **kw: str) -> object:
        return parse_filter(pairs, facets=FACETS, visible_clusters={"Request": {"r1": ["c1"]}},
                            metadata_keys=["product"], window_s=3600, time_from=kw.get("f"), time_to=kw.get("t"))

    flt = parse(("Concerning>", "4"), ("Language", "Spanish"), ("metadata.product", "chat"), ("limit", "5"))
    assert [c.kind for c in flt.conditions] == ["numeric", "value", "metadata"]
    assert (flt.conditions[0].low, flt.conditions[0].high) == (4, math.inf)
    assert parse(("Concerning<4", "")).conditions[0].high == 4  # percent-encoded name, no value
    assert parse(("Request", "r1")).members == {"r1": frozenset({"c1"})}
    t = parse(f="3601", t="7201").conditions[0]
    assert (t.low, t.high) == (3600, 10800)  # widened to whole trend windows
    for bad in [("Request", "secret text"), ("metadata.tenant", "x"), ("Concerning", "high"), ("Nope", "1")]:
        with pytest.raises(FilterError):
            parse(bad)
    with pytest.raises(FilterError):
        parse(("Language", "a"), ("Concerning>", "1"), ("Concerning<", "4"), ("metadata.product", "x"), f="0")


def test_a_slice_is_shown_only_when_it_and_its_remainders_meet_the_minimums() -> None:
    users = np.array([0, 1, 2, 3, 4, 5, 0])
    members = np.arange(7)
    everything = np.ones(7, dtype=bool)
    big = np.array([1, 1, 1, 1, 0, 0, 0], dtype=bool)  # remainder: three conversations of three users
    assert shown_slice(members, big, [everything], users, MIN) is not None
    most = np.array([1, 1, 1, 1, 1, 1, 0], dtype=bool)  # remainder: one conversation, one user
    assert shown_slice(members, most, [everything], users, MIN) is None
    assert shown_slice(members, everything, [everything], users, MIN) is not None  # nothing removed
    few = np.array([1, 0, 0, 0, 0, 0, 1], dtype=bool)  # two conversations of one user
    assert shown_slice(members, few, [everything], users, MIN) is None
    # A range filter's cells (one value each): a lone conversation in one of them withholds the slice, since
    # "score >= 2" minus "score >= 3" would isolate it.
    lone, rest = np.array([1, 0, 0, 0, 0, 0, 0], dtype=bool), np.array([0, 1, 1, 1, 1, 1, 1], dtype=bool)
    assert shown_slice(members, everything, [everything], users, MIN, [lone, rest]) is None
    assert shown_slice(members, everything, [everything], users, MIN, [big, ~big]) is not None


def test_buckets_under_the_minimums_merge_and_never_give_one_away() -> None:
    users = np.arange(12)
    labels = ["en"] * 7 + ["es"] * 3 + ["fr"] * 2
    assert shown_buckets(labels, users, MIN) == ({"en": 7}, 5)  # "fr" alone would be 2: "es" joins it
    assert shown_buckets(["en"] * 10 + ["fr"] * 2, users, MIN) == ({}, 12)  # two values: all "other", no split
    assert shown_buckets(["en"] * 6 + ["es"] * 6, users, MIN) == ({"en": 6, "es": 6}, 0)


def test_map_places_every_node_and_keeps_siblings_together() -> None:
    result = make_site_fixture().result
    h = result.hierarchies[REQUEST]
    rng = np.random.default_rng(0)
    layout = cluster_map(h, {n.id: rng.normal(size=32) for n in h.leaves()}, method="tsne", seed=0)
    assert layout.method == "tsne" and set(layout.positions) == set(h.nodes)
    xy = {k: np.array(v) for k, v in layout.positions.items()}
    assert all(0 <= c <= 1 for p in xy.values() for c in p)
    roots = h.root_ids
    within = np.mean([np.linalg.norm(xy[leaf.id] - xy[r]) for r in roots for leaf in h.leaves()
                      if leaf.id.startswith(r + "-")])
    between = np.mean([np.linalg.norm(xy[a] - xy[b]) for a in roots for b in roots if a < b])
    assert within < between  # random centroids, yet each top-level group is one region of the map
    assert cluster_map(h, {}, method="tsne", seed=0).positions == {}


def test_a_users_deletion_removes_their_conversations_from_the_map_sample() -> None:
    from clio_stream.domain.clusters import ClusterMap
    from clio_stream.privacy.scrub import UserMatch, scrub_result

    result = make_site_fixture().result
    mine = [c.id for c in result.conversations if c.user_id == "user-03"]
    result.maps[REQUEST] = ClusterMap(method="pca", points=[(c.id, 0.5, 0.5) for c in result.conversations])
    scrub_result(result, UserMatch.for_user("user-03", "key"), min_conversations=3, min_users=2)
    left = {p[0] for p in result.maps[REQUEST].points}
    assert mine and not left & set(mine) and len(left) == len(result.conversations)


def test_many_base_clusters_are_laid_out_around_their_parents(monkeypatch: pytest.MonkeyPatch) -> None:
    import clio_stream.views.layout as layout_module

    monkeypatch.setattr(layout_module, "MAX_TSNE_POINTS", 6)  # the fixture's 13 leaves count as "many"
    result = make_site_fixture().result
    h = result.hierarchies[REQUEST]
    rng = np.random.default_rng(1)
    layout = cluster_map(h, {n.id: rng.normal(size=32) for n in h.leaves()}, method="tsne", seed=0)
    xy = {k: np.array(v) for k, v in layout.positions.items()}
    assert set(xy) == set(h.nodes) and all(0 <= c <= 1 for p in xy.values() for c in p)
    for parent in (n for n in h.nodes.values() if n.level == 1):  # every leaf sits nearer its parent than others
        for leaf in parent.children:
            others = [np.linalg.norm(xy[leaf] - xy[p.id]) for p in h.nodes.values() if p.level == 1 and p.id != parent.id]
            assert np.linalg.norm(xy[leaf] - xy[parent.id]) < min(others)
