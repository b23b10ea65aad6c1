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


def project(vectors: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    """Rows of ``vectors`` placed in [0, 1]^2, and the method actually used."""
    n = len(vectors)
    if n == 0:
        return np.zeros((0, 2)), method
    if n == 1:
        return np.full((1, 2), 0.5), "pca"
    x = normalise_rows(np.asarray(vectors, dtype=np.float64))
    if method == "tsne" and n >= MIN_TSNE_POINTS:
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, metric="cosine",
                  method="exact" if n <= 2000 else "barnes_hut").fit_transform(x)
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
    xy, used = project(np.asarray([leaf_vectors[n] for n in leaves]), method, seed)
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


def member_centroids(hierarchy: FacetHierarchy, vectors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Leaf id -> mean of its members' vectors (``vectors``: conversation id -> embedding), for the batch run."""
    out: dict[str, np.ndarray] = {}
    for leaf in hierarchy.leaves():
        rows = [vectors[c] for c in leaf.conversation_ids if c in vectors]
        if rows:
            out[leaf.id] = np.mean(np.asarray(rows, dtype=np.float64), axis=0)
    return out
