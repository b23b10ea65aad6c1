"""Online k-means: river equivalence, the mean rule, outliers, state and shared deltas."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from benchmarks.online_kmeans import bench
from clio_stream.domain.vectors import normalise_rows
from clio_stream.online import deltas as deltas_module
from clio_stream.online.arrays import decode_array, encode_array
from clio_stream.online.deltas import CentroidDeltas, DeltaRejected, OffsetRanges
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.online.outliers import DEFAULT_OUTLIER_SIMILARITY, OutlierThreshold
from clio_stream.online.river_compat import from_river, to_river
from clio_stream.online.update_rules import group_sums, halflife_step, mean_step


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


def learn_predict(model: OnlineKMeans, row: np.ndarray) -> int:
    """River's ``learn_predict_one`` through the protocol: the label before learning is the one learned."""
    label = model.predict_one(row)
    model.learn_one(row)
    return label


def copy_of(model: OnlineKMeans) -> OnlineKMeans:
    """An independent copy through the persisted state (what another replica loads)."""
    return OnlineKMeans.from_state(model.to_state())


def applied_ranges(model: OnlineKMeans) -> dict[tuple[str, int], list[list[int]]]:
    """Which source offsets the model counts as merged, per (topic, partition), as its state document says."""
    return {(e["topic"], e["partition"]): e["ranges"] for e in model.to_state()["applied"]}


# --------------------------------------------------------------------------- river


def test_river_rule_matches_river_learn_one_and_predict_one() -> None:
    pytest.importorskip("river")
    x, _, centres = blobs(1, k=5, dim=12, per=40)
    rng = np.random.default_rng(2)
    start = normalise_rows(centres + 0.3 * rng.standard_normal(centres.shape))
    ours = OnlineKMeans(start, rule="river", halflife=0.3)
    km = to_river(ours)
    for row in x:
        r_label = km.learn_predict_one(as_dict(row))
        assert learn_predict(ours, row) == r_label
    river_centres = np.array([[km.centers[i][j] for j in range(12)] for i in range(5)])
    np.testing.assert_allclose(ours.centroids, river_centres, atol=1e-5)
    # predict_one agrees too, on fresh points, and learn_one keeps river's protocol (returns None).
    probe, _, _ = blobs(3, k=5, dim=12, per=5)
    for row in probe:
        assert ours.predict_one(row) == km.predict_one(as_dict(row))
        assert ours.predict_one(as_dict(row)) == km.predict_one(as_dict(row))
    assert ours.learn_one(probe[0]) is None


def test_river_round_trip_and_pickle() -> None:
    pytest.importorskip("river")
    _, _, centres = blobs(5, k=4, dim=8)
    ours = OnlineKMeans(centres, rule="river", halflife=0.2)
    km = pickle.loads(pickle.dumps(to_river(ours, seed=7)))
    back = from_river(km)
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
    labels_ref = np.array([learn_predict(ref, row) for row in x])
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
    b = copy_of(a)
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
    a = model.assign_many(centres[0] * 5.0)[0]
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
    assert model.outlier.distance == pytest.approx(1.0 - np.percentile(sims, 1.0), abs=1e-5)
    assert model.outlier.source == "p1"
    # About 1% of the warm-start points fall below the threshold.
    assert np.mean(model.assign_many(x).outliers) == pytest.approx(0.01, abs=0.01)


def test_outlier_fallback_with_little_data_and_manual_override() -> None:
    x, labels, _ = blobs(12, k=2, dim=8, per=5)
    model = OnlineKMeans.from_batch(x, labels)
    assert model.outlier_similarity == pytest.approx(DEFAULT_OUTLIER_SIMILARITY)
    assert model.outlier.source == "default"
    manual = OnlineKMeans.from_batch(x, labels, outlier_distance=0.1)
    assert manual.outlier == OutlierThreshold(0.1, "manual")


def test_outliers_flagged_and_running_rate() -> None:
    dim = 8
    centres = np.eye(2, dim, dtype=np.float32)
    model = OnlineKMeans(centres, outlier_distance=0.5, rate_window=10)
    near = model.assign_many(normalise_rows(np.array([[1.0, 0.1, 0, 0, 0, 0, 0, 0]])))[0]
    far = model.assign_many(np.eye(1, dim, 5, dtype=np.float32))[0]
    assert not near.is_outlier and near.cluster == 0
    assert far.is_outlier and far.similarity == pytest.approx(0.0, abs=1e-6)
    assert model.outlier_rate == pytest.approx(0.5)
    # The window forgets: ten inliers push the outlier out.
    model.assign_many(np.tile(centres[1], (10, 1)))
    assert model.outlier_rate == 0.0
    # Learning counts into the persisted totals; assigning alone does not.
    assert model.learned == 0
    model.learn_many(np.stack([centres[0], np.eye(1, dim, 6, dtype=np.float32)[0]]))
    assert model.learned == 2 and model.learned_outliers == 1
    assert model.outlier_rate == pytest.approx(1 / 10)  # the learned outlier entered the window too


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
    assert back.outlier == model.outlier
    assert (back.learned, back.learned_outliers, back.updates) == (model.learned, model.learned_outliers, 1)
    assert applied_ranges(back) == {("t", 0): [[0, 9]]}
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
        offsets, got.labels if labels is None else labels, got.rows, got.outliers)


def test_delta_merge_is_order_independent_and_idempotent() -> None:
    x, labels, _ = blobs(15, k=4, dim=16, per=60)
    base = OnlineKMeans.from_batch(x[:80], labels[:80], version=2)
    # Three workers assign against the same shared state and ship deltas (one partition each).
    parts = np.array_split(x[80:], 3)
    deltas = [d for i, part in enumerate(parts)
              for d in _deltas(copy_of(base), part, i * 100 + np.arange(len(part)), partition=i)]
    # Through JSON, as they would travel.
    deltas = [CentroidDeltas.from_dict(json.loads(json.dumps(d.to_dict()))) for d in deltas]
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    results = []
    for order in orders:
        state = copy_of(base)
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
    state = copy_of(base)
    deliveries = [(0, 9), (5, 14), (3, 6), (0, 14), (5, 14)]
    added = []
    for lo, hi in deliveries:
        sel = np.arange(lo, hi + 1)
        for d in _deltas(base, stream[sel], sel, partition=2, labels=assigned[sel]):
            wire = CentroidDeltas.from_dict(json.loads(json.dumps(d.to_dict())))
            added.append(state.apply_deltas(wire))
    assert added == [10, 5, 0, 0, 0]
    replay = OnlineKMeans.from_batch(np.concatenate([x[:100], stream]), np.concatenate([labels[:100], assigned]),
                                     version=3, outlier_distance=base.outlier.distance)
    np.testing.assert_array_equal(state.counts, replay.counts)
    np.testing.assert_allclose(state.centroids, replay.centroids, atol=1e-6)
    assert state.learned == 15 and applied_ranges(state) == {("t", 2): [[0, 14]]}
    # The same offsets of another partition or another topic are other records.
    other = _deltas(base, stream[:2], np.arange(2), partition=3)[0]
    assert state.apply_deltas(other) == 2


def test_records_without_a_value_inside_the_range_are_covered() -> None:
    """Offsets of a polled range that contributed nothing (no value, dead letter) are not counted later either."""
    x, labels, _ = blobs(22, k=3, dim=8, per=20)
    state = OnlineKMeans.from_batch(x, labels, version=1, facet="request")
    (d,) = _deltas(state, x[:3], np.array([10, 12, 14]), partition=0, first=10, last=15)
    assert state.apply_deltas(d) == 3
    assert applied_ranges(state) == {("t", 0): [[10, 15]]}
    (again,) = _deltas(state, x[3:6], np.array([11, 15, 16]), partition=0)
    assert state.apply_deltas(again) == 1  # only offset 16 is new


def test_large_deltas_are_split_into_chunks_that_tile_the_range(monkeypatch) -> None:
    monkeypatch.setattr(deltas_module, "DELTA_CHUNK_BYTES", 1500)  # a few 16-d rows per message
    x, labels, _ = blobs(23, k=3, dim=16, per=20)
    model = OnlineKMeans.from_batch(x, labels, version=1, facet="request")
    offsets = np.arange(100, 160, 2)
    chunks = _deltas(model, x[:30], offsets, partition=1, first=95, last=170)
    assert len(chunks) > 3 and sum(c.n for c in chunks) == 30
    assert chunks[0].first == 95 and chunks[-1].last == 170
    assert all(a.last + 1 == b.first for a, b in zip(chunks, chunks[1:]))
    assert all(len(json.dumps(c.to_dict())) < 1500 for c in chunks)
    state = copy_of(model)
    assert sum(state.apply_deltas(c) for c in reversed(chunks)) == 30


def test_stale_version_and_wrong_shapes_are_rejected() -> None:
    x, labels, _ = blobs(16, k=2, dim=8, per=20)
    old = OnlineKMeans.from_batch(x, labels, version=1)
    (deltas,) = _deltas(old, x[:5], np.arange(5), partition=0)
    new = OnlineKMeans.from_batch(x, labels, version=2)
    before = new.centroids.copy()
    assert new.apply_deltas(deltas) == 0
    np.testing.assert_array_equal(new.centroids, before)
    assert applied_ranges(new) == {}  # a stale delta marks nothing
    (bad,) = _deltas(new, x[:1], np.arange(1), partition=0, labels=np.array([7]))
    with pytest.raises(DeltaRejected, match="outside"):
        new.apply_deltas(bad)
    assert applied_ranges(new) == {}  # a rejected delta marks nothing either
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
        "numpy learn_many k=8 d=16 (chunks of 256)",
        "numpy learn_many k=8 d=16 (whole batch, one product)",
        "worker path k=8 d=16, batches of 64 (assign + delta merge)",
        "worker path k=8 d=16, batches of 1024 (assign + delta merge)",
        "numpy predict_many k=8 d=16",
        "numpy learn_one k=8 d=16",
        "river KMeans.learn_one k=4 d=16",
    }
    assert all(v > 0 for v in out.values())


def test_update_rules_in_one_batch_equal_the_rows_one_by_one() -> None:
    """The batched mean and halflife steps move each centre exactly as single-row steps in order would."""
    rng = np.random.default_rng(30)
    x = normalise_rows(rng.standard_normal((12, 6))).astype(np.float32)
    labels = np.array([0, 2, 0, 0, 1, 2, 2, 0, 1, 1, 0, 2])
    start = normalise_rows(rng.standard_normal((3, 6))).astype(np.float32)
    for step in (mean_step, lambda c, n, lab, rows: halflife_step(c, n, lab, rows, 0.3)):
        batch_c, batch_n = start.copy(), np.array([4, 0, 2], np.int64)
        step(batch_c, batch_n, labels, x)
        one_c, one_n = start.copy(), np.array([4, 0, 2], np.int64)
        for lab, row in zip(labels, x):
            step(one_c, one_n, np.array([lab]), row[None, :])
        np.testing.assert_allclose(batch_c, one_c, atol=1e-6)
        np.testing.assert_array_equal(batch_n, one_n)
    # The mean step is the exact mean of the old members (count times centre) and the new rows.
    c, n = start.copy(), np.array([4, 0, 2], np.int64)
    mean_step(c, n, labels, x)
    np.testing.assert_allclose(c[0], (4 * start[0] + x[labels == 0].sum(axis=0)) / (4 + 5), atol=1e-6)
    np.testing.assert_allclose(c[1], x[labels == 1].mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "int64"])
def test_arrays_round_trip_through_json(dtype: str) -> None:
    a = np.arange(12).reshape(3, 4).astype(dtype) - 5
    doc = json.loads(json.dumps(encode_array(a, dtype)))
    assert doc["shape"] == [3, 4] and doc["dtype"] == dtype
    np.testing.assert_array_equal(decode_array(doc, dtype), a)
    np.testing.assert_array_equal(decode_array(a.tolist(), dtype), a)  # state written with encoding="list"


def test_river_style_contract() -> None:
    """The contract in one place: river's protocol on a toy stream, state round trip, idempotent deltas.

    River's ``learn_one`` then ``predict_one`` (its documented usage) gives the same labels and centres.
    """
    pytest.importorskip("river")
    x, labels, centres = blobs(4, k=3, dim=6, per=30)
    ours = OnlineKMeans(centres, rule="river", halflife=0.5)
    km = to_river(ours)
    for row in x:
        assert ours.learn_one(row) is None and km.learn_one(as_dict(row)) is None
        assert ours.predict_one(row) == km.predict_one(as_dict(row))
    river_centres = np.array([[km.centers[i][j] for j in range(6)] for i in range(3)])
    np.testing.assert_allclose(ours.centroids, river_centres, atol=1e-5)
    back = OnlineKMeans.from_state(json.loads(json.dumps(ours.to_state())))
    np.testing.assert_array_equal(back.centroids, ours.centroids)
    np.testing.assert_array_equal(back.predict_many(x), ours.predict_many(x))
    shared = OnlineKMeans.from_batch(x, labels, version=1, facet="request")
    (d,) = _deltas(shared, x[:7], np.arange(7), partition=0)
    assert shared.apply_deltas(d) == 7
    after = shared.centroids.copy()
    assert shared.apply_deltas(d) == 0
    np.testing.assert_array_equal(shared.centroids, after)
