"""Batched online k-means: deltas merged many at once, group sums and the scorer give the one-at-a-time results."""

from __future__ import annotations

import numpy as np
import pytest

from clio_stream.domain.vectors import normalise_rows
from clio_stream.online.assignment import Scorer
from clio_stream.online.deltas import CentroidDeltas, DeltaRejected
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.online.update_rules import group_sums, mean_step
from tests.unit.test_online import _deltas, applied_ranges, blobs, copy_of


def _row_by_row_sums(labels: np.ndarray, x: np.ndarray) -> dict[int, np.ndarray]:
    """Each group's float64 sum, adding its rows one by one (what the mean rule's exactness rests on)."""
    out: dict[int, np.ndarray] = {}
    for label, row in zip(labels.tolist(), x, strict=True):
        out[label] = out.get(label, np.zeros(x.shape[1])) + row.astype(np.float64)
    return out


@pytest.mark.parametrize("n_groups", [1000, 3])
def test_group_sums_are_the_exact_float64_sums(n_groups: int) -> None:
    rng = np.random.default_rng(n_groups)
    x = rng.standard_normal((300, 24), dtype=np.float32)
    labels = rng.integers(0, n_groups, 300)  # unsorted; ~one row per group at 1000, ~100 at 3
    clusters, sums, counts = group_sums(labels, x)
    expected = _row_by_row_sums(labels, x)
    assert clusters.tolist() == sorted(expected)
    assert sums.dtype == np.float64 and counts.tolist() == [int(np.sum(labels == c)) for c in clusters]
    for c, s in zip(clusters.tolist(), sums, strict=True):
        assert np.array_equal(s, expected[c]), c  # bit for bit, not merely close
    assert [a.shape for a in group_sums(np.zeros(0, np.int64), x[:0])] == [(0,), (0, 24), (0,)]


def _state(model: OnlineKMeans) -> tuple:
    return (model.centroids.copy(), model.counts.copy(), applied_ranges(model), model.learned,
            model.learned_outliers, model.updates)


def test_merging_many_deltas_at_once_equals_applying_them_one_by_one() -> None:
    x, labels, _ = blobs(21, k=5, dim=16, per=60)
    base = OnlineKMeans.from_batch(x[:100], labels[:100], version=3)
    parts = np.array_split(np.arange(100, len(x)), 3)
    batch = [d for i, idx in enumerate(parts) for d in _deltas(copy_of(base), x[idx], idx, partition=i)]
    # In the same batch: a redelivery of partition 0's records over a wider range (nothing new),
    # a delta from the previous clustering version, and a partly new one (offsets 500.. are new).
    old = copy_of(base)
    old.version = 2
    redelivered = _deltas(copy_of(base), x[parts[0]], parts[0], partition=0, first=0, last=400)[0]
    stale = _deltas(old, x[:5], np.arange(5), partition=7)[0]
    partly = _deltas(copy_of(base), x[:10], np.r_[parts[1][-5:], 500 + np.arange(5)], partition=1)[0]
    batch += [redelivered, stale, partly]

    together, one_by_one = copy_of(base), copy_of(base)
    added = together.merge_deltas(batch)
    assert added == [one_by_one.apply_deltas(d) for d in batch]
    assert added[-3:] == [0, 0, 5] and sum(added) == len(x) - 100 + 5
    a, b = _state(together), _state(one_by_one)
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert all(np.array_equal(u, v) for u, v in zip(a[1:], b[1:], strict=True))
    # Still the exact mean of every member, and a second merge of the same batch adds nothing.
    members = np.concatenate([labels[:100], base.predict_many(x[100:]), base.predict_many(x[5:10])])
    rows = np.concatenate([x, x[5:10]])
    for j in range(5):
        np.testing.assert_allclose(together.centroids[j], rows[members == j].mean(axis=0), atol=1e-5)
    before = _state(together)
    assert together.merge_deltas(batch) == [0] * len(batch)
    assert all(np.array_equal(u, v) for u, v in zip(_state(together), before, strict=True))


def test_a_bad_delta_rejects_the_whole_merge_with_the_state_untouched() -> None:
    x, labels, _ = blobs(22, k=3, dim=8, per=20)
    model = OnlineKMeans.from_batch(x, labels, version=1)
    good = _deltas(model, x[:4], np.arange(4), partition=0)[0]
    bad = _deltas(model, x[:2], np.array([10, 11]), partition=0, labels=np.array([0, 3]))[0]
    before = _state(model)
    with pytest.raises(DeltaRejected, match="outside"):
        model.merge_deltas([good, bad])
    assert all(np.array_equal(u, v) for u, v in zip(_state(model), before, strict=True))
    assert model.merge_deltas([good]) == [4]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_the_scorer_picks_the_brute_force_nearest(metric: str) -> None:
    # k == d, so scoring against the centroids' transpose by mistake would still run, and pick wrongly.
    rng = np.random.default_rng(5)
    c = rng.standard_normal((12, 12)).astype(np.float32) * rng.uniform(0.2, 1.0, (12, 1)).astype(np.float32)
    x = normalise_rows(rng.standard_normal((200, 12)))
    labels, sims = Scorer.of(c, metric).nearest(x)
    unit = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = x.astype(np.float64) @ unit.T.astype(np.float64)
    if metric == "cosine":
        expected = np.argmax(cos, axis=1)
    else:
        expected = np.argmin(((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1), axis=1)
    assert np.array_equal(labels, expected)
    np.testing.assert_allclose(sims, cos[np.arange(200), expected], atol=1e-5)


def test_deltas_of_unsorted_records_are_sorted_and_own_their_arrays() -> None:
    rng = np.random.default_rng(6)
    x = normalise_rows(rng.standard_normal((6, 8)))
    offsets, clusters, outliers = np.array([14, 10, 12, 11, 15, 13]), np.array([1, 0, 2, 0, 1, 2]), np.zeros(6, bool)
    (d,) = CentroidDeltas.for_records("f", 1, "t", 0, 10, 15, offsets, clusters, x, outliers)
    order = np.argsort(offsets)
    assert d.offsets.tolist() == list(range(10, 16)) and d.clusters.tolist() == clusters[order].tolist()
    np.testing.assert_allclose(d.vectors, x[order], atol=1e-6)
    o, c, flags = offsets[order], clusters[order], outliers.copy()
    (ordered,) = CentroidDeltas.for_records("f", 1, "t", 0, 10, 15, o, c, x[order], flags)
    kept = (ordered.offsets.copy(), ordered.clusters.copy(), ordered.outliers.copy())
    o[:], c[:], flags[:] = 0, 9, True  # the caller reuses its buffers
    assert all(np.array_equal(u, v) for u, v in zip((ordered.offsets, ordered.clusters, ordered.outliers), kept,
                                                    strict=True))


def test_every_benchmark_pass_merges_what_it_assigns_even_after_another_set_of_passes() -> None:
    """The online benchmark times assign + merge; a pass whose records the model had already merged (two sets
    of passes on one model once restarted at the same offsets) would time the skip instead."""
    from benchmarks.online_kmeans import _random_unit, _worker_passes

    rng = np.random.default_rng(0)
    x = _random_unit(rng, 256, 16)
    model = OnlineKMeans(_random_unit(rng, 8, 16), counts=np.full(8, 10))
    first, second = _worker_passes(model, x, 64), _worker_passes(model, x, 128)
    before = model.learned
    for run in (first, first, second, second):
        run()
    assert model.learned - before == 4 * len(x)


@pytest.mark.parametrize("largest_count", [10, 10**4, 10**8])
def test_the_float32_mean_step_is_the_float64_mean_to_within_a_float32_rounding(largest_count: int) -> None:
    """The merge runs in float32; each centroid must still be the exact mean of its members as float32 stores it,
    from clusters of a few members to ones far past float32's 2**24 integers."""
    rng = np.random.default_rng(largest_count)
    k, d, m = 50, 64, 4096
    centroids = normalise_rows(rng.standard_normal((k, d), dtype=np.float32)) * 0.6
    counts = rng.integers(1, largest_count, k).astype(np.int64)
    x = normalise_rows(rng.standard_normal((m, d), dtype=np.float32))
    labels = rng.integers(0, k - 5, m)  # the last five clusters get no rows and must not move
    clusters, sums, added = group_sums(labels, x)
    expected = centroids.astype(np.float64)
    expected[clusters] = (expected[clusters] * counts[clusters, None] + sums) / (counts[clusters] + added)[:, None]
    got, got_counts = centroids.copy(), counts.copy()
    moved = mean_step(got, got_counts, labels, x)
    assert got.dtype == np.float32 and np.array_equal(moved, clusters)
    assert np.abs(got - expected).max() < 1e-7  # values are below 1, whose float32 spacing is 6e-8
    assert np.array_equal(got[-5:], centroids[-5:])
    assert np.array_equal(got_counts, counts + np.bincount(labels, minlength=k))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_after_a_merge_the_model_scores_with_its_moved_centroids(metric: str) -> None:
    """A merge refreshes the prepared scorer in place for the clusters it moved: assignments afterwards are those of
    a scorer built afresh from the merged centroids."""
    x, labels, _ = blobs(31, k=6, dim=16, per=50)
    model = OnlineKMeans.from_batch(x[:60], labels[:60], metric=metric)
    model.predict_many(x)  # the scorer is built and cached
    for lo in range(60, len(x), 60):
        part = x[lo : lo + 60]
        model.merge_deltas(_deltas(model, part, np.arange(lo, lo + len(part)), partition=0))
        fresh = Scorer.of(model.centroids, metric)
        got = model.assign_many(x)
        want_labels, want_sims = fresh.nearest(x)
        assert np.array_equal(got.labels, want_labels)
        # Same scorer arrays bit for bit; BLAS may still round a product differently for another buffer.
        np.testing.assert_allclose(got.similarities, want_sims, rtol=0, atol=1e-6)


@pytest.mark.parametrize("rule,metric", [("mean", "cosine"), ("river", "euclidean")])
def test_after_learning_the_model_scores_with_its_moved_centroids(rule: str, metric: str) -> None:
    """``learn_many`` moves centroids chunk by chunk and keeps the prepared scorer in step the same way a merge does."""
    x, _, centres = blobs(32, k=6, dim=16, per=50)
    model = OnlineKMeans(centres, rule=rule, metric=metric, halflife=0.3, batch_size=40)
    model.predict_many(x)  # the scorer is built and cached
    for lo in range(0, len(x), 100):
        model.learn_many(x[lo : lo + 100])
        got = model.assign_many(x)
        want_labels, want_sims = Scorer.of(model.centroids, metric).nearest(x)
        assert np.array_equal(got.labels, want_labels)
        np.testing.assert_allclose(got.similarities, want_sims, rtol=0, atol=1e-6)
