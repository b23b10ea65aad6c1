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
