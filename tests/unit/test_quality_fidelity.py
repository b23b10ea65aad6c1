"""Facet and name fidelity: a filler model must score near chance, an informative one near the top."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest

from clio_stream.stages.fidelity import centroids, facet_fidelity, name_fidelity, name_hits, ranks, retrieval

CONVERSATIONS = [
    "I forgot the password to my email account and cannot log in",
    "write a haiku about autumn leaves falling in the park",
    "my card payment was declined at the supermarket twice today",
    "how do I reverse a linked list in python without recursion",
    "translate this cover letter for a nursing job into spanish",
    "what is the derivative of x squared times sine of x",
]
INFORMATIVE = [
    "The user wants to recover a forgotten email password",
    "The user wants a haiku about autumn leaves",
    "The user wants to know why a card payment was declined",
    "The user wants to reverse a linked list in python",
    "The user wants a cover letter translated into spanish",
    "The user wants the derivative of x squared times sine x",
]
FILLER = ["The user's overall request for the assistant is to provide accurate and unbiased information"] * 6


def bag_of_words(texts: list[str], dim: int = 512) -> np.ndarray:
    """A deterministic stand-in for a sentence embedder: hashed word counts, unit length."""
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        for w in re.findall(r"[a-z]+", t.lower()):
            if len(w) > 3:  # drops "the", "user", "to"... so shared scaffolding does not dominate
                out[i, zlib.crc32(w.encode()) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def test_informative_values_retrieve_their_conversation() -> None:
    got = facet_fidelity(bag_of_words(INFORMATIVE), bag_of_words(CONVERSATIONS))
    assert got.recall_at_1 == 1.0 and got.mrr == 1.0
    assert got.chance_recall_at_1 == pytest.approx(1 / 6)


def test_filler_values_score_no_better_than_chance() -> None:
    got = facet_fidelity(bag_of_words(FILLER), bag_of_words(CONVERSATIONS))
    assert got.recall_at_1 <= got.chance_recall_at_1 + 1e-9
    assert got.mrr <= got.chance_mrr + 1e-9


def test_ties_count_against_the_query() -> None:
    # Identical values cannot tell conversations apart: each ranks last among equals, never first.
    same = np.tile(np.array([[1.0, 0.0]]), (3, 1))
    assert ranks(same, same, np.arange(3)).tolist() == [3, 3, 3]


def test_ranks_known_example() -> None:
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    t = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    # query 0 wants target 0 (sim 0.6; target 1 has 1.0): rank 2; query 1 wants target 2 (sim 1.0): rank 1
    assert ranks(q, t, np.array([0, 2])).tolist() == [2, 1]
    r = retrieval(q, t, np.array([0, 2]))
    assert r.recall_at_1 == 0.5 and r.mrr == pytest.approx(0.75)
    assert r.chance_mrr == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_name_fidelity_specific_names_beat_a_generic_one() -> None:
    members = bag_of_words(INFORMATIVE + CONVERSATIONS)
    labels = np.array([0, 1, 2, 0, 1, 2] * 2)  # three clusters of four
    specific = bag_of_words(["Recover passwords, reverse linked lists", "Write haiku, translate cover letters",
                             "Declined card payments, derivatives of sine"])
    generic = bag_of_words(["Provide accurate and unbiased information"] * 3)
    assert name_fidelity(specific, members, labels).recall_at_1 == 1.0
    assert name_fidelity(generic, members, labels).recall_at_1 == 0.0
    assert name_hits(specific, members, labels).tolist() == [1, 1, 1]


def test_centroids_are_unit_means_and_empty_is_zero() -> None:
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    c = centroids(v, np.array([0, 0, 1]), 3)
    assert np.allclose(c[0], [2 ** -0.5, 2 ** -0.5]) and np.allclose(c[1], [1.0, 0.0]) and np.allclose(c[2], 0.0)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError):
        facet_fidelity(np.zeros((2, 3)), np.zeros((3, 3)))


def test_keyword_labels_pick_the_words_that_set_a_cluster_apart() -> None:
    from clio_stream.stages.keywords import keyword_labels

    values = ["The user asks the assistant to freeze a lost card", "The user asks the assistant to freeze my card",
              "The user asks the assistant to explain a card freeze", "The user asks the assistant to write a poem",
              "The user asks the assistant to write a birthday poem", "The user asks the assistant to rhyme a poem"]
    labels = [0, 0, 0, 1, 1, 1]
    got = keyword_labels(values, labels, ["u1", "u2", "u3", "u4", "u5", "u6"], 2,
                         drop="The user asks the assistant to")
    assert got[0].split()[:2] == ["card", "freeze"] and got[1].split()[0] == "poem"
    # A word one user wrote ("birthday") never shows; neither does one user repeating a word.
    assert "birthday" not in got[1]
    same_user = keyword_labels(values, labels, ["u1"] * 3 + ["u4", "u5", "u6"], 2)
    assert same_user[0] == ""


def test_keyword_labels_score_higher_name_fidelity_than_filler() -> None:
    from clio_stream.stages.keywords import keyword_labels

    members = INFORMATIVE + INFORMATIVE
    labels = np.array([0, 1, 2, 0, 1, 2] * 2)
    users = [f"u{i}" for i in range(12)]
    kw = keyword_labels(members, labels, users, 3)
    assert all(kw)
    x = bag_of_words(members)
    assert name_fidelity(bag_of_words(kw), x, labels).recall_at_1 == 1.0
