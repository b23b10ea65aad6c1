"""Model-agnostic quality metrics: does what a reader sees point back at what it describes?

Labels are rare in production, so these need none. Both are embedding retrieval:

- *facet fidelity*: a conversation's facet value, used as a query against the user turns of
  all conversations in the set, should rank its own conversation first. Filler ("provide
  accurate and unbiased information") ranks it near chance; an informative value near the top.
- *name fidelity*: a cluster's name (and summary), used as a query against the centroids of
  its siblings' member values, should rank its own cluster first. A generic name fails.

Pure functions over unit-vector arrays (rows = items); the caller embeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Retrieval:
    """Retrieval@1, mean reciprocal rank, and what chance would score with ``candidates`` targets."""

    n: int
    candidates: int
    recall_at_1: float
    mrr: float
    chance_recall_at_1: float
    chance_mrr: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "candidates": self.candidates, "recall_at_1": self.recall_at_1, "mrr": self.mrr,
                "chance_recall_at_1": self.chance_recall_at_1, "chance_mrr": self.chance_mrr}


def ranks(queries: np.ndarray, targets: np.ndarray, own: np.ndarray) -> np.ndarray:
    """1-based rank of target ``own[i]`` for query ``i`` by cosine similarity (ties count against it)."""
    sims = np.asarray(queries, dtype=np.float64) @ np.asarray(targets, dtype=np.float64).T
    own_sim = sims[np.arange(len(own)), own]
    return (sims >= own_sim[:, None]).sum(axis=1)  # counts itself, and every tie ahead of it


def relative_closeness(names: np.ndarray, centres: np.ndarray, member_closeness: np.ndarray) -> np.ndarray:
    """Cosine of name ``i`` to centre ``i``, as a fraction of how close cluster ``i``'s members are to it on
    average (``member_closeness[i]``): 1 = as close as a typical member. Ranking first among siblings says a name
    is closer to its cluster than to the others; this says how close, which a generic name fails where the
    siblings are few and unrelated."""
    own = np.einsum("ij,ij->i", np.asarray(names, dtype=np.float64), np.asarray(centres, dtype=np.float64))
    spread = np.asarray(member_closeness, dtype=np.float64)
    return own / np.where(spread > 0, spread, 1.0)


@dataclass(frozen=True)
class LabelCheck:
    """What the name check decides for each label (a name or a summary) of one level's clusters."""

    rank: np.ndarray  # 1-based rank of its own cluster among the level's centres
    closeness: np.ndarray  # ``relative_closeness`` to its own centre
    passed: np.ndarray  # ranked first and at least ``min_closeness``


def check_labels(labels: np.ndarray, centres: np.ndarray, member_closeness: np.ndarray,
                 min_closeness: float) -> LabelCheck:
    """Label ``i`` (unit rows) against cluster ``i``'s centre: the rule ``stages.name_check`` shows a name or a
    summary by, defined once for the pipeline and the quality benchmark."""
    rank = ranks(labels, centres, np.arange(len(labels)))
    closeness = relative_closeness(labels, centres, member_closeness)
    return LabelCheck(rank, closeness, (rank == 1) & (closeness >= min_closeness))


def retrieval(queries: np.ndarray, targets: np.ndarray, own: np.ndarray) -> Retrieval:
    """Scores of ``ranks``; chance is the expectation of a uniformly random ranking."""
    m = int(len(targets))
    r = ranks(queries, targets, np.asarray(own, dtype=np.int64)) if len(queries) else np.zeros(0)
    chance_mrr = float(np.mean(1.0 / np.arange(1, m + 1))) if m else float("nan")
    return Retrieval(n=int(len(r)), candidates=m,
                     recall_at_1=float(np.mean(r == 1)) if len(r) else float("nan"),
                     mrr=float(np.mean(1.0 / r)) if len(r) else float("nan"),
                     chance_recall_at_1=1.0 / m if m else float("nan"), chance_mrr=chance_mrr)


def facet_fidelity(values: np.ndarray, conversations: np.ndarray) -> Retrieval:
    """Row ``i`` of ``values`` (a facet value) against all rows of ``conversations`` (the user turns)."""
    if len(values) != len(conversations):
        raise ValueError(f"{len(values)} values for {len(conversations)} conversations")
    return retrieval(values, conversations, np.arange(len(values)))


def centroids(vectors: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Unit-length mean of each cluster's member vectors (zero for an empty cluster)."""
    out = np.zeros((k, vectors.shape[1]), dtype=np.float64)
    np.add.at(out, labels, vectors)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def name_hits(names: np.ndarray, members: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank of each cluster among its siblings when its name is the query (``names`` row c = cluster c)."""
    k = len(names)
    return ranks(names, centroids(members, np.asarray(labels, dtype=np.int64), k), np.arange(k))


def name_fidelity(names: np.ndarray, members: np.ndarray, labels: np.ndarray) -> Retrieval:
    """``retrieval`` of cluster ``c`` by its name among the centroids of all ``len(names)`` clusters."""
    k = len(names)
    return retrieval(names, centroids(members, np.asarray(labels, dtype=np.int64), k), np.arange(k))
