"""Keyword labels for clusters: class-based TF-IDF over the members' facet values (as BERTopic does).

A label that cannot be worse than its members: the words that are frequent in this cluster
and rare in its siblings. A word counts once per distinct user, and a word fewer than
``min_users`` users wrote is never shown, so a rare term (a name, a place) cannot leak
through a label the way it could not through a cluster.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Sequence

_WORD = re.compile(r"[a-z][a-z0-9'+#-]*[a-z0-9+#]|[a-z]")
# Scaffolding every value shares, English function words, and the filler verbs a small model adds to any request
# ("provide ... using ...", seen as the demo's top-level keywords "Create, provide, using"): they describe no cluster.
STOPWORDS = frozenset("""
a an and are as asks assistant at be by can do does for from get has have help how i in into is it its
me my of on or own some that the their them they this to user users wants want was what when which who
why will with without would you your about after also any been but could know like more most much
need needs not now other out over should so such than then there these those through up very way
using based provide given various specific
""".split())


def words(text: str) -> set[str]:
    """The distinct content words of one value (lower case, no stopwords)."""
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 2}


def keyword_labels(values: Sequence[str], labels: Sequence[int], users: Sequence[str], k: int, *,
                   top: int = 3, min_users: int = 2, drop: str = "") -> list[str]:
    """A label of up to ``top`` words for each cluster ``0..k-1`` ("" when no word qualifies).

    c-TF-IDF: tf = distinct users in the cluster who used the word / all (user, word) pairs of
    the cluster; idf = log(1 + mean pairs per cluster / users who used the word anywhere).
    ``drop``: text whose words never count (the facet's prefill).
    """
    dropped = words(drop)
    users_of: dict[tuple[int, str], set[str]] = defaultdict(set)
    for text, c, u in zip(values, labels, users):
        for w in words(text) - dropped:
            users_of[(int(c), w)].add(u)
    per_cluster: list[Counter[str]] = [Counter() for _ in range(k)]
    everyone: dict[str, set[str]] = defaultdict(set)
    for (c, w), us in users_of.items():
        per_cluster[c][w] = len(us)
        everyone[w] |= us
    anywhere = {w: len(us) for w, us in everyone.items()}
    totals = [sum(c.values()) for c in per_cluster]
    mean_total = sum(totals) / max(1, sum(1 for t in totals if t))
    out = []
    for c in range(k):
        scored = [(n / totals[c] * math.log(1 + mean_total / anywhere[w]), w)
                  for w, n in per_cluster[c].items() if n >= min_users]
        scored.sort(key=lambda s: (-s[0], s[1]))
        out.append(" ".join(w for _, w in scored[:top]))
    return out
