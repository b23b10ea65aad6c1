"""The variant sweep's pure pieces: how several sampled answers become one vector, and the rejected post-processing."""

from __future__ import annotations

import numpy as np

from benchmarks.quality_variants import combine, first_sentence, most_typical, strip_borrowed
from clio_stream.domain.facets import REQUEST


def test_mean_of_samples_is_a_unit_vector_and_shows_the_sample_nearest_it() -> None:
    x = [np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.8, 0.6])]
    vec, shown = combine(x, ["block a card", "order pizza", "freeze a lost card"], "mean")
    assert np.isclose(np.linalg.norm(vec), 1.0) and shown == "freeze a lost card"
    assert combine(x, ["a", "b", "c"], "first")[1] == "a"
    assert combine(x, ["a", "b", "c"], "medoid")[1] == "c"  # the one most similar to the others


def test_most_typical_answer_shares_most_words_with_the_others() -> None:
    answers = ["cancel a card payment", "order a pizza online", "cancel a payment made by card", "cancel payment"]
    assert most_typical(answers) == "cancel a card payment"
    assert most_typical(["same", "same"]) == "same"


def test_first_sentence_and_borrowed_words() -> None:
    assert first_sentence("The user asks to top up. They provide Python code.") == "The user asks to top up."
    assert first_sentence("Use e.g. a tool") == "Use e.g. a tool"
    # "Python" and "CSV" come from the worked examples, not from this conversation about a transfer.
    value = "The user asks the assistant to fix a transfer error in Python with a CSV file."
    assert strip_borrowed(value, REQUEST, "my transfer failed") == "The user asks the assistant to fix a transfer error in with a file."


def test_a_layout_variant_asks_its_facet_in_that_layout() -> None:
    from benchmarks.quality_variants import concerning_variants, variants

    shared, base = variants()["task-shared"], variants()["task"]
    assert shared.prompt("<user>\nhi\n</user>").template.name == "facet_shared"
    assert base.prompt("<user>\nhi\n</user>").template.name == "facet"
    assert "Request:" in shared.prompt("x").values["questions"]  # the preamble is the packaged facets'
    assert concerning_variants()["shared"].prompt("x").choices == (" 1", " 2", " 3", " 4", " 5")
