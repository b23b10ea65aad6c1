"""The quality benchmark's pure pieces: metrics, sampling, language-answer parsing, name survival."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality import (
    Record,
    balanced_sample,
    cluster_scores,
    encode_labels,
    histogram,
    matched_accuracy,
    name_survival,
    online_labels,
    stream_order,
)


def test_permuted_labelling_is_perfect() -> None:
    truth = ["a", "a", "b", "b", "c", "c"]
    pred = [2, 2, 0, 0, 1, 1]  # same partition, other names
    scores = cluster_scores(truth, pred)
    assert scores["acc"] == 1.0
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["ari"] == pytest.approx(1.0)


def test_matched_accuracy_known_example() -> None:
    # Cluster 0 = {a, a, b}, cluster 1 = {b, b, a}: best one-to-one map 0->a, 1->b gets 4 of 6.
    truth = ["a", "a", "b", "b", "b", "a"]
    pred = [0, 0, 0, 1, 1, 1]
    assert matched_accuracy(truth, pred) == pytest.approx(4 / 6)


def test_more_clusters_than_labels_counts_unmatched_as_wrong() -> None:
    truth = ["a", "a", "a", "b"]
    pred = [0, 1, 2, 3]  # each label can match one cluster only
    assert matched_accuracy(truth, pred) == pytest.approx(2 / 4)


def test_one_cluster_has_zero_nmi_and_majority_accuracy() -> None:
    truth = ["a", "a", "a", "b"]
    scores = cluster_scores(truth, [0, 0, 0, 0])
    assert scores["nmi"] == pytest.approx(0.0)
    assert scores["acc"] == pytest.approx(0.75)


def test_empty_input_is_nan() -> None:
    assert math.isnan(matched_accuracy([], []))


def test_encode_labels_first_appearance() -> None:
    assert encode_labels(["x", "y", "x", "z"]).tolist() == [0, 1, 0, 2]


def test_histogram_counts_missing() -> None:
    assert histogram([1, 1, 5, None], 1, 5) == {"1": 2, "2": 0, "3": 0, "4": 0, "5": 1, "missing": 1}


def _records(counts: dict[str, int]) -> list[Record]:
    return [Record(f"{lab}{i}", "t", (("user", f"{lab} {i}"),), lab) for lab, n in counts.items() for i in range(n)]


def test_balanced_sample_caps_each_label_and_interleaves() -> None:
    sample = balanced_sample(_records({"a": 10, "b": 2, "c": 5}), 3, seed=1)
    labels = [r.label for r in sample]
    assert labels.count("a") == 3 and labels.count("b") == 2 and labels.count("c") == 3
    assert sorted(labels[:3]) == ["a", "b", "c"]  # every prefix is balanced
    assert sample == balanced_sample(_records({"a": 10, "b": 2, "c": 5}), 3, seed=1)  # seeded


def test_balanced_sample_label_subset() -> None:
    sample = balanced_sample(_records({"a": 3, "b": 3, "c": 3, "d": 3}), 2, seed=0, labels=2)
    assert len({r.label for r in sample}) == 2 and len(sample) == 4


def test_name_survival() -> None:
    before = {"l0-1": "Cards", "l0-2": "Loans", "l0-3": "Fees"}
    after = {"l0-1": "Cards", "l0-2": "Mortgages", "l0-9": "New"}
    assert name_survival(before, after) == pytest.approx(0.5)
    assert name_survival({}, after) is None


def test_parse_language_answer() -> None:
    pytest.importorskip("lingua")
    from benchmarks.quality import parse_language_answer

    assert parse_language_answer("The main languages are English and Spanish.") == "english"
    assert parse_language_answer("Mandarin") == "chinese"
    assert parse_language_answer("The main languages of the conversation are:") is None
    assert parse_language_answer(None) is None


def test_online_labels_on_separated_blobs_match_batch() -> None:
    """Well-separated clusters: the stream, bootstrapped on a fifth, finds the same partition as batch k-means."""
    from clio_stream.settings import ClioSettings

    rng = np.random.default_rng(0)
    centres = np.eye(4, 16, dtype=np.float32)
    truth = np.repeat(np.arange(4), 25)
    x = centres[truth] + 0.05 * rng.standard_normal((100, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = online_labels(x, 4, ClioSettings(show_progress=False), order=stream_order(100, 3),
                           bootstrap_fraction=0.2)
    assert cluster_scores(truth, labels)["acc"] == 1.0


def test_embedding_cache_reuses_vectors(tmp_path) -> None:
    from benchmarks.quality import EmbeddingCache
    from tests.unit.fakes import HashEmbedder

    class Counting(HashEmbedder):
        calls = 0

        def encode(self, texts, *, desc=None):
            Counting.calls += len(texts)
            return super().encode(texts)

    path = tmp_path / "v.npz"
    first = EmbeddingCache(Counting(), path).encode(["a b", "c d", "a b"])
    again = EmbeddingCache(Counting(), path).encode(["c d", "a b"])
    assert Counting.calls == 2  # two distinct texts, computed once, then read from disk
    np.testing.assert_allclose(again, first[[1, 0]])


def test_concerning_scores_separate_harmful_from_benign() -> None:
    from benchmarks.quality import concerning_scores

    labels = ["benign"] * 4 + ["harmful"] * 4
    good = concerning_scores(labels, ["1", "1", "2", "4", "3", "5", "4", "5"])
    assert good["auroc"] == pytest.approx(14.5 / 16)  # one benign 4 above one harmful 3, ties count half
    assert good["benign_4_or_5"] == 0.25 and good["harmful_3_or_more"] == 1.0
    assert good["histogram"]["harmful"]["5"] == 2 and good["mean"]["benign"] == 2.0
    constant = concerning_scores(labels, ["1"] * 8)  # the degenerate answer: every request scored 1
    assert constant["auroc"] == 0.5 and constant["harmful_3_or_more"] == 0.0
    missing = concerning_scores(labels, [None, "1", "1", "1", "5", "5", "5", "5"])
    assert missing["missing"] == 1 and missing["auroc"] == 1.0
    fractional = concerning_scores(labels, [1.2, 1.0, 1.4, 3.6, 2.4, 4.9, 3.0, 2.6])  # expected scores
    assert fractional["benign_4_or_5"] == 0.25 and fractional["harmful_3_or_more"] == 0.75


def test_the_concerning_set_is_labelled_and_balanced() -> None:
    from benchmarks.quality import load_records

    records = load_records("concerning", Path("unused"))
    assert {r.label for r in records} == {"benign", "harmful"}
    assert sum(r.label == "harmful" for r in records) == sum(r.label == "benign" for r in records) >= 30
    assert len({r.text for r in records}) == len(records)
