"""``embedding.CachedEmbedder``: each distinct text embedded once, per call and across calls, within a bound."""

from __future__ import annotations

import numpy as np

from clio_stream.embedding import CachedEmbedder
from tests.unit.fakes import HashEmbedder


class Counting(HashEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def encode(self, texts, *, desc=None):  # type: ignore[no-untyped-def]
        self.seen.extend(texts)
        return super().encode(texts, desc=desc)


def test_each_distinct_text_reaches_the_model_once_and_rows_match_the_model() -> None:
    inner = Counting()
    cached = CachedEmbedder(inner, max_items=10)
    first = cached.encode(["pay rent", "reset pin", "pay rent"])
    assert inner.seen == ["pay rent", "reset pin"]  # once per call
    second = cached.encode(["reset pin", "new card", "pay rent"])
    assert inner.seen == ["pay rent", "reset pin", "new card"]  # and across calls
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(second, HashEmbedder().encode(["reset pin", "new card", "pay rent"]))
    assert (cached.hits, cached.misses) == (2, 3)  # rows read from the cache; texts the model embedded


def test_the_least_recently_used_text_is_forgotten_past_the_bound() -> None:
    inner = Counting()
    cached = CachedEmbedder(inner, max_items=2)
    cached.encode(["a", "b"])
    cached.encode(["a"])  # "a" is now the most recent
    cached.encode(["c"])  # evicts "b"
    cached.encode(["a", "b"])
    assert inner.seen == ["a", "b", "c", "b"]
    assert CachedEmbedder(Counting(), max_items=0).encode([]).shape == (0, HashEmbedder.dim)
