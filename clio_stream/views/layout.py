"""The cluster map: a 2-D layout of a facet's clusters, computed once at publish time from the base clusters'
centroids (k vectors, never every point), so it costs the same for 10k or 100k conversations.

t-SNE (scikit-learn, exact gradient on a few hundred centroids) keeps neighbours together better than PCA
(``benchmarks/views.py`` measures both, and UMAP where installed); PCA is used when there are too few
centroids for t-SNE, or when ``map_projection = "pca"``. A parent sits at the size-weighted centre of its
visible leaves, so zooming into a parent finds its children around it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from clio_stream.domain.clusters import ClusterMap, FacetHierarchy
from clio_stream.domain.vectors import normalise_rows
from clio_stream.privacy.visibility import visible_node_ids

log = logging.getLogger(__name__)

MIN_TSNE_POINTS = 6
MAX_TSNE_POINTS = 1500  # more base clusters than this: t-SNE of their parents, each parent's leaves around it
SAMPLE_POINTS = 2000  # conversations placed on each facet's map (analysts see them)
NEAREST = 3


GROUP_WEIGHT = 0.35  # added distance per hierarchy level at which two leaves part (top level counts most)


def project(vectors: np.ndarray, method: str, seed: int, groups: np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Rows of ``vectors`` placed in [0, 1]^2, and the method actually used.

    ``groups``: per row, its ancestors' ids from the top level down (one column per level); t-SNE then also
    keeps siblings together (cosine distance plus ``GROUP_WEIGHT`` per level at which two rows part, the top
    level weighing most), so a parent's leaves form one region of the map.
    """
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2)), method
    if n == 1:
        return np.full((1, 2), 0.5), "pca"
    x = normalise_rows(np.asarray(vectors, dtype=np.float64))
    if method == "tsne" and n >= MIN_TSNE_POINTS:
        from sklearn.manifold import TSNE

        dist = np.clip(1.0 - x @ x.T, 0.0, 2.0)
        if groups is not None and groups.size:
            levels = groups.shape[1]
            for level in range(levels):
                col = groups[:, level]
                dist += GROUP_WEIGHT * (levels - level) / levels * (col[:, None] != col[None, :])
        np.fill_diagonal(dist, 0.0)
        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="random", random_state=seed, metric="precomputed",
                  method="exact" if n <= 2000 else "barnes_hut").fit_transform(dist)
        used = "tsne"
    else:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x) if x.shape[1] >= 2 else np.c_[x, x]
        used = "pca"
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return 0.05 + 0.9 * (xy - lo) / span, used


def cluster_map(hierarchy: FacetHierarchy, leaf_vectors: Mapping[str, np.ndarray], *, method: str,
                seed: int) -> ClusterMap:
    """Positions of every leaf with a vector, and of every parent (at its visible leaves' size-weighted centre)."""
    leaves = [nid for nid in leaf_vectors if nid in hierarchy.nodes]
    if method == "tsne" and len(leaves) > MAX_TSNE_POINTS:
        xy, used = _two_level(hierarchy, leaves, leaf_vectors, seed)
    else:
        xy, used = project(np.asarray([leaf_vectors[n] for n in leaves]), method, seed, _ancestors(hierarchy, leaves))
    pos = {nid: (float(x), float(y)) for nid, (x, y) in zip(leaves, xy)}
    visible = visible_node_ids(hierarchy)

    def place(nid: str) -> tuple[float, float] | None:
        if nid in pos:
            return pos[nid]
        node = hierarchy.nodes[nid]
        parts = [(place(c), hierarchy.nodes[c].size) for c in node.children if c in hierarchy.nodes]
        shown = [(p, w) for (p, w), c in zip(parts, node.children) if p is not None and c in visible] or \
            [(p, w) for p, w in parts if p is not None]
        if not shown:
            return None
        weight = sum(max(1, w) for _, w in shown)
        pos[nid] = (sum(p[0] * max(1, w) for p, w in shown) / weight, sum(p[1] * max(1, w) for p, w in shown) / weight)
        return pos[nid]

    for root in hierarchy.root_ids:
        if root in hierarchy.nodes:
            place(root)
    return ClusterMap(method=used, positions=pos)


def _two_level(hierarchy: FacetHierarchy, leaves: list[str], leaf_vectors: Mapping[str, np.ndarray],
               seed: int) -> tuple[np.ndarray, str]:
    """Many base clusters: t-SNE of their parents (size-weighted centroids), each parent's leaves laid out
    around it by a local PCA, within half the distance to the nearest other parent. Costs t-SNE of k/10 points."""
    parent_of = [hierarchy.nodes[n].parent_id or n for n in leaves]
    parents = list(dict.fromkeys(parent_of))
    index = {p: i for i, p in enumerate(parents)}
    vectors = normalise_rows(np.asarray([leaf_vectors[n] for n in leaves], dtype=np.float64))
    sizes = np.asarray([max(1, hierarchy.nodes[n].size) for n in leaves], dtype=np.float64)
    owner = np.asarray([index[p] for p in parent_of])
    centres = np.zeros((len(parents), vectors.shape[1]))
    np.add.at(centres, owner, vectors * sizes[:, None])
    tops = _ancestors(hierarchy, [p for p in parents if p in hierarchy.nodes]) if all(
        p in hierarchy.nodes for p in parents) else None
    where, used = project(centres, "tsne" if len(parents) <= MAX_TSNE_POINTS else "pca", seed, tops)
    if len(parents) > 1:
        gaps = np.sqrt(((where[:, None, :] - where[None, :, :]) ** 2).sum(-1)) if len(parents) <= 4000 else None
        if gaps is not None:
            np.fill_diagonal(gaps, np.inf)
            reach = 0.45 * gaps.min(axis=1)
        else:
            reach = np.full(len(parents), 0.45 / np.sqrt(len(parents)))
    else:
        reach = np.full(1, 0.4)
    out = np.zeros((len(leaves), 2))
    for i in range(len(parents)):
        rows = np.flatnonzero(owner == i)
        local = vectors[rows] - vectors[rows].mean(axis=0)
        if len(rows) >= 2 and np.abs(local).sum() > 0:
            _, _, vt = np.linalg.svd(local, full_matrices=False)
            flat = local @ vt[:2].T if vt.shape[0] >= 2 else np.c_[local @ vt[:1].T, np.zeros(len(rows))]
            flat = flat / (np.abs(flat).max() or 1.0)
        else:
            flat = np.zeros((len(rows), 2))
        out[rows] = where[i] + reach[i] * flat
    lo, hi = out.min(axis=0), out.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return 0.05 + 0.9 * (out - lo) / span, used


def _ancestors(hierarchy: FacetHierarchy, leaves: list[str]) -> np.ndarray:
    """Per leaf, its ancestors' ids from the top level down, padded with its own id (rows of equal length)."""
    chains = []
    for nid in leaves:
        chain, parent = [], hierarchy.nodes[nid].parent_id
        while parent is not None and parent in hierarchy.nodes and parent not in chain:
            chain.append(parent)
            parent = hierarchy.nodes[parent].parent_id
        chains.append(chain[::-1])
    depth = max((len(c) for c in chains), default=0)
    return np.array([c + [nid] * (depth - len(c)) for c, nid in zip(chains, leaves)], dtype=object).reshape(len(leaves), depth)


def place_points(layout: ClusterMap, leaf_vectors: Mapping[str, np.ndarray], conversation_ids: list[str],
                 vectors: np.ndarray, seed: int) -> ClusterMap:
    """``layout`` with a sample of conversations placed among the leaves (at most ``SAMPLE_POINTS``).

    t-SNE has no transform for new points, so each point goes where openTSNE starts its own out-of-sample
    placement: the similarity-weighted mean of its nearest leaves' positions, with a small deterministic spread.
    """
    leaves = [nid for nid in leaf_vectors if nid in layout.positions]
    if not leaves or not len(vectors):
        return layout
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(vectors), size=min(SAMPLE_POINTS, len(vectors)), replace=False))
    v = normalise_rows(np.asarray(vectors, dtype=np.float64)[pick])
    c = normalise_rows(np.asarray([leaf_vectors[n] for n in leaves], dtype=np.float64))
    where = np.asarray([layout.positions[n] for n in leaves])
    sims = v @ c.T
    near = np.argsort(-sims, axis=1)[:, :NEAREST]
    weights = np.exp(8 * np.take_along_axis(sims, near, axis=1))
    xy = (weights[:, :, None] * where[near]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
    xy = np.clip(xy + rng.normal(scale=0.008, size=xy.shape), 0, 1)
    points = [(conversation_ids[i], round(float(x), 4), round(float(y), 4)) for i, (x, y) in zip(pick, xy)]
    return layout.model_copy(update={"points": points})


def member_centroids(hierarchy: FacetHierarchy, vectors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Leaf id -> mean of its members' vectors (``vectors``: conversation id -> embedding), for the batch run."""
    out: dict[str, np.ndarray] = {}
    for leaf in hierarchy.leaves():
        rows = [vectors[c] for c in leaf.conversation_ids if c in vectors]
        if rows:
            out[leaf.id] = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
    return out
