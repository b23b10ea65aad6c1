"""How long each view takes to compute at publish time, for 10k and 100k conversations (synthetic), and how
well each map projection keeps neighbours (t-SNE, PCA, and UMAP where ``umap-learn`` is importable).

    /work/bin/heavy .venv/bin/python -m benchmarks.views [--sizes 10000 100000] [--umap-path DIR]

Synthetic: conversations over 40 topics (768-d Gaussian centres), base clusters of ~10 conversations (the
default ``n // 10``), a three-level hierarchy, Language / Concerning / two metadata keys, minimums 3 and 2.
What is timed is what a publish computes: the map layout of the base clusters' centroids, the breakdown of
every visible cluster (``SliceIndex`` + ``breakdown``), "what changed" against a previous version, alert
rules; plus one filtered tree as the API computes it on demand. Trustworthiness (scikit-learn, 10 neighbours)
is measured on at most 1500 centroids.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import quiet_logs, report
from clio_stream.domain.alerts import AlertRule
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, NumericStats
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.privacy.visibility import Minimums, result_visibility
from clio_stream.storage.documents import AlertLog
from clio_stream.views.alerts import evaluate
from clio_stream.views.breakdowns import breakdown
from clio_stream.views.diff import diff_results
from clio_stream.views.filters import parse_filter
from clio_stream.views.layout import cluster_map, project
from clio_stream.views.slices import SliceIndex

DIM, TOPICS = 768, 40
LANGS = ["English", "Spanish", "French", "German", "Chinese", "Portuguese"]


def synthetic(n: int, seed: int = 0) -> tuple[ClioResult, dict[str, np.ndarray]]:
    """A result of ``n`` conversations and its base clusters' centroids."""
    rng = np.random.default_rng(seed)
    k = max(5, n // 10)
    centres = rng.standard_normal((TOPICS, DIM))
    topic_of_leaf = rng.integers(0, TOPICS, k)
    leaf_vecs = centres[topic_of_leaf] + 0.6 * rng.standard_normal((k, DIM))
    leaf_of = rng.integers(0, k, n)
    users = rng.integers(0, max(3, n // 3), n)
    convs, values = [], []
    for i in range(n):
        cid = f"c{i}"
        convs.append(Conversation(id=cid, messages=[Message(role="user", content="")], user_id=f"u{users[i]}",
                                  timestamp=1.7e9 + float(rng.integers(0, 86400)),
                                  metadata={"tier": "pro" if users[i] % 7 == 0 else "free",
                                            "product": ["chat", "api", "mobile"][i % 3]}))
        score = int(rng.integers(1, 6))
        values.append(ConversationFacets(conversation_id=cid, values={
            "Request": FacetValue(facet="Request", value=f"topic {topic_of_leaf[leaf_of[i]]}"),
            "Language": FacetValue(facet="Language", value=LANGS[int(rng.integers(0, 6)) if i % 4 else 0]),
            "Concerning": FacetValue(facet="Concerning", value=str(score), numeric=score)}))
    members: dict[int, list[str]] = {}
    for i, leaf in enumerate(leaf_of):
        members.setdefault(int(leaf), []).append(f"c{i}")
    nodes: dict[str, ClusterNode] = {}
    user_of = {c.id: c.user_id for c in convs}
    score_of = {v.conversation_id: v.values["Concerning"].numeric for v in values}

    def node(nid: str, level: int, kids: list[str], ids: list[str]) -> ClusterNode:
        hist = np.bincount([score_of[c] - 1 for c in ids], minlength=5).tolist()
        n_users = len({user_of[c] for c in ids})
        made = ClusterNode(id=nid, facet="Request", name=f"cluster {nid}", summary="synthetic", level=level,
                           children=kids, conversation_ids=ids, distinct_users=n_users,
                           numeric={"Concerning": NumericStats(facet="Concerning", count=len(ids),
                                                              mean=float(np.dot(hist, range(1, 6)) / max(1, len(ids))),
                                                              min_value=1, histogram=hist)},
                           hidden=len(ids) < 3 or n_users < 2)
        nodes[nid] = made
        for kid in kids:
            nodes[kid].parent_id = nid
        return made

    leaves = [node(f"l{j}", 0, [], members.get(j, [])).id for j in range(k)]
    mids = []
    for m, start in enumerate(range(0, k, 10)):
        kids = leaves[start:start + 10]
        mids.append(node(f"m{m}", 1, kids, [c for kid in kids for c in nodes[kid].conversation_ids]).id)
    roots = []
    per_root = max(1, len(mids) // 8)
    for r, start in enumerate(range(0, len(mids), per_root)):
        kids = mids[start:start + per_root]
        roots.append(node(f"r{r}", 2, kids, [c for kid in kids for c in nodes[kid].conversation_ids]).id)
    facets = [{"name": "Request", "numeric": None}, {"name": "Language", "numeric": None},
              {"name": "Concerning", "numeric": [1, 5]}]
    result = ClioResult(facets=facets, conversations=convs, facet_values=values,
                        hierarchies={"Request": FacetHierarchy(facet="Request", nodes=nodes, root_ids=roots)},
                        settings={"min_cluster_conversations": 3, "min_cluster_users": 2})
    return result, {f"l{j}": leaf_vecs[j] for j in range(k)}


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def trust(vectors: np.ndarray, xy: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(vectors, xy, n_neighbors=10, metric="cosine"))


def projections(vectors: np.ndarray, rows: list[tuple[str, Any, str]], label: str, umap_ok: bool) -> None:
    sample = vectors[np.random.default_rng(1).choice(len(vectors), min(len(vectors), 1500), replace=False)]
    for method in ("pca", "tsne"):
        (xy, _), secs = timed(lambda m=method: project(sample, m, 0))
        rows.append((f"{label} projection {method} ({len(sample)} centroids)", secs, "s"))
        rows.append((f"{label} trustworthiness {method}", trust(sample, xy), "0-1"))
    if umap_ok:
        import umap

        xy, secs = timed(lambda: umap.UMAP(n_components=2, metric="cosine", random_state=0).fit_transform(sample))
        rows.append((f"{label} projection umap ({len(sample)} centroids)", secs, "s"))
        rows.append((f"{label} trustworthiness umap", trust(sample, xy), "0-1"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--umap-path", default=None, help="a folder holding umap-learn and pynndescent (optional)")
    args = parser.parse_args()
    quiet_logs()
    if args.umap_path:
        sys.path.insert(0, args.umap_path)
    try:
        import umap  # noqa: F401

        umap_ok = True
    except ImportError:
        umap_ok = False
    rows: list[tuple[str, Any, str]] = []
    for n in args.sizes:
        label = f"{n // 1000}k"
        (result, leaf_vecs), secs = timed(lambda n=n: synthetic(n))
        h = result.hierarchies["Request"]
        rows.append((f"{label} base clusters", len(leaf_vecs), "leaves"))
        layout, secs = timed(lambda: cluster_map(h, leaf_vecs, method="tsne", seed=0))
        rows.append((f"{label} map (t-SNE, as published)", secs, "s"))
        _, secs = timed(lambda: cluster_map(h, leaf_vecs, method="pca", seed=0))
        rows.append((f"{label} map (PCA)", secs, "s"))
        projections(np.asarray(list(leaf_vecs.values())), rows, label, umap_ok)
        vis, secs = timed(lambda: result_visibility(result))
        rows.append((f"{label} visibility", secs, "s"))
        minimums = Minimums(3, 2)
        index, secs = timed(lambda: SliceIndex.of(result, vis.facets, list(vis.withheld), ["tier", "product"], minimums))
        rows.append((f"{label} slice index (columns, node rows)", secs, "s"))
        fv = vis.facets["Request"]
        _, secs = timed(lambda: {nid: breakdown(index, index.node_rows["Request"][nid], "Request", result.facets,
                                                vis.facets, ["tier", "product"]) for nid in fv.visible})
        rows.append((f"{label} breakdowns of {len(fv.visible)} visible clusters", secs, "s"))
        previous = result.model_copy(deep=True)
        _, secs = timed(lambda: diff_results(previous, result, {}, old_version="1", new_version="2"))
        rows.append((f"{label} what changed (diff)", secs, "s"))
        rules = [AlertRule(name="new", kind="new_cluster"), AlertRule(name="hot", kind="mean_above",
                                                                      numeric_facet="Concerning", threshold=3.5)]
        _, secs = timed(lambda: evaluate(rules, result, "2", {}, AlertLog(version="1")))
        rows.append((f"{label} alert rules", secs, "s"))
        flt = parse_filter([("metadata.tier", "free"), ("Concerning>", "3")], facets=result.facets,
                           visible_clusters={}, metadata_keys=["tier"], window_s=3600)
        _, secs = timed(lambda: index.tree(fv, flt, "2"))
        rows.append((f"{label} filtered tree (API, on demand)", secs, "s"))
        del layout
    report("views", rows, {"sizes": args.sizes, "umap": umap_ok})


if __name__ == "__main__":
    main()
