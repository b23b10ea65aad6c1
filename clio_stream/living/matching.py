"""Match a new clustering to the previous one, so cluster ids (and names) survive re-clustering.

K-means numbers its clusters by position, so the same topic can come back as
cluster 3 one day and cluster 17 the next. Links, bookmarks and dashboards need
an id that follows the topic, and renaming a cluster that did not change wastes
LLM calls and makes names flicker. This module pairs old and new clusters one to
one with an optimal assignment (Hungarian algorithm) on a score that mixes

* centroid cosine similarity (where the cluster sits), and
* Jaccard overlap of members (which conversations it holds),

and describes what happened to the clusters that found no partner (lineage
events). Everything here is pure: plain sets, dicts and arrays in, plain data out.

Member overlap is measured over the conversations the old clustering knew:
conversations that arrived since cannot overlap anything, and counting them
would make every growing cluster look "changed". The centroid cosine is what
notices that newcomers moved a cluster.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Hashable, Iterable, Literal, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from clio_stream.domain.vectors import normalise_rows
from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)

EventKind = Literal["dissolved", "merged", "split", "new"]


@dataclass(frozen=True)
class MatchThresholds:
    """Knobs of matching and of "barely changed"; defaults tuned on banking77 + all-MiniLM-L6-v2.

    ``min_similarity``: a pair scoring below this is no match (score = ``weight`` x cosine +
    (1 - ``weight``) x Jaccard, so with the defaults a pair needs real member overlap:
    centroids alone can reach at most 0.4).
    ``keep_jaccard`` / ``keep_cosine``: a matched cluster with at least this member
    overlap and centroid cosine keeps its name without asking the LLM.
    ``rebuild_fraction``: the re-clustering job rebuilds the upper hierarchy levels
    from scratch when more than this share of leaves is new (or more than this share
    of old leaves vanished); below it, it patches the previous hierarchy.
    """

    min_similarity: float = 0.5
    weight: float = 0.4
    keep_jaccard: float = 0.8
    keep_cosine: float = 0.95
    rebuild_fraction: float = 0.3

    def __post_init__(self) -> None:
        for name in ("weight", "keep_jaccard", "rebuild_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @classmethod
    def from_settings(cls, settings: ClioSettings) -> MatchThresholds:
        """The settings' ``match_*``, ``keep_name_*`` and ``hierarchy_rebuild_fraction``."""
        return cls(min_similarity=settings.match_min_similarity, weight=settings.match_weight,
                   keep_jaccard=settings.keep_name_jaccard, keep_cosine=settings.keep_name_cosine,
                   rebuild_fraction=settings.hierarchy_rebuild_fraction)


@dataclass(frozen=True)
class LineageEvent:
    """What happened to a cluster that found no partner.

    * ``dissolved``: old cluster ``old_id`` is gone; ``new_key`` (its successor) got most of its members,
      or, when none of its members remain, lies nearest to it;
    * ``merged``: like dissolved, but the successor is a surviving (matched) cluster that took at least
      half of the old members;
    * ``split``: new cluster ``new_key`` holds mostly members of ``old_id``, which survives elsewhere;
    * ``new``: new cluster ``new_key`` came from no single surviving cluster (``old_id``: main origin, if any).

    ``share``: for dissolved/merged, the fraction of the old cluster's members the successor received;
    for split/new, the fraction of the new cluster's known members that came from ``old_id``.
    """

    kind: EventKind
    old_id: Hashable | None
    new_key: Hashable | None
    share: float


@dataclass
class Matching:
    """Matched pairs (old id -> (new key, score)) and the lineage events of everything unmatched."""

    pairs: dict[Hashable, tuple[Hashable, float]] = field(default_factory=dict)
    events: list[LineageEvent] = field(default_factory=list)
    cosine: dict[tuple[Hashable, Hashable], float] = field(default_factory=dict)  # of matched pairs
    jaccard: dict[tuple[Hashable, Hashable], float] = field(default_factory=dict)  # of matched pairs

    @property
    def new_to_old(self) -> dict[Hashable, Hashable]:
        return {new: old for old, (new, _) in self.pairs.items()}

    def successors(self) -> dict[Hashable, Hashable]:
        """Old id -> successor new key, for every unmatched old cluster that has one."""
        return {e.old_id: e.new_key for e in self.events
                if e.kind in ("dissolved", "merged") and e.new_key is not None}

    def counts(self) -> dict[str, int]:
        """Events by kind, plus matched pairs: for logs and reports."""
        out = Counter(e.kind for e in self.events)
        return {"matched": len(self.pairs), **{k: out.get(k, 0) for k in ("dissolved", "merged", "split", "new")}}


def jaccard(a: Collection[Hashable], b: Collection[Hashable]) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets: nothing changed)."""
    a, b = set(a), set(b)
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def _rows(centroids: np.ndarray | Mapping[Hashable, np.ndarray], keys: Sequence[Hashable], dim: int | None) -> np.ndarray:
    """Centroid rows in ``keys`` order.

    A mapping is looked up by key; an array is taken in ``keys`` order when it has one
    row per key, else indexed by the keys themselves (k-means indices with empty clusters left out).
    """
    if isinstance(centroids, Mapping):
        if not keys:
            return np.zeros((0, dim or 0))
        return np.stack([np.asarray(centroids[k], dtype=np.float64).reshape(-1) for k in keys])
    arr = np.asarray(centroids, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(len(keys), -1) if keys else np.zeros((0, dim or 0))
    if len(arr) == len(keys):
        return arr
    return arr[[int(k) for k in keys]]  # type: ignore[call-overload]


def cosine_matrix(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Cosine of every old centroid with every new one, negatives clipped to 0 (unrelated, not "opposite")."""
    if old.size == 0 or new.size == 0:
        return np.zeros((len(old), len(new)))
    return np.clip(normalise_rows(np.atleast_2d(old)) @ normalise_rows(np.atleast_2d(new)).T, 0.0, 1.0)


def overlap_matrix(old_members: Sequence[Collection[Hashable]], new_members: Sequence[Collection[Hashable]]) -> np.ndarray:
    """Counts of shared members: ``[i, j] = |old_i & new_j|`` (without building pairwise set intersections)."""
    out = np.zeros((len(old_members), len(new_members)), dtype=np.int64)
    where: dict[Hashable, list[int]] = {}
    for i, members in enumerate(old_members):
        for m in members:
            where.setdefault(m, []).append(i)
    for j, members in enumerate(new_members):
        for m in members:
            for i in where.get(m, ()):
                out[i, j] += 1
    return out


def match_clusters(
    old_centroids: np.ndarray | Mapping[Hashable, np.ndarray],
    old_members: Mapping[Hashable, Collection[Hashable]],
    new_centroids: np.ndarray | Mapping[Hashable, np.ndarray],
    new_members: Mapping[Hashable, Collection[Hashable]],
    *,
    min_similarity: float = MatchThresholds.min_similarity,
    weight: float = MatchThresholds.weight,
) -> Matching:
    """Pair old clusters with new ones one to one, maximising the summed score; describe the rest.

    Centroids are arrays (one row per key, in the members' key order, or indexed by integer keys)
    or mappings key -> vector. ``weight`` is the share of centroid cosine in the score, the rest
    is member Jaccard (over the conversations some old cluster held). Pairs below
    ``min_similarity`` are not matches.
    """
    old_keys = list(old_members)
    new_keys = list(new_members)
    out = Matching()
    if not old_keys and not new_keys:
        return out
    old_c = _rows(old_centroids, old_keys, None)
    new_c = _rows(new_centroids, new_keys, None)
    cos = cosine_matrix(old_c, new_c)
    known = set().union(*(set(m) for m in old_members.values())) if old_keys else set()
    old_sets = [set(old_members[k]) for k in old_keys]
    new_known = [set(new_members[k]) & known for k in new_keys]
    inter = overlap_matrix(old_sets, new_known)
    sizes_old = np.array([len(s) for s in old_sets], dtype=np.float64)
    sizes_new = np.array([len(s) for s in new_known], dtype=np.float64)
    union = sizes_old[:, None] + sizes_new[None, :] - inter
    jac = np.divide(inter, union, out=np.zeros(inter.shape, dtype=np.float64), where=union > 0)
    score = weight * cos + (1.0 - weight) * jac

    matched_old: dict[int, int] = {}
    if old_keys and new_keys:
        rows, cols = linear_sum_assignment(score, maximize=True)
        for i, j in zip(rows.tolist(), cols.tolist()):
            if score[i, j] >= min_similarity:
                matched_old[i] = j
    matched_new = {j: i for i, j in matched_old.items()}
    for i, j in matched_old.items():
        out.pairs[old_keys[i]] = (new_keys[j], float(score[i, j]))
        out.cosine[(old_keys[i], new_keys[j])] = float(cos[i, j])
        out.jaccard[(old_keys[i], new_keys[j])] = float(jac[i, j])

    for i, key in enumerate(old_keys):
        if i in matched_old:
            continue
        if new_keys and inter[i].max() > 0:
            j = int(np.argmax(inter[i]))
            share = float(inter[i, j] / sizes_old[i])
        elif new_keys and cos[i].max() > 0:
            j, share = int(np.argmax(cos[i])), 0.0
        else:
            out.events.append(LineageEvent("dissolved", key, None, 0.0))
            continue
        kind: EventKind = "merged" if j in matched_new and share >= 0.5 else "dissolved"
        out.events.append(LineageEvent(kind, key, new_keys[j], share))

    for j, key in enumerate(new_keys):
        if j in matched_new:
            continue
        if old_keys and inter[:, j].max() > 0:
            i = int(np.argmax(inter[:, j]))
            share = float(inter[i, j] / sizes_new[j])
            kind = "split" if i in matched_old and share >= 0.5 else "new"
            out.events.append(LineageEvent(kind, old_keys[i], key, share))
        else:
            out.events.append(LineageEvent("new", None, key, 0.0))
    log.debug("matched %d of %d old / %d new clusters", len(out.pairs), len(old_keys), len(new_keys))
    return out


def changed(
    old_members: Collection[Hashable],
    new_members: Collection[Hashable],
    cosine: float,
    thresholds: MatchThresholds = MatchThresholds(),
    *,
    known: Collection[Hashable] | None = None,
) -> bool:
    """True unless a matched cluster barely changed: member Jaccard >= ``keep_jaccard`` and cosine >= ``keep_cosine``.

    ``known``: the conversations the old clustering held; new members outside it (data that arrived
    since) are left out of the overlap, so growth alone is no change; ``cosine`` (of the clusters'
    centroids) catches newcomers that moved the cluster.
    """
    new = set(new_members)
    if known is not None:
        new &= set(known)
    return jaccard(old_members, new) < thresholds.keep_jaccard or cosine < thresholds.keep_cosine


def successor(
    members: Collection[Hashable],
    candidates: Mapping[Hashable, Collection[Hashable]],
    *,
    centroid: np.ndarray | None = None,
    candidate_centroids: Mapping[Hashable, np.ndarray] | None = None,
) -> Hashable | None:
    """The candidate holding most of ``members``; without overlap, the one whose centroid lies nearest.

    Ties go to the first candidate in iteration order (deterministic for ordered mappings).
    """
    mine = set(members)
    best, best_n = None, 0
    for key, cand in candidates.items():
        n = len(mine.intersection(cand))
        if n > best_n:
            best, best_n = key, n
    if best is not None or centroid is None or not candidate_centroids:
        return best
    keys = [k for k in candidates if k in candidate_centroids]
    if not keys:
        return None
    sims = cosine_matrix(np.asarray(centroid, dtype=np.float64).reshape(1, -1),
                         np.stack([np.asarray(candidate_centroids[k], dtype=np.float64) for k in keys]))[0]
    return keys[int(np.argmax(sims))] if sims.max() > 0 else None


def member_centroids(
    members: Mapping[Hashable, Iterable[Hashable]], row_of: Mapping[Hashable, int], x: np.ndarray
) -> dict[Hashable, np.ndarray]:
    """Unit mean vector of each cluster's members that have a row in ``x`` (zeros when none has)."""
    out: dict[Hashable, np.ndarray] = {}
    dim = x.shape[1] if x.ndim == 2 else 0
    for key, ms in members.items():
        rows = [row_of[m] for m in ms if m in row_of]
        mean = x[rows].mean(axis=0) if rows else np.zeros(dim)
        out[key] = normalise_rows(mean) if dim else mean
    return out
