"""Matching of a new clustering to the previous one (pure): pairs, lineage events, "barely changed"."""

import numpy as np
import pytest

from clio_stream.living.matching import (
    MatchThresholds,
    changed,
    jaccard,
    match_clusters,
    member_centroids,
    overlap_matrix,
    successor,
)
from clio_stream.settings import ClioSettings


def blobs(n_clusters: int = 5, per: int = 20, dim: int = 16, seed: int = 0):
    """Well separated clusters: centroids, member sets ``c<k>-<i>``, one vector per member."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    members = {f"old-{k}": {f"c{k}-{i}" for i in range(per)} for k in range(n_clusters)}
    return centres, members


def test_identical_clusterings_match_one_to_one():
    centres, members = blobs()
    new_members = {k: members[f"old-{k}"] for k in range(len(centres))}
    m = match_clusters(centres, members, centres, new_members)
    assert {old: new for old, (new, _) in m.pairs.items()} == {f"old-{k}": k for k in range(5)}
    assert all(score == pytest.approx(1.0) for _, score in m.pairs.values())
    assert m.events == [] and m.successors() == {}
    assert m.counts() == {"matched": 5, "dissolved": 0, "merged": 0, "split": 0, "new": 0}


def test_permuted_kmeans_indices_still_match():
    centres, members = blobs(n_clusters=8)
    perm = np.random.default_rng(3).permutation(8)  # new index j holds old cluster perm[j]
    new_centres = centres[perm]
    new_members = {j: members[f"old-{perm[j]}"] for j in range(8)}
    m = match_clusters(centres, members, new_centres, new_members)
    assert {old: new for old, (new, _) in m.pairs.items()} == {f"old-{perm[j]}": j for j in range(8)}


def test_members_decide_when_centroids_agree():
    """Two clusters with the same centroid: overlap decides which is which."""
    c = np.ones((2, 4))
    old = {"a": {"1", "2", "3"}, "b": {"4", "5", "6"}}
    new = {0: {"4", "5", "6"}, 1: {"1", "2", "3"}}
    m = match_clusters(c, old, c, new)
    assert m.new_to_old == {0: "b", 1: "a"}


def test_a_split_keeps_the_id_on_the_larger_part_and_reports_the_other():
    centres, members = blobs(n_clusters=3, per=20)
    a = sorted(members["old-0"])
    new_members = {0: set(a[:14]), 1: set(a[14:]), 2: members["old-1"], 3: members["old-2"]}
    new_centres = np.stack([centres[0], centres[0] * 0.9 + 0.1, centres[1], centres[2]])
    m = match_clusters(centres, members, new_centres, new_members)
    assert m.pairs["old-0"][0] == 0 and m.pairs["old-1"][0] == 2 and m.pairs["old-2"][0] == 3
    (event,) = m.events
    assert event.kind == "split" and event.old_id == "old-0" and event.new_key == 1 and event.share == 1.0
    assert m.successors() == {}  # nothing disappeared


def test_a_merge_gives_the_absorbed_cluster_a_successor():
    centres, members = blobs(n_clusters=4, per=20)
    merged = members["old-0"] | members["old-1"]
    new_members = {0: members["old-2"], 1: merged, 2: members["old-3"]}
    new_centres = np.stack([centres[2], (centres[0] + centres[1]) / 2, centres[3]])
    m = match_clusters(centres, members, new_centres, new_members)
    kept = [old for old in ("old-0", "old-1") if old in m.pairs]
    assert len(kept) == 1 and m.pairs[kept[0]][0] == 1
    gone = ({"old-0", "old-1"} - set(kept)).pop()
    (event,) = m.events
    assert event.kind == "merged" and event.old_id == gone and event.new_key == 1 and event.share == 1.0
    assert m.successors() == {gone: 1}


def test_an_absorbed_cluster_merges_into_its_largest_receiver():
    centres, members = blobs(n_clusters=3, per=10)
    a = sorted(members["old-0"])
    new_members = {0: members["old-1"] | set(a[:3]), 1: members["old-2"] | set(a[3:])}
    m = match_clusters(centres, members, centres[1:], new_members)
    (event,) = m.events
    assert event.kind == "merged" and event.old_id == "old-0" and event.new_key == 1
    assert event.share == pytest.approx(0.7)


def test_a_scattered_cluster_is_dissolved():
    centres, members = blobs(n_clusters=4, per=10)
    a = sorted(members["old-0"])
    new_members = {0: members["old-1"] | set(a[:3]), 1: members["old-2"] | set(a[3:7]),
                   2: members["old-3"] | set(a[7:])}
    m = match_clusters(centres, members, centres[1:], new_members)
    (event,) = m.events
    assert event.kind == "dissolved" and event.old_id == "old-0" and event.new_key == 1
    assert m.successors() == {"old-0": 1}


def test_no_match_below_min_similarity_and_vanished_members_fall_back_to_centroids():
    centres, members = blobs(n_clusters=2, per=5)
    other = {0: {"x1", "x2"}, 1: {"y1", "y2"}}  # no overlap at all
    m = match_clusters(centres, members, centres, other)
    assert m.pairs == {}  # centroids alone reach at most `weight` < min_similarity
    assert m.successors() == {"old-0": 0, "old-1": 1}  # nearest centroid stands in for members
    assert {e.kind for e in m.events} == {"dissolved", "new"}
    loose = match_clusters(centres, members, centres, other, min_similarity=0.3)
    assert loose.new_to_old == {0: "old-0", 1: "old-1"}


def test_new_members_outside_the_old_universe_do_not_lower_the_score():
    centres, members = blobs(n_clusters=2, per=10)
    grown = {0: members["old-0"] | {f"new-{i}" for i in range(10)}, 1: members["old-1"]}
    m = match_clusters(centres, members, centres, grown)
    assert m.jaccard[("old-0", 0)] == 1.0


def test_empty_sides():
    centres, members = blobs(n_clusters=2, per=3)
    assert match_clusters(np.zeros((0, 16)), {}, np.zeros((0, 16)), {}).pairs == {}
    gone = match_clusters(centres, members, np.zeros((0, 16)), {})
    assert [e.kind for e in gone.events] == ["dissolved", "dissolved"] and gone.successors() == {}
    born = match_clusters(np.zeros((0, 16)), {}, centres, {0: {"a"}, 1: {"b"}})
    assert [e.kind for e in born.events] == ["new", "new"]


def test_centroids_as_mappings_or_indexed_by_key():
    centres, members = blobs(n_clusters=3)
    new_members = {0: members["old-0"], 2: members["old-2"]}  # k-means cluster 1 came out empty
    by_index = match_clusters(centres, members, centres, new_members)
    by_map = match_clusters({f"old-{k}": centres[k] for k in range(3)}, members, {0: centres[0], 2: centres[2]},
                            new_members)
    assert by_index.new_to_old == by_map.new_to_old == {0: "old-0", 2: "old-2"}
    assert by_index.successors() == by_map.successors()


def test_changed_thresholds():
    t = MatchThresholds(keep_jaccard=0.8, keep_cosine=0.95)
    old = {str(i) for i in range(10)}
    assert not changed(old, old, 0.99, t)
    assert not changed(old, old - {"0"}, 0.99, t)  # Jaccard 0.9
    assert changed(old, old - {"0", "1", "2"}, 0.99, t)  # Jaccard 0.7
    assert changed(old, old, 0.90, t)  # moved
    grown = old | {f"n{i}" for i in range(10)}
    assert changed(old, grown, 0.99, t)  # plain Jaccard 0.5 ...
    assert not changed(old, grown, 0.99, t, known=old)  # ... but growth alone is no change
    assert changed(old, old, 0.96, MatchThresholds(keep_cosine=0.97))


def test_thresholds_from_settings_and_validation():
    t = MatchThresholds.from_settings(ClioSettings(match_min_similarity=0.6, keep_name_cosine=0.9))
    assert (t.min_similarity, t.keep_cosine, t.weight) == (0.6, 0.9, MatchThresholds().weight)
    assert MatchThresholds.from_settings(ClioSettings()) == MatchThresholds()  # the two sets of defaults agree
    with pytest.raises(ValueError):
        MatchThresholds(weight=1.5)


def test_helpers():
    assert jaccard(set(), set()) == 1.0 and jaccard({"a"}, {"b"}) == 0.0 and jaccard({"a", "b"}, {"a"}) == 0.5
    assert overlap_matrix([{"a", "b"}, {"c"}], [{"a"}, {"b", "c"}]).tolist() == [[1, 1], [0, 1]]
    x = np.eye(3, dtype=np.float32)
    cents = member_centroids({"p": ["a", "b"], "q": ["zz"]}, {"a": 0, "b": 1}, x)
    assert np.allclose(cents["p"], [2 ** -0.5, 2 ** -0.5, 0]) and not cents["q"].any()
    cands = {"p": ["a", "b"], "q": ["c"]}
    assert successor(["b", "c", "a"], cands) == "p"
    assert successor(["zz"], cands, centroid=np.array([0, 0, 1.0]),
                     candidate_centroids={"p": np.array([1.0, 0, 0]), "q": np.array([0, 0.1, 1.0])}) == "q"
    assert successor(["zz"], cands) is None
