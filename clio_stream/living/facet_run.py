"""One facet's re-clustering, before anything is written: base clusters warm-started from the current centroids,
matched to the previous version's leaves, named only where new or changed, and the hierarchy patched or rebuilt.

A matched leaf keeps its id, and its name and summary without an LLM call when it barely changed
(``living.matching.changed``); fresh ids come from the facet's ``IdAllocator``. The upper levels are patched
when few leaves are new (``living.lineage.patch_structure``), else rebuilt with the batch stage
(``stages.hierarchy.build_hierarchy``) and given old parent ids by member overlap. Every id that disappears
gets a successor in the lineage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from clio_stream.domain.facets import Facet
from clio_stream.embedding import EmbeddingBackend
from clio_stream.living.ids import IdAllocator
from clio_stream.living.lineage import (
    Centroid,
    adopt_parent_ids,
    lineage_upwards,
    parent_lineage,
    patch_structure,
    place_leaves,
)
from clio_stream.living.matching import MatchThresholds, Matching, changed, match_clusters, member_centroids
from clio_stream.living.population import Populations
from clio_stream.living.stored import StoredFacet
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.privacy.visibility import describable
from clio_stream.settings import ClioSettings
from clio_stream.stages.base_clusters import base_clusters
from clio_stream.stages.hierarchy import build_hierarchy, private_leaves
from clio_stream.stages.naming import name_clusters, rename_parents

log = logging.getLogger(__name__)


@dataclass
class FacetRun:
    """One facet's re-clustering before anything is written."""

    hierarchy: FacetHierarchy
    labels: np.ndarray
    centres: np.ndarray
    store_clusters: dict[str, int]  # leaf id -> k-means index (the online cluster id)
    lineage: dict[str, str]
    ids: IdAllocator
    info: dict[str, Any]
    llm: AskStats  # prompts of this facet's naming and hierarchy


@dataclass
class LivingLeaves:
    """The new base clusters as leaves: matched ones under their old ids (and names, when barely changed)."""

    leaves: list[ClusterNode]
    leaf_id: dict[int, str]  # k-means index -> leaf id
    matching: Matching
    reused: int  # leaves that kept their old name without an LLM call
    named: int  # leaves named by the LLM


@dataclass
class UpperLevels:
    hierarchy: FacetHierarchy
    mode: str  # "patched", "built" (no previous version) or "rebuilt"
    parents_reused: int
    parents_renamed: int


def recluster_facet(
    facet: Facet,
    s: StoredFacet,
    old: FacetHierarchy | None,
    ids: IdAllocator,
    init: np.ndarray | None,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    thresholds: MatchThresholds,
    users_of: Mapping[str, str] | None = None,
    fitted: tuple[np.ndarray, np.ndarray] | None = None,
    populations: Populations | None = None,
) -> FacetRun:
    """Cluster, match to ``old``, name what is new or changed, and build or patch the hierarchy (no writes).

    ``users_of`` (conversation id -> keyed user hash): leaves under the privacy minimums are withheld before
    the upper levels are named, so their names never reach a parent's (``stages.hierarchy.private_leaves``).
    ``fitted``: (labels, unit centres) of a fit already made (``living.facet_pass``), instead of fitting here;
    ``populations``: the window's numbers of each cluster, which the minimums then count (``living.population``).
    """
    naming_stats, tree_stats = AskStats(), AskStats()
    t0 = time.perf_counter()
    labels, centres = fitted if fitted is not None else base_clusters(s.vectors, settings, init=init)
    row_of = {cid: i for i, cid in enumerate(s.conversation_ids)}

    def centroid_of(members: Iterable[str]) -> np.ndarray:
        return member_centroids({0: members}, row_of, s.vectors)[0]

    old_leaves = {nid: n for nid, n in old.nodes.items() if n.level == 0} if old is not None else {}
    known: set[str] = set().union(*(set(n.conversation_ids) for n in old_leaves.values())) if old_leaves else set()
    living = _living_leaves(facet, s, labels, centres, old_leaves, known, ids, llm, embedder, settings, thresholds,
                            naming_stats)
    if populations is not None:
        populations.set_leaves(living.leaves, {lid: c for c, lid in living.leaf_id.items()})
    leaves = living.leaves if users_of is None else private_leaves(living.leaves, users_of, settings)
    t_leaves = time.perf_counter() - t0
    upper = _upper_levels(facet, leaves, living, old, old_leaves, ids, centroid_of, known, centres, llm, embedder,
                          settings, thresholds, tree_stats)
    h = upper.hierarchy
    lineage = _lineage(old, h, living, centroid_of)
    survived = sum(1 for oid in old_leaves if oid in h.nodes)
    info = {
        "mode": upper.mode,
        "leaves": len(leaves),
        "old_leaves": len(old_leaves),
        "leaves_reused": living.reused,
        "leaves_renamed": living.named,
        "parents_reused": upper.parents_reused,
        "parents_renamed": upper.parents_renamed,
        "ids_survived": survived,
        "id_survival": survived / len(old_leaves) if old_leaves else None,
        "events": living.matching.counts(),
        "lineage": len(lineage),
        "naming_prompts": naming_stats.prompts,
        "hierarchy_prompts": tree_stats.prompts,
        "seconds_leaves": round(t_leaves, 3),
        "seconds_hierarchy": round(time.perf_counter() - t0 - t_leaves, 3),
    }
    log.info("%s: %d leaves (%d reused, %d named), hierarchy %s (%d parents renamed), id survival %s",
             facet.name, len(leaves), living.reused, living.named, upper.mode, upper.parents_renamed,
             f"{info['id_survival']:.2f}" if info["id_survival"] is not None else "n/a")
    used = AskStats()
    used.add(naming_stats)
    used.add(tree_stats)
    return FacetRun(hierarchy=h, labels=labels, centres=centres,
                    store_clusters={lid: int(c) for c, lid in living.leaf_id.items()}, lineage=lineage, ids=ids,
                    info=info, llm=used)


def _living_leaves(
    facet: Facet,
    s: StoredFacet,
    labels: np.ndarray,
    centres: np.ndarray,
    old_leaves: Mapping[str, ClusterNode],
    known: set[str],
    ids: IdAllocator,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    thresholds: MatchThresholds,
    stats: AskStats,
) -> LivingLeaves:
    """Leaves: old ids for matches, old names where barely changed, the LLM for the rest."""
    row_of = {cid: i for i, cid in enumerate(s.conversation_ids)}
    members = {c: [s.conversation_ids[i] for i in np.flatnonzero(labels == c)] for c in range(len(centres))}
    members = {c: m for c, m in members.items() if m}
    matching = match_clusters(
        member_centroids({k: n.conversation_ids for k, n in old_leaves.items()}, row_of, s.vectors),
        {k: set(n.conversation_ids) for k, n in old_leaves.items()},
        {c: centres[c] for c in members}, {c: set(m) for c, m in members.items()},
        min_similarity=thresholds.min_similarity, weight=thresholds.weight)
    leaf_id: dict[int, str] = {}
    reused: dict[int, ClusterNode] = {}
    for c in sorted(members):
        oid = matching.new_to_old.get(c)
        if oid is None:
            leaf_id[c] = ids.new(0)
            continue
        leaf_id[c] = str(oid)
        if not changed(old_leaves[oid].conversation_ids, members[c], matching.cosine[(oid, c)], thresholds,
                       known=known):
            reused[c] = old_leaves[oid]
    to_name = [c for c in sorted(members) if c not in reused]
    names: dict[int, tuple[str, str]] = {}
    if to_name:
        sub = np.full(len(labels), -1, dtype=np.int64)
        for j, c in enumerate(to_name):
            sub[labels == c] = j
        names = dict(zip(to_name, name_clusters(facet, s.values, s.vectors, sub, centres[to_name], llm, embedder,
                                                 settings=settings, stats=stats)))
    leaves = []
    for c in sorted(members):
        summary, name = (reused[c].given_summary, reused[c].given_name) if c in reused else names[c]
        leaves.append(ClusterNode(id=leaf_id[c], facet=facet.name, name=name, summary=summary, level=0,
                                  conversation_ids=members[c]))
    return LivingLeaves(leaves=leaves, leaf_id=leaf_id, matching=matching, reused=len(reused), named=len(to_name))


def _upper_levels(
    facet: Facet,
    leaves: list[ClusterNode],
    living: LivingLeaves,
    old: FacetHierarchy | None,
    old_leaves: Mapping[str, ClusterNode],
    ids: IdAllocator,
    centroid_of: Centroid,
    known: set[str],
    centres: np.ndarray,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    thresholds: MatchThresholds,
    stats: AskStats,
) -> UpperLevels:
    """Patch the previous hierarchy when little is new, else rebuild it and adopt old parent ids."""
    fresh = sum(1 for c in living.leaf_id if c not in living.matching.new_to_old)
    lost = len(old_leaves) - len(living.matching.pairs)
    if (old is not None and old.depth() >= 2 and len(leaves) > settings.min_top_level_size
            and all(n.parent_id in old.nodes for n in old_leaves.values())
            and fresh <= thresholds.rebuild_fraction * len(leaves)
            and lost <= thresholds.rebuild_fraction * len(old_leaves)):
        old_parents = {nid: n for nid, n in old.nodes.items() if n.level == 1}
        placement = place_leaves(leaves, old, {lid: centres[c] for c, lid in living.leaf_id.items()},
                                 {k: centroid_of(n.conversation_ids) for k, n in old_parents.items()})
        h = patch_structure(leaves, placement, old)
        renamed = _rename_changed_parents(facet, h, old, centroid_of, thresholds, known, llm, embedder, settings,
                                          stats)
        return UpperLevels(h, "patched", sum(1 for n in h.nodes.values() if n.level > 0) - renamed, renamed)
    built = build_hierarchy(facet, leaves, llm, embedder, settings=settings, stats=stats)
    h, restored = adopt_parent_ids(built, old, ids, centroid_of, thresholds, known)
    renamed = sum(1 for n in h.nodes.values() if n.level > 0) - restored  # LLM names kept
    return UpperLevels(h, "built" if old is None else "rebuilt", restored, renamed)


def _lineage(old: FacetHierarchy | None, h: FacetHierarchy, living: LivingLeaves,
             centroid_of: Centroid) -> dict[str, str]:
    """Old id -> successor for every id of ``old`` that is not in ``h`` (empty without a previous version)."""
    lineage: dict[str, str] = {}
    if old is None:
        return lineage
    for oid, c in living.matching.successors().items():
        if oid not in h.nodes and c in living.leaf_id:
            lineage[str(oid)] = living.leaf_id[int(c)]  # type: ignore[call-overload]
    lineage.update(parent_lineage(old, h, centroid_of))
    return lineage_upwards(old, h, lineage)


def _rename_changed_parents(
    facet: Facet,
    h: FacetHierarchy,
    old: FacetHierarchy,
    centroid_of: Centroid,
    thresholds: MatchThresholds,
    known: set[str],
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: ClioSettings,
    stats: AskStats,
) -> int:
    """Rename (bottom-up, one LLM batch per level) the patched parents whose members changed; returns how many."""
    renamed = 0
    for level in range(1, h.depth()):
        todo = []
        for nid, node in h.nodes.items():
            if node.level != level:
                continue
            prev = old.nodes[nid]
            cos = float(centroid_of(prev.conversation_ids) @ centroid_of(node.conversation_ids))
            if changed(prev.conversation_ids, node.conversation_ids, cos, thresholds, known=known):
                todo.append(node)
        if not todo:
            continue
        kids = [[h.nodes[c] for c in p.children] for p in todo]
        targets = []
        for ch in kids:
            e = embedder.encode([f"{c.name}. {c.summary}" for c in ch]).mean(axis=0)
            targets.append(e / max(float(np.linalg.norm(e)), 1e-12))
        named = rename_parents(facet, [[(c.name, c.summary, c.size) for c in describable(ch)] for ch in kids],
                               [p.name for p in todo], llm, embedder, settings=settings,
                               seed=settings.seed + 1000 * level + 3, stats=stats, targets=np.stack(targets))
        for p, (summary, name) in zip(todo, named):
            p.name, p.summary = name, summary
        renamed += len(todo)
    return renamed

