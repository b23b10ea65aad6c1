"""Re-clustering of what the streaming workers stored: the batch Clio stages over Qdrant's points.

One run: take the cluster-wide lock, scroll every hierarchy facet's vectors and
values, k-means them warm-started from the current centroids, then keep the
clusters *living* rather than rebuilt (clio_stream.living.matching):

* new leaves are matched to the previous published version's leaves (centroid
  cosine + member overlap, optimal assignment); a matched leaf keeps its id, and
  keeps its name and summary without an LLM call when it barely changed; only
  new or changed leaves are named by the LLM;
* fresh ids come from a per-facet counter in the store (``idcounter:<facet>``),
  so a number is never reused for another cluster;
* the upper levels are patched when few leaves are new: each leaf goes under
  its previous parent (a new leaf under the parent that held most of its
  members, or the nearest one), emptied parents disappear, and only parents
  whose members changed are renamed. When too much is new, the hierarchy is
  rebuilt with the same stage functions ``run_clio`` uses and the new parents
  adopt old parent ids by member overlap;
* every id that disappears gets a successor in the version's lineage, which
  the API follows for old links.

Then apply the privacy rules and write the version through ``clio_stream.living.versions.write_version``,
the write path it shares with ``bootstrap-clusters``: version number reserved under the clustering
lock, centroids and version-scoped labels, the site folder, a fenced commit, then the pointers
(see that module for the order and why a kill at any step leaves the last good version served).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from clio_stream.stages.base_clusters import kmeans
from clio_stream.embedding import EmbeddingBackend
from clio_stream.domain.facets import Facet
from clio_stream.stages.hierarchy import build_hierarchy, slug
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.living.matching import MatchThresholds, Matching, changed, match_clusters, member_centroids, successor
from clio_stream.stages.naming import name_clusters, rename_parents
from clio_stream.domain.vectors import normalise_rows
from clio_stream.online import OnlineKMeans
from clio_stream.privacy import annotate, audit, describable, known_audits, mark_below_minimums, user_key_of
from clio_stream.settings import ClioSettings
from clio_stream.store import QdrantStore
from clio_stream.stages.trends import annotate_trends
from clio_stream.living.versions import (
    FacetLabels,
    VersionWrite,
    clustering_lease,
    job_owner,
    recover,
    reserve_version,
    write_version,
)
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy

log = logging.getLogger(__name__)

Centroid = Callable[[Iterable[str]], np.ndarray]  # members -> unit mean vector of their stored values

ID_COUNTER_KEY = "idcounter:{facet}"  # store state: next free number per level, per facet


@dataclass
class StoredFacet:
    """One hierarchy facet's embedded values as stored: point ids, vectors, conversation ids, texts."""

    point_ids: list[str]
    vectors: np.ndarray
    conversation_ids: list[str]
    values: list[str]


@dataclass
class ReclusterReport:
    """What one run did; the living-cluster numbers say how much of the previous version survived.

    ``leaves_reused``: matched leaves that kept their name without an LLM call;
    ``leaves_renamed``: leaves named by the LLM (new or changed);
    ``id_survival``: share of the previous version's leaf ids still present (None without one);
    ``facets``: per facet details (hierarchy mode, matching events, prompts by stage).
    """

    version: int
    points: dict[str, int] = field(default_factory=dict)
    clusters: dict[str, int] = field(default_factory=dict)
    llm_prompts: int = 0
    seconds: float = 0.0
    published: Path | None = None
    leaves_reused: int = 0
    leaves_renamed: int = 0
    parents_reused: int = 0
    parents_renamed: int = 0
    id_survival: float | None = None
    lineage: int = 0
    facets: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_stored(store: QdrantStore, facets: Sequence[Facet]) -> tuple[dict[str, StoredFacet], dict[str, dict[str, Any]]]:
    """Vectors of hierarchy facets, and per conversation its facet payloads (for values, stats, users)."""
    stored: dict[str, StoredFacet] = {}
    per_conv: dict[str, dict[str, Any]] = {}
    for f in facets:
        ids: list[str] = []
        vecs: list[np.ndarray] = []
        convs: list[str] = []
        values: list[str] = []
        for batch_ids, vectors, payloads in store.scroll_vectors(f.name):
            norms = np.linalg.norm(vectors, axis=1) if len(vectors) else []
            for pid, vec, norm, payload in zip(batch_ids, vectors, norms, payloads):
                cid = payload.get("conversation_id")
                if not cid:
                    continue
                entry = per_conv.setdefault(cid, {"user_hash": payload.get("user_hash"),
                                                  "timestamp": payload.get("timestamp"), "values": {}})
                entry["values"][f.name] = (payload.get("value"), payload.get("numeric"))
                if f.has_hierarchy and payload.get("value") and norm > 0:
                    ids.append(pid)
                    vecs.append(vec)
                    convs.append(cid)
                    values.append(payload["value"])
        if f.has_hierarchy:
            dim = vecs[0].shape[0] if vecs else 0
            stored[f.name] = StoredFacet(ids, normalise_rows(np.asarray(vecs, dtype=np.float32).reshape(len(vecs), dim)),
                                         convs, values)
    return stored, per_conv


# --------------------------------------------------------------------------- ids


@dataclass
class IdAllocator:
    """Fresh node ids ``<prefix>-l<level>-<n>``: numbers only grow, so an id never names two clusters."""

    prefix: str
    next_by_level: dict[int, int] = field(default_factory=dict)

    @classmethod
    def restore(cls, prefix: str, doc: Mapping[str, Any] | None, existing: Iterable[str] = ()) -> IdAllocator:
        """From the stored counter, raised past every id in ``existing`` (ids published before counters existed)."""
        nxt = {int(k): int(v) for k, v in dict((doc or {}).get("next") or {}).items()}
        pattern = re.compile(rf"^{re.escape(prefix)}-l(\d+)-(\d+)$")
        for nid in existing:
            m = pattern.match(str(nid))
            if m:
                level, n = int(m.group(1)), int(m.group(2))
                nxt[level] = max(nxt.get(level, 0), n + 1)
        return cls(prefix, nxt)

    def new(self, level: int) -> str:
        n = self.next_by_level.get(level, 0)
        self.next_by_level[level] = n + 1
        return f"{self.prefix}-l{level}-{n}"

    def state(self) -> dict[str, Any]:
        return {"next": {str(k): v for k, v in sorted(self.next_by_level.items())}}


# --------------------------------------------------------------------------- k-means warm start


def warm_start_centroids(x: np.ndarray, init: np.ndarray | None, counts: np.ndarray | None, k: int,
                         seed: int) -> np.ndarray | None:
    """``k`` starting centroids that keep the current ones, so k-means keeps clusters where they were.

    Fewer wanted: the ``k`` most populated current centroids. More wanted (the data
    grew): the current ones plus greedy k-means++ picks for the rest, which land
    where the current centroids cover the data worst (new topics). None when
    there is nothing to start from or too few distinct points.
    """
    if init is None or len(init) == 0 or k <= 0 or len(x) < k or init.shape[1] != x.shape[1]:
        return None
    init = normalise_rows(np.asarray(init, dtype=np.float32))
    if k <= len(init):
        order = np.argsort(-np.asarray(counts), kind="stable") if counts is not None and len(counts) == len(init) \
            else np.arange(len(init))
        return init[np.sort(order[:k])]
    rng = np.random.default_rng(seed)
    centres = [c for c in init]
    closest = np.clip(2.0 - 2.0 * (x @ init.T).max(axis=1), 0.0, None).astype(np.float64)
    n_local = 2 + int(np.log(k))
    for _ in range(k - len(init)):
        total = closest.sum()
        if total <= 1e-12:
            return None
        cand = rng.choice(len(x), size=min(n_local, len(x)), p=closest / total)
        dist = np.clip(2.0 - 2.0 * (x @ x[cand].T), 0.0, None)
        best = int(np.argmin(np.minimum(closest[:, None], dist).sum(axis=0)))
        centres.append(x[cand[best]])
        closest = np.minimum(closest, dist[:, best])
    return np.asarray(centres, dtype=np.float32)


def n_leaves(settings: Any, n: int) -> int:
    """Number of base clusters for ``n`` points (the settings' rule, kept within 1..n)."""
    return max(1, min(n, int(settings.n_base_clusters(n))))


def _warm_start(store: QdrantStore, facet: str, x: np.ndarray, k: int, seed: int) -> np.ndarray | None:
    """Starting centroids for ``k`` clusters from the facet's current online model, if there is one."""
    doc = store.get_centroids(facet)
    if not doc:
        return None
    model = OnlineKMeans.from_state(doc)
    return warm_start_centroids(x, model.unit_centroids, np.asarray(model.counts), k, seed)


# --------------------------------------------------------------------------- hierarchy


def place_leaves(
    leaves: Sequence[ClusterNode],
    old: FacetHierarchy,
    leaf_centroids: Mapping[str, np.ndarray],
    parent_centroids: Mapping[str, np.ndarray],
) -> dict[str, str]:
    """Leaf id -> level-1 parent id of ``old``, for patching the previous hierarchy.

    A surviving leaf stays under its previous parent; a new one goes under the parent
    that held most of its members before, or else the parent whose centroid is nearest.
    """
    parents = {nid: n for nid, n in old.nodes.items() if n.level == 1}
    parent_of_conv: dict[str, str] = {}
    for n in old.nodes.values():
        if n.level == 0 and n.parent_id in parents:
            for cid in n.conversation_ids:
                parent_of_conv[cid] = n.parent_id  # type: ignore[assignment]
    members = {pid: p.conversation_ids for pid, p in parents.items()}
    out: dict[str, str] = {}
    for leaf in leaves:
        prev = old.nodes.get(leaf.id)
        if prev is not None and prev.level == 0 and prev.parent_id in parents:
            out[leaf.id] = prev.parent_id  # type: ignore[assignment]
            continue
        votes = Counter(parent_of_conv[c] for c in leaf.conversation_ids if c in parent_of_conv)
        if votes:
            out[leaf.id] = votes.most_common(1)[0][0]  # ties: the first parent seen
            continue
        found = successor(leaf.conversation_ids, members, centroid=leaf_centroids.get(leaf.id),
                          candidate_centroids=parent_centroids)
        out[leaf.id] = str(found) if found is not None else next(iter(parents))
    return out


def patch_structure(leaves: Sequence[ClusterNode], placement: Mapping[str, str], old: FacetHierarchy) -> FacetHierarchy:
    """The previous hierarchy's upper levels over the new leaves: old parent ids, names and links; empty parents dropped.

    Members are recomputed bottom-up; children and roots are ordered by size, as ``build_hierarchy`` orders them.
    """
    nodes: dict[str, ClusterNode] = {leaf.id: leaf.model_copy(update={"parent_id": None}) for leaf in leaves}
    children: dict[str, list[str]] = {}
    for leaf in leaves:
        children.setdefault(placement[leaf.id], []).append(leaf.id)
    while children:
        above: dict[str, list[str]] = {}
        for pid in [p for p in old.nodes if p in children]:  # the old order: deterministic
            prev = old.nodes[pid]
            kids = sorted(children[pid], key=lambda c: -nodes[c].size)
            nodes[pid] = ClusterNode(id=pid, facet=prev.facet, name=prev.name, summary=prev.summary, level=prev.level,
                                     children=kids, conversation_ids=[c for k in kids for c in nodes[k].conversation_ids])
            for k in kids:
                nodes[k].parent_id = pid
            if prev.parent_id is not None and prev.parent_id in old.nodes:
                above.setdefault(prev.parent_id, []).append(pid)
        children = above
    roots = sorted((n for n in nodes.values() if n.parent_id is None), key=lambda n: -n.size)
    return FacetHierarchy(facet=old.facet, nodes=nodes, root_ids=[n.id for n in roots])


def adopt_parent_ids(
    h: FacetHierarchy,
    old: FacetHierarchy | None,
    ids: IdAllocator,
    centroid_of: Centroid,
    thresholds: MatchThresholds,
    known: set[str],
) -> tuple[FacetHierarchy, int]:
    """Give a freshly built hierarchy's parents stable ids: old ids where members match, fresh ones otherwise.

    A matched parent that barely changed also gets its old name back (names do not flicker).
    ``centroid_of(members) -> unit vector``. Returns the relabelled hierarchy and the number of names restored.
    """
    mapping: dict[str, str] = {}
    restored: dict[str, ClusterNode] = {}
    for level in range(1, h.depth()):
        new_p = {nid: n for nid, n in h.nodes.items() if n.level == level}
        old_p = {nid: n for nid, n in old.nodes.items() if n.level == level} if old is not None else {}
        matched: dict[str, str] = {}
        cos: dict[tuple[str, str], float] = {}
        if old_p and new_p:
            m = match_clusters({k: centroid_of(n.conversation_ids) for k, n in old_p.items()},
                               {k: set(n.conversation_ids) for k, n in old_p.items()},
                               {k: centroid_of(n.conversation_ids) for k, n in new_p.items()},
                               {k: set(n.conversation_ids) for k, n in new_p.items()},
                               min_similarity=thresholds.min_similarity, weight=thresholds.weight)
            matched = {str(k): str(v) for k, v in m.new_to_old.items()}
            cos = {(str(o), str(n)): v for (o, n), v in m.cosine.items()}
        for nid, node in new_p.items():
            if nid in matched:
                oid = matched[nid]
                mapping[nid] = oid
                if not changed(old_p[oid].conversation_ids, node.conversation_ids, cos[(oid, nid)], thresholds,
                               known=known):
                    restored[nid] = old_p[oid]
            else:
                mapping[nid] = ids.new(level)

    def rid(x: str | None) -> str | None:
        return None if x is None else mapping.get(x, x)

    nodes: dict[str, ClusterNode] = {}
    for nid, n in h.nodes.items():
        update: dict[str, Any] = {"id": rid(nid), "parent_id": rid(n.parent_id), "children": [rid(c) for c in n.children]}
        if nid in restored:
            update.update(name=restored[nid].name, summary=restored[nid].summary)
        nodes[rid(nid)] = n.model_copy(update=update)  # type: ignore[index]
    return FacetHierarchy(facet=h.facet, nodes=nodes, root_ids=[rid(r) for r in h.root_ids]), len(restored)  # type: ignore[misc]


def parent_lineage(old: FacetHierarchy, new: FacetHierarchy, centroid_of: Centroid) -> dict[str, str]:
    """Old parent id -> successor, for every old parent not in ``new``: the node of its level holding most of its members.

    When its level no longer exists, the successor is among the new top level.
    """
    out: dict[str, str] = {}
    by_level: dict[int, dict[str, list[str]]] = {}
    for nid, n in new.nodes.items():
        by_level.setdefault(n.level, {})[nid] = n.conversation_ids
    top = {r: new.nodes[r].conversation_ids for r in new.root_ids}
    cents: dict[str, np.ndarray] = {}
    for oid, o in old.nodes.items():
        if o.level == 0 or oid in new.nodes:
            continue
        cands = by_level.get(o.level) or top
        for k in cands:
            if k not in cents:
                cents[k] = centroid_of(cands[k])
        found = successor(o.conversation_ids, cands, centroid=centroid_of(o.conversation_ids),
                          candidate_centroids={k: cents[k] for k in cands})
        if found is not None:
            out[oid] = str(found)
    return out


def lineage_upwards(old: FacetHierarchy, new: FacetHierarchy, lineage: Mapping[str, str]) -> dict[str, str]:
    """``lineage`` completed for old nodes that found no successor (all their members gone): the nearest old
    ancestor that survives, or that ancestor's successor. An old link then lands on the broader topic."""
    out = dict(lineage)
    for oid, o in old.nodes.items():
        if oid in new.nodes or oid in out:
            continue
        seen = {oid}
        up = o.parent_id
        while up is not None and up in old.nodes and up not in seen:
            seen.add(up)
            if up in new.nodes:
                out[oid] = up
                break
            if up in out:
                out[oid] = out[up]
                break
            up = old.nodes[up].parent_id
    return out


def _rename_changed_parents(
    facet: Facet,
    h: FacetHierarchy,
    old: FacetHierarchy,
    centroid_of: Centroid,
    thresholds: MatchThresholds,
    known: set[str],
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: Any,
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


# --------------------------------------------------------------------------- one facet


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


def recluster_facet(
    facet: Facet,
    s: StoredFacet,
    old: FacetHierarchy | None,
    ids: IdAllocator,
    init: np.ndarray | None,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    settings: Any,
    thresholds: MatchThresholds,
    users_of: Mapping[str, str] | None = None,
) -> FacetRun:
    """Cluster, match to ``old``, name what is new or changed, and build or patch the hierarchy (no writes).

    ``users_of`` (conversation id -> keyed user hash): leaves under the privacy minimums are withheld before
    the upper levels are named, so their names never reach a parent's (see ``privacy.mark_below_minimums``).
    """
    naming_stats, tree_stats = AskStats(), AskStats()
    t0 = time.perf_counter()
    x = s.vectors
    k = n_leaves(settings, len(s.point_ids))
    labels, centres = kmeans(x, k, seed=settings.seed, args=settings.kmeans_args, init=init)
    row_of = {cid: i for i, cid in enumerate(s.conversation_ids)}

    def centroid_of(members: Iterable[str]) -> np.ndarray:
        return member_centroids({0: members}, row_of, x)[0]

    new_members = {c: [s.conversation_ids[i] for i in np.flatnonzero(labels == c)] for c in range(len(centres))}
    new_members = {c: m for c, m in new_members.items() if m}
    old_leaves = {nid: n for nid, n in old.nodes.items() if n.level == 0} if old is not None else {}
    known: set[str] = set().union(*(set(n.conversation_ids) for n in old_leaves.values())) if old_leaves else set()
    matching: Matching = match_clusters(
        member_centroids({k_: n.conversation_ids for k_, n in old_leaves.items()}, row_of, x),
        {k_: set(n.conversation_ids) for k_, n in old_leaves.items()},
        {c: centres[c] for c in new_members}, {c: set(m) for c, m in new_members.items()},
        min_similarity=thresholds.min_similarity, weight=thresholds.weight)
    new_to_old = matching.new_to_old

    # Leaves: old ids for matches, old names where barely changed, the LLM for the rest.
    leaf_id: dict[int, str] = {}
    reused: dict[int, ClusterNode] = {}
    for c in sorted(new_members):
        oid = new_to_old.get(c)
        if oid is None:
            leaf_id[c] = ids.new(0)
            continue
        leaf_id[c] = str(oid)
        if not changed(old_leaves[oid].conversation_ids, new_members[c], matching.cosine[(oid, c)], thresholds,
                       known=known):
            reused[c] = old_leaves[oid]
    to_name = [c for c in sorted(new_members) if c not in reused]
    names: dict[int, tuple[str, str]] = {}
    if to_name:
        sub = np.full(len(labels), -1, dtype=np.int64)
        for j, c in enumerate(to_name):
            sub[labels == c] = j
        names = dict(zip(to_name, name_clusters(facet, s.values, x, sub, centres[to_name], llm, embedder,
                                                 settings=settings, stats=naming_stats)))
    leaves = []
    for c in sorted(new_members):
        summary, name = (reused[c].summary, reused[c].name) if c in reused else names[c]
        leaves.append(ClusterNode(id=leaf_id[c], facet=facet.name, name=name, summary=summary, level=0,
                                  conversation_ids=new_members[c]))
    if users_of is not None:
        mark_below_minimums(leaves, users_of, min_conversations=settings.min_cluster_conversations,
                            min_users=settings.min_cluster_users)
    t_leaves = time.perf_counter() - t0

    # Upper levels: patch the previous hierarchy when little is new, else rebuild and adopt old ids.
    fresh = sum(1 for c in new_members if c not in new_to_old)
    lost = len(old_leaves) - len(matching.pairs)
    patchable = (old is not None and old.depth() >= 2 and len(leaves) > settings.min_top_level_size
                 and all(n.parent_id in old.nodes for n in old_leaves.values())
                 and fresh <= thresholds.rebuild_fraction * len(leaves)
                 and lost <= thresholds.rebuild_fraction * len(old_leaves))
    parents_reused = parents_renamed = 0
    if patchable:
        assert old is not None
        old_parents = {nid: n for nid, n in old.nodes.items() if n.level == 1}
        placement = place_leaves(leaves, old, {leaf_id[c]: centres[c] for c in new_members},
                                 {k_: centroid_of(n.conversation_ids) for k_, n in old_parents.items()})
        h = patch_structure(leaves, placement, old)
        parents_renamed = _rename_changed_parents(facet, h, old, centroid_of, thresholds, known, llm, embedder,
                                                  settings, tree_stats)
        parents_reused = sum(1 for n in h.nodes.values() if n.level > 0) - parents_renamed
        mode = "patched"
    else:
        built = build_hierarchy(facet, leaves, llm, embedder, settings=settings, stats=tree_stats)
        h, parents_reused = adopt_parent_ids(built, old, ids, centroid_of, thresholds, known)
        parents_renamed = sum(1 for n in h.nodes.values() if n.level > 0) - parents_reused  # LLM names kept
        mode = "built" if old is None else "rebuilt"

    lineage: dict[str, str] = {}
    if old is not None:
        for oid, c in matching.successors().items():
            if oid not in h.nodes and c in leaf_id:
                lineage[str(oid)] = leaf_id[int(c)]  # type: ignore[call-overload]
        lineage.update(parent_lineage(old, h, centroid_of))
        lineage = lineage_upwards(old, h, lineage)
    survived = sum(1 for oid in old_leaves if oid in h.nodes)
    info = {
        "mode": mode,
        "leaves": len(leaves),
        "old_leaves": len(old_leaves),
        "leaves_reused": len(reused),
        "leaves_renamed": len(to_name),
        "parents_reused": parents_reused,
        "parents_renamed": parents_renamed,
        "ids_survived": survived,
        "id_survival": survived / len(old_leaves) if old_leaves else None,
        "events": matching.counts(),
        "lineage": len(lineage),
        "naming_prompts": naming_stats.prompts,
        "hierarchy_prompts": tree_stats.prompts,
        "seconds_leaves": round(t_leaves, 3),
        "seconds_hierarchy": round(time.perf_counter() - t0 - t_leaves, 3),
    }
    log.info("%s: %d leaves (%d reused, %d named), hierarchy %s (%d parents renamed), id survival %s",
             facet.name, len(leaves), len(reused), len(to_name), mode, parents_renamed,
             f"{info['id_survival']:.2f}" if info["id_survival"] is not None else "n/a")
    used = AskStats()
    used.add(naming_stats)
    used.add(tree_stats)
    return FacetRun(hierarchy=h, labels=labels, centres=centres,
                    store_clusters={leaf_id[c]: int(c) for c in new_members}, lineage=lineage, ids=ids, info=info,
                    llm=used)


def _previous(publish_dir: Path) -> tuple[dict[str, FacetHierarchy], set[str]]:
    """The current published version's hierarchies and its lineage's ids; nothing when unreadable."""
    from clio_stream.publish import load_current

    try:
        prev = load_current(publish_dir)
    except Exception:  # noqa: BLE001 - a broken previous version must not stop re-clustering: start afresh
        log.warning("could not load the current published version; ids start afresh", exc_info=True)
        return {}, set()
    if prev is None:
        return {}, set()
    return dict(prev.result.hierarchies), set(prev.lineage) | set(prev.lineage.values())


# --------------------------------------------------------------------------- the job


def recluster_once(
    store: QdrantStore,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    facets: Sequence[Facet],
    settings: ClioSettings,
    *,
    publish_dir: Path,
    owner: str | None = None,
    thresholds: MatchThresholds | None = None,
) -> ReclusterReport | None:
    """Run one re-clustering; None when another process holds the lock or nothing is stored yet.

    ``thresholds``: matching knobs (default: from ``settings`` where it defines them, else built-in defaults).
    """
    from clio_stream.deletion import remove_denied
    from clio_stream.publish import write_version_folder

    owner = owner or job_owner("recluster")
    lease = clustering_lease(store, owner, settings.recluster_lock_ttl_s)
    if lease is None:
        log.info("re-clustering skipped: another clustering job holds the lock")
        return None
    t0 = time.perf_counter()
    thresholds = thresholds or MatchThresholds.from_settings(settings)
    with lease:
        recover(store, lease, publish_dir)  # a job killed after its commit: finish it first
        stored, per_conv = load_stored(store, facets)
        if not any(len(s.point_ids) for s in stored.values()):
            log.info("re-clustering skipped: nothing stored yet")
            return None
        tree = [f for f in facets if f.has_hierarchy and len(stored.get(f.name, StoredFacet([], np.zeros((0, 0)), [], [])).point_ids)]
        version = reserve_version(store, lease, [f.name for f in tree], publish_dir)
        report = ReclusterReport(version=version)
        stats = AskStats()
        old_hierarchies, old_lineage_ids = _previous(publish_dir)

        conv_ids = sorted(per_conv)
        conversations = [Conversation(id=cid, messages=[Message(role="user", content="")],
                                      user_id=per_conv[cid]["user_hash"], timestamp=per_conv[cid]["timestamp"])
                         for cid in conv_ids]
        facet_values = [ConversationFacets(conversation_id=cid, values={
            f.name: FacetValue(facet=f.name, value=per_conv[cid]["values"].get(f.name, (None, None))[0],
                               numeric=per_conv[cid]["values"].get(f.name, (None, None))[1]) for f in facets})
            for cid in conv_ids]

        users_of = {c.id: user_key_of(c, settings.user_id_hash_key) for c in conversations}
        runs: dict[str, FacetRun] = {}
        models: dict[str, OnlineKMeans] = {}
        survived = old_total = 0
        for f in tree:
            s = stored[f.name]
            old = old_hierarchies.get(f.name)
            prefix = f"{slug(f.name)}"
            ids = IdAllocator.restore(prefix, store.get_state(ID_COUNTER_KEY.format(facet=f.name)),
                                      list(old.nodes if old else []) + sorted(old_lineage_ids))
            init = _warm_start(store, f.name, s.vectors, n_leaves(settings, len(s.point_ids)), settings.seed)
            run = recluster_facet(f, s, old, ids, init, llm, embedder, settings, thresholds, users_of=users_of)
            stats.add(run.llm)
            h = run.hierarchy
            annotate(h, conversations, facet_values, facets, min_conversations=settings.min_cluster_conversations,
                     min_users=settings.min_cluster_users, user_hash_key=settings.user_id_hash_key)
            if settings.audit_cluster_names:
                audit(h, llm, settings=settings, stats=stats, known=known_audits(old))
            annotate_trends(h, {cid: per_conv[cid]["timestamp"] for cid in conv_ids},
                            None if old is None else {c for n in old.leaves() for c in n.conversation_ids},
                            window_s=settings.trend_window_s, windows=settings.trend_windows,
                            min_growth=settings.emerging_min_growth, top=settings.emerging_top)
            runs[f.name] = run
            models[f.name] = OnlineKMeans.from_batch(s.vectors, run.labels, centroids=run.centres, version=version,
                                                     facet=f.name)
            report.points[f.name] = len(s.point_ids)
            report.clusters[f.name] = len(h.leaves())
            report.facets[f.name] = run.info
            report.leaves_reused += run.info["leaves_reused"]
            report.leaves_renamed += run.info["leaves_renamed"]
            report.parents_reused += run.info["parents_reused"]
            report.parents_renamed += run.info["parents_renamed"]
            survived += run.info["ids_survived"]
            old_total += run.info["old_leaves"]
        report.id_survival = survived / old_total if old_total else None
        lineage = {k: v for run in runs.values() for k, v in run.lineage.items()}
        report.lineage = len(lineage)

        # Leaf ids are stable, not k-means indices, so the leaf -> online cluster mapping is explicit
        # (publish.py's contract).
        result = ClioResult(facets=[f.to_dict() for f in facets], conversations=conversations,
                            facet_values=facet_values, hierarchies={n: r.hierarchy for n, r in runs.items()},
                            settings=settings.public_dict(),
                            stats={"llm": vars(stats), "points": report.points, "version": version,
                                   "store_clusters": {k: v for r in runs.values() for k, v in r.store_clusters.items()},
                                   "living": report.facets})
        remove_denied(result, store, settings)  # users deleted since the scroll (clio_stream.deletion)
        report.llm_prompts = stats.prompts
        report.seconds = time.perf_counter() - t0

        def site(n: int) -> Path:
            report.published = write_version_folder(result, publish_dir, str(n), lineage=lineage, settings=settings)
            return report.published

        write_version(store, lease, VersionWrite(
            version=version,
            facets=[FacetLabels(f.name, models[f.name], stored[f.name].point_ids, stored[f.name].vectors,
                                runs[f.name].labels) for f in tree],
            states={ID_COUNTER_KEY.format(facet=f.name): runs[f.name].ids.state() for f in tree},
            site=site,
            last_run={"version": version, "finished_at": time.time(), "seconds": report.seconds,
                      "points": report.points, "clusters": report.clusters, "llm_prompts": report.llm_prompts,
                      "leaves_reused": report.leaves_reused, "leaves_renamed": report.leaves_renamed,
                      "id_survival": report.id_survival, "lineage": report.lineage},
        ), publish_dir)
        log.info("re-clustered as version %d in %.1f s: %s; %d LLM prompts, %d leaves reused, %d named, id survival %s",
                 version, report.seconds, report.clusters, report.llm_prompts, report.leaves_reused,
                 report.leaves_renamed, "n/a" if report.id_survival is None else f"{report.id_survival:.2f}")
        return report
