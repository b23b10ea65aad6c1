"""Online k-means: river equivalence, the mean rule, outliers, state and shared deltas."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from clio_stream import online
from clio_stream.domain.vectors import normalise_rows
from clio_stream.online import (
    DEFAULT_OUTLIER_SIMILARITY,
    CentroidDeltas,
    DeltaRejected,
    OffsetRanges,
    OnlineKMeans,
    bench,
    group_sums,
)


def blobs(seed: int, k: int = 4, dim: int = 8, per: int = 30, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around ``k`` random directions: (points, labels, true centres), shuffled."""
    rng = np.random.default_rng(seed)
    centres = normalise_rows(rng.standard_normal((k, dim)))
    labels = np.repeat(np.arange(k), per)
    x = normalise_rows(centres[labels] + spread * rng.standard_normal((k * per, dim)))
    order = rng.permutation(len(labels))
    return x[order], labels[order], centres


def as_dict(row: np.ndarray) -> dict[int, float]:
    return {i: float(v) for i, v in enumerate(row)}


# --------------------------------------------------------------------------- river


def test_river_rule_matches_river_learn_one_and_predict_one() -> None:
    pytest.importorskip("river")
    x, _, centres = blobs(1, k=5, dim=12, per=40)
    rng = np.random.default_rng(2)
    start = normalise_rows(centres + 0.3 * rng.standard_normal(centres.shape))
    ours = OnlineKMeans(start, rule="river", halflife=0.3)
    km = ours.to_river()
    for row in x:
        r_label = km.learn_predict_one(as_dict(row))
        assert ours.learn_predict_one(row) == r_label
    river_centres = np.array([[km.centers[i][j] for j in range(12)] for i in range(5)])
    np.testing.assert_allclose(ours.centroids, river_centres, atol=1e-5)
    # predict_one agrees too, on fresh points, and learn_one keeps river's protocol (returns None).
    probe, _, _ = blobs(3, k=5, dim=12, per=5)
    for row in probe:
        assert ours.predict_one(row) == km.predict_one(as_dict(row))
        assert ours.predict_one(as_dict(row)) == km.predict_one(as_dict(row))
    assert ours.learn_one(probe[0]) is None


def test_river_learn_one_path_with_plain_learn_one() -> None:
    """river's ``learn_one`` then ``predict_one`` (the documented usage) gives the same labels."""
    pytest.importorskip("river")
    x, _, centres = blobs(4, k=3, dim=6, per=30)
    ours = OnlineKMeans(centres, rule="river", halflife=0.5)
    km = ours.to_river()
    for row in x:
        km.learn_one(as_dict(row))
        ours.learn_one(row)
        assert ours.predict_one(row) == km.predict_one(as_dict(row))
    river_centres = np.array([[km.centers[i][j] for j in range(6)] for i in range(3)])
    np.testing.assert_allclose(ours.centroids, river_centres, atol=1e-5)


def test_river_round_trip_and_pickle() -> None:
    pytest.importorskip("river")
    _, _, centres = blobs(5, k=4, dim=8)
    ours = OnlineKMeans(centres, rule="river", halflife=0.2)
    km = pickle.loads(pickle.dumps(ours.to_river(seed=7)))
    back = OnlineKMeans.from_river(km)
    np.testing.assert_allclose(back.centroids, ours.centroids, atol=1e-7)
    assert back.halflife == pytest.approx(0.2)
    assert back.rule == "river" and back.metric == "euclidean"


def test_river_learn_many_equals_sequential_updates_for_its_labels() -> None:
    """Chunked learning moves each centre exactly as feeding its points one by one would."""
    x, _, centres = blobs(6, k=4, dim=8, per=25)
    batch = OnlineKMeans(centres, rule="river", halflife=0.25, batch_size=64)
    labels = batch.learn_many(x[:64])
    seq = centres.astype(np.float64).copy()
    for row, lab in zip(x[:64], labels):
        seq[lab] += 0.25 * (row - seq[lab])
    np.testing.assert_allclose(batch.centroids, seq, atol=1e-5)
    # batch_size=1 is strictly sequential: identical to learn_one.
    one = OnlineKMeans(centres, rule="river", halflife=0.25, batch_size=1)
    ref = OnlineKMeans(centres, rule="river", halflife=0.25)
    labels_one = one.learn_many(x)
    labels_ref = np.array([ref.learn_predict_one(row) for row in x])
    np.testing.assert_array_equal(labels_one, labels_ref)
    np.testing.assert_allclose(one.centroids, ref.centroids, atol=1e-5)


# --------------------------------------------------------------------------- mean rule


def test_mean_rule_keeps_exact_running_mean() -> None:
    x, labels, centres = blobs(7, k=3, dim=8, per=40)
    warm, new = x[:60], x[60:]
    model = OnlineKMeans.from_batch(warm, labels[:60])
    assert model.rule == "mean" and model.metric == "cosine"
    got = model.learn_many(new)
    members = {j: [warm[labels[:60] == j]] for j in range(3)}
    for j in range(3):
        members[j].append(new[got == j])
        allm = np.concatenate(members[j])
        np.testing.assert_allclose(model.centroids[j], allm.mean(axis=0), atol=1e-5)
        assert model.counts[j] == len(allm)
    # Cluster ids are the warm-start labels, and the assignments found the true blobs.
    assert np.mean(got == labels[60:]) > 0.95


def test_mean_rule_learn_one_matches_learn_many() -> None:
    x, labels, _ = blobs(8, k=3, dim=8, per=30)
    a = OnlineKMeans.from_batch(x[:30], labels[:30], percentile=5.0)
    b = a.copy()
    for row in x[30:]:
        a.learn_one(row)
    b.batch_size = 1
    b.learn_many(x[30:])
    np.testing.assert_allclose(a.centroids, b.centroids, atol=1e-5)
    np.testing.assert_array_equal(a.counts, b.counts)


def test_one_point_barely_moves_a_big_cluster_under_mean_rule() -> None:
    """Why the mean rule is the default: a fixed halflife lets one point drag a stable centre."""
    dim = 8
    centre = np.zeros((2, dim), np.float32)
    centre[0, 0] = 1.0
    centre[1, 1] = 1.0
    stray = normalise_rows(np.array([[1.0, 0.0, 1.0, 0, 0, 0, 0, 0]], np.float32))[0]
    mean = OnlineKMeans(centre, counts=[10_000, 10_000])
    river = OnlineKMeans(centre, counts=[10_000, 10_000], rule="river", halflife=0.5)
    mean.learn_one(stray)
    river.learn_one(stray)
    assert np.linalg.norm(mean.centroids[0] - centre[0]) < 1e-3
    assert np.linalg.norm(river.centroids[0] - centre[0]) > 0.3


def test_warm_start_from_known_centroids() -> None:
    x, labels, centres = blobs(9, k=4, dim=8, per=20)
    model = OnlineKMeans(centres, version=3, facet="topic")
    np.testing.assert_array_equal(model.predict_many(x), labels)
    assert model.version == 3 and model.facet == "topic"
    # A known centroid stands in for a cluster that has no members in the warm-start data.
    keep = labels != 2
    warm = OnlineKMeans.from_batch(x[keep], labels[keep], centroids=centres, version=4)
    assert warm.counts[2] == 0
    np.testing.assert_allclose(warm.centroids[2], centres[2], atol=1e-7)
    assert warm.predict_one(centres[2]) == 2
    with pytest.raises(ValueError, match="no members"):
        OnlineKMeans.from_batch(x[keep], np.full(int(keep.sum()), 3))


def test_inputs_are_normalised_and_dimension_checked() -> None:
    _, _, centres = blobs(10, k=2, dim=4)
    model = OnlineKMeans(centres)
    a = model.assign_one(centres[0] * 5.0)
    assert a.cluster == 0 and a.similarity == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="dimension"):
        model.predict_one(np.ones(5))


# --------------------------------------------------------------------------- outliers


def test_outlier_threshold_from_warm_start_percentile() -> None:
    x, labels, centres = blobs(11, k=4, dim=16, per=50)
    model = OnlineKMeans.from_batch(x, labels, percentile=1.0)
    own = OnlineKMeans(model.centroids).unit_centroids[labels]
    sims = np.einsum("ij,ij->i", x, own)
    assert model.outlier_similarity == pytest.approx(np.percentile(sims, 1.0), abs=1e-5)
    assert model.outlier_distance == pytest.approx(1.0 - np.percentile(sims, 1.0), abs=1e-5)
    assert model.outlier_source == "p1"
    # About 1% of the warm-start points fall below the threshold.
    assert np.mean(model.assign_many(x).outliers) == pytest.approx(0.01, abs=0.01)


def test_outlier_fallback_with_little_data_and_manual_override() -> None:
    x, labels, _ = blobs(12, k=2, dim=8, per=5)
    model = OnlineKMeans.from_batch(x, labels)
    assert model.outlier_similarity == pytest.approx(DEFAULT_OUTLIER_SIMILARITY)
    assert model.outlier_source == "default"
    manual = OnlineKMeans.from_batch(x, labels, outlier_distance=0.1)
    assert manual.outlier_distance == 0.1 and manual.outlier_source == "manual"


def test_outliers_flagged_and_running_rate() -> None:
    dim = 8
    centres = np.eye(2, dim, dtype=np.float32)
    model = OnlineKMeans(centres, outlier_distance=0.5, rate_window=10)
    near = model.assign_one(normalise_rows(np.array([[1.0, 0.1, 0, 0, 0, 0, 0, 0]]))[0])
    far = model.assign_one(np.eye(1, dim, 5, dtype=np.float32)[0])
    assert not near.is_outlier and near.cluster == 0
    assert far.is_outlier and far.similarity == pytest.approx(0.0, abs=1e-6)
    assert model.outlier_rate == pytest.approx(0.5)
    # The window forgets: ten inliers push the outlier out.
    model.assign_many(np.tile(centres[1], (10, 1)))
    assert model.outlier_rate == 0.0
    assert model.local_assigned == 12 and model.local_outliers == 1
    # Learning counts into the persisted totals; assigning alone does not.
    assert model.learned == 0
    model.learn_many(np.stack([centres[0], np.eye(1, dim, 6, dtype=np.float32)[0]]))
    assert model.learned == 2 and model.outlier_rate_total == pytest.approx(0.5)
    model.reset_outlier_rate()
    assert model.outlier_rate == 0.0 and model.local_assigned == 0


def test_rate_window_wraps_with_large_batches() -> None:
    model = OnlineKMeans(np.eye(2, 4, dtype=np.float32), outlier_distance=0.5, rate_window=4)
    far = np.eye(1, 4, 3, dtype=np.float32)
    model.assign_many(np.tile(far, (3, 1)))
    model.assign_many(np.tile(np.eye(1, 4, 0, dtype=np.float32), (3, 1)))
    assert model.outlier_rate == pytest.approx(1 / 4)
    model.assign_many(np.tile(far, (9, 1)))
    assert model.outlier_rate == 1.0


# --------------------------------------------------------------------------- state


@pytest.mark.parametrize("encoding", ["base64", "list"])
def test_state_round_trip_through_json(encoding: str) -> None:
    x, labels, _ = blobs(13, k=3, dim=8, per=30)
    model = OnlineKMeans.from_batch(x[:60], labels[:60], version=5, facet="request")
    model.learn_many(x[60:])
    (deltas,) = _deltas(model, x[:10], np.arange(10), partition=0)
    assert model.apply_deltas(deltas) == 10
    doc = json.loads(json.dumps(model.to_state(encoding=encoding)))
    back = OnlineKMeans.from_state(doc)
    np.testing.assert_array_equal(back.centroids, model.centroids)
    np.testing.assert_array_equal(back.counts, model.counts)
    assert (back.version, back.facet, back.rule, back.metric) == (5, "request", "mean", "cosine")
    assert back.outlier_distance == model.outlier_distance
    assert back.outlier_source == model.outlier_source
    assert (back.learned, back.learned_outliers, back.updates) == (model.learned, model.learned_outliers, 1)
    assert back.has_applied("t", 0, 9) and not back.has_applied("t", 0, 10) and not back.has_applied("t", 1, 0)
    assert back.apply_deltas(deltas) == 0
    np.testing.assert_array_equal(back.predict_many(x), model.predict_many(x))
    with pytest.raises(ValueError, match="format"):
        OnlineKMeans.from_state({**doc, "format": "other"})


def test_state_of_river_rule_round_trips() -> None:
    _, _, centres = blobs(14, k=3, dim=8)
    model = OnlineKMeans(centres, rule="river", halflife=0.1)
    back = OnlineKMeans.from_state(model.to_state())
    assert (back.rule, back.halflife, back.metric) == ("river", 0.1, "euclidean")


# --------------------------------------------------------------------------- deltas


def _deltas(model: OnlineKMeans, x: np.ndarray, offsets: np.ndarray, *, partition: int,
            first: int | None = None, last: int | None = None, labels: np.ndarray | None = None,
            topic: str = "t") -> list[CentroidDeltas]:
    """What a worker ships for records at ``offsets`` of one partition, assigned with ``model`` (or ``labels``)."""
    got = model.assign_many(x)
    offsets = np.asarray(offsets)
    return CentroidDeltas.for_records(
        model.facet or "request", model.version, topic, partition,
        int(offsets.min()) if first is None else first, int(offsets.max()) if last is None else last,
        offsets, got.labels if labels is None else labels, x, got.outliers)


def test_delta_merge_is_order_independent_and_idempotent() -> None:
    x, labels, _ = blobs(15, k=4, dim=16, per=60)
    base = OnlineKMeans.from_batch(x[:80], labels[:80], version=2)
    # Three workers assign against the same shared state and ship deltas (one partition each).
    parts = np.array_split(x[80:], 3)
    deltas = [d for i, part in enumerate(parts)
              for d in _deltas(base.copy(), part, i * 100 + np.arange(len(part)), partition=i)]
    # Through JSON, as they would travel.
    deltas = [CentroidDeltas.from_dict(json.loads(json.dumps(d.to_dict()))) for d in deltas]
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    results = []
    for order in orders:
        state = base.copy()
        for i in order:
            assert state.apply_deltas(deltas[i]) == len(parts[i])
        # Redelivery: the same deltas again change nothing.
        before = state.centroids.copy()
        for i in order:
            assert state.apply_deltas(deltas[i]) == 0
        np.testing.assert_array_equal(state.centroids, before)
        results.append(state)
    for other in results[1:]:
        np.testing.assert_allclose(other.centroids, results[0].centroids, atol=1e-6)
        np.testing.assert_array_equal(other.counts, results[0].counts)
        assert other.learned == results[0].learned == len(x) - 80
    # The merged state is the exact mean of everything assigned to each cluster.
    all_labels = np.concatenate([labels[:80], base.predict_many(x[80:])])
    for j in range(4):
        np.testing.assert_allclose(results[0].centroids[j], x[all_labels == j].mean(axis=0), atol=1e-5)
    assert results[0].updates == 3


def test_redelivery_over_a_different_range_applies_each_record_once() -> None:
    """[0..9] applied, then redeliveries [5..14], [3..6] and [0..14] (a failed commit, a rebalance):
    the centroids equal a from-scratch replay of records 0..14, each once."""
    x, labels, _ = blobs(21, k=4, dim=16, per=40)
    base = OnlineKMeans.from_batch(x[:100], labels[:100], version=3, facet="request")
    stream = x[100:115]
    assigned = base.predict_many(stream)  # a record's assignment, the same in every delivery
    state = base.copy()
    deliveries = [(0, 9), (5, 14), (3, 6), (0, 14), (5, 14)]
    added = []
    for lo, hi in deliveries:
        sel = np.arange(lo, hi + 1)
        for d in _deltas(base, stream[sel], sel, partition=2, labels=assigned[sel]):
            wire = CentroidDeltas.from_dict(json.loads(json.dumps(d.to_dict())))
            added.append(state.apply_deltas(wire))
    assert added == [10, 5, 0, 0, 0]
    replay = OnlineKMeans.from_batch(np.concatenate([x[:100], stream]), np.concatenate([labels[:100], assigned]),
                                     version=3, outlier_distance=base.outlier_distance)
    np.testing.assert_array_equal(state.counts, replay.counts)
    np.testing.assert_allclose(state.centroids, replay.centroids, atol=1e-6)
    assert state.learned == 15 and all(state.has_applied("t", 2, o) for o in range(15))
    # The same offsets of another partition or another topic are other records.
    other = _deltas(base, stream[:2], np.arange(2), partition=3)[0]
    assert state.apply_deltas(other) == 2


def test_records_without_a_value_inside_the_range_are_covered() -> None:
    """Offsets of a polled range that contributed nothing (no value, dead letter) are not counted later either."""
    x, labels, _ = blobs(22, k=3, dim=8, per=20)
    state = OnlineKMeans.from_batch(x, labels, version=1, facet="request")
    (d,) = _deltas(state, x[:3], np.array([10, 12, 14]), partition=0, first=10, last=15)
    assert state.apply_deltas(d) == 3
    assert state.has_applied("t", 0, 11) and state.has_applied("t", 0, 15) and not state.has_applied("t", 0, 16)
    (again,) = _deltas(state, x[3:6], np.array([11, 15, 16]), partition=0)
    assert state.apply_deltas(again) == 1  # only offset 16 is new


def test_large_deltas_are_split_into_chunks_that_tile_the_range(monkeypatch) -> None:
    monkeypatch.setattr(online, "DELTA_CHUNK_BYTES", 1500)  # a few 16-d rows per message
    x, labels, _ = blobs(23, k=3, dim=16, per=20)
    model = OnlineKMeans.from_batch(x, labels, version=1, facet="request")
    offsets = np.arange(100, 160, 2)
    chunks = _deltas(model, x[:30], offsets, partition=1, first=95, last=170)
    assert len(chunks) > 3 and sum(c.n for c in chunks) == 30
    assert chunks[0].first == 95 and chunks[-1].last == 170
    assert all(a.last + 1 == b.first for a, b in zip(chunks, chunks[1:]))
    assert all(len(json.dumps(c.to_dict())) < 1500 for c in chunks)
    state = model.copy()
    assert sum(state.apply_deltas(c) for c in reversed(chunks)) == 30


def test_stale_version_and_wrong_shapes_are_rejected() -> None:
    x, labels, _ = blobs(16, k=2, dim=8, per=20)
    old = OnlineKMeans.from_batch(x, labels, version=1)
    (deltas,) = _deltas(old, x[:5], np.arange(5), partition=0)
    new = OnlineKMeans.from_batch(x, labels, version=2)
    before = new.centroids.copy()
    assert new.apply_deltas(deltas) == 0
    np.testing.assert_array_equal(new.centroids, before)
    assert not new.has_applied("t", 0, 0)  # a stale delta marks nothing
    (bad,) = _deltas(new, x[:1], np.arange(1), partition=0, labels=np.array([7]))
    with pytest.raises(DeltaRejected, match="outside"):
        new.apply_deltas(bad)
    assert not new.has_applied("t", 0, 0)  # a rejected delta marks nothing either
    small = OnlineKMeans.from_batch(x[:, :4], labels, version=2)
    with pytest.raises(DeltaRejected, match="dimension"):
        small.apply_deltas(_deltas(new, x[:1], np.arange(1), partition=0)[0])
    named = OnlineKMeans.from_batch(x, labels, version=2, facet="other")
    with pytest.raises(DeltaRejected, match="facet"):
        named.apply_deltas(_deltas(new, x[:1], np.arange(1), partition=0)[0])
    river = OnlineKMeans(new.centroids, rule="river")
    with pytest.raises(ValueError, match="commute"):
        river.apply_deltas(deltas)


def test_offset_ranges_merge_and_stay_bounded_by_closing_old_gaps() -> None:
    r = OffsetRanges(max_ranges=3)
    for lo, hi in [(0, 9), (10, 19), (30, 39), (25, 27), (50, 50)]:
        r.add(lo, hi)
    # (0,19) merged; four ranges exceed 3, so the oldest gap 20..24 is closed: it reads as applied.
    assert r.to_list() == [[0, 27], [30, 39], [50, 50]]
    np.testing.assert_array_equal(r.contains(np.array([-1, 0, 22, 28, 35, 40, 50, 51])),
                                  [False, True, True, False, True, False, True, False])


def test_group_sums() -> None:
    labels = np.array([2, 0, 2, 2])
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    clusters, sums, counts = group_sums(labels, x)
    np.testing.assert_array_equal(clusters, [0, 2])
    np.testing.assert_allclose(sums, [[2, 3], [10, 13]])
    np.testing.assert_array_equal(counts, [1, 3])


def test_bench_smoke() -> None:
    pytest.importorskip("river")
    out = bench(k=8, dim=16, n=300, n_one=20, river_ks=(4,), river_points={4: 3})
    assert set(out) == {
        "numpy learn_many k=8 d=16",
        "numpy predict_many k=8 d=16",
        "numpy learn_one k=8 d=16",
        "river KMeans.learn_one k=4 d=16",
    }
    assert all(v > 0 for v in out.values())
