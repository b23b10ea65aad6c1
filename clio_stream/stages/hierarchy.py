"""Stage: build a facet's hierarchy from its base clusters, level by level (Clio, appendix G.7).

One level up:
1. embed each cluster's name and summary and split them into neighbourhoods
   with k-means, adding the nearest clusters from outside each neighbourhood;
2. ask the LLM to propose broader category names for each neighbourhood;
3. merge the proposals across neighbourhoods into one de-duplicated list;
4. assign every cluster to one category (candidates shuffled, several samples,
   majority vote);
5. rename every category from the clusters it actually received.
Repeat until at most ``min_top_level_size`` clusters remain.

A small model can fail any step; each has a fallback (embedding similarity in
place of the LLM's choice, k-means grouping in place of proposals) so a level
always shrinks and the run always finishes.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from clio_stream.stages.base_clusters import kmeans, most_central
from clio_stream.embedding import EmbeddingBackend as Embedder
from clio_stream.domain.facets import Facet
from clio_stream.llm.base import AskStats, LLMBackend, Prompt, ask, sampling_for
from clio_stream.stages.naming import SMALL_CLUSTERS, looks_identifying, rename_parents
from clio_stream.privacy.audit import mark_below_minimums
from clio_stream.privacy.users import user_key_of
from clio_stream.privacy.visibility import describable
from clio_stream.llm.parsing import parse_choice, parse_numbered_list
from clio_stream.llm.prompts import ASSIGN_TO_PARENT, DEDUPLICATE_PARENTS, PROPOSE_PARENTS
from clio_stream.domain.clusters import ClusterNode, FacetHierarchy
from clio_stream.domain.conversation import Conversation
from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "facet"


def neighbourhoods(e: np.ndarray, n_groups: int, n_outside: int, seed: int, kmeans_args: dict) -> list[list[int]]:
    """Groups of cluster indices: k-means groups plus each group's nearest outsiders."""
    labels, centres = kmeans(e, n_groups, seed=seed, args=kmeans_args)
    groups = []
    for g in range(len(centres)):
        inside = np.flatnonzero(labels == g)
        if len(inside) == 0:
            continue
        outside = np.flatnonzero(labels != g)
        extra = outside[np.argsort(-(e[outside] @ centres[g]))[:n_outside]] if len(outside) else []
        groups.append([int(i) for i in inside] + [int(i) for i in extra])
    return groups


def merge_similar(names: list[str], vecs: np.ndarray, target: int, seed: int) -> list[str]:
    """Reduce ``names`` to about ``target`` by grouping their embeddings and keeping the most central of each."""
    if len(names) <= target:
        return names
    labels, _ = kmeans(vecs, target, seed=seed, args={"n_init": 3})
    out = []
    for g in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == g)
        out.append(names[idx[most_central(vecs[idx])]])
    return out


def assign_to_candidates(
    children: Sequence[ClusterNode],
    e: np.ndarray,
    candidates: Sequence[str],
    cand_vecs: np.ndarray,
    llm: LLMBackend,
    settings: ClioSettings,
    *,
    rng: random.Random,
    seed: int,
    stats: AskStats | None = None,
    desc: str | None = None,
) -> list[int]:
    """Index into ``candidates`` of each child's parent: the majority of several shuffled LLM picks.

    Each child (``e``: its name-and-summary embedding) is shown its nearest
    ``max_categorize_candidates`` candidates in a new random order per sample, so
    a small model's bias for the first option does not decide; a child with no
    usable pick goes to the nearest candidate by embedding. A function of its own
    so the quality benchmark scores this very step against known categories.
    """
    sims = e @ cand_vecs.T
    m = min(len(candidates), settings.max_categorize_candidates)
    prompts, owners, shown = [], [], []
    for ci, child in enumerate(children):
        nearest = list(np.argsort(-sims[ci])[:m])
        for _ in range(settings.n_categorize_samples):
            order = nearest[:]
            rng.shuffle(order)
            listing = "\n".join(f"{k + 1}. {candidates[j]}" for k, j in enumerate(order))
            prompts.append(Prompt(ASSIGN_TO_PARENT, {"name": child.name, "summary": child.summary,
                                                     "candidates": listing},
                                  choices=tuple(str(k + 1) for k in range(len(order)))))
            owners.append(ci)
            shown.append(order)
    choices = ask(llm, prompts, lambda t, i: (lambda k: None if k is None else int(shown[i][k]))(
                      parse_choice(t, [candidates[j] for j in shown[i]])),
                  sampling_for(ASSIGN_TO_PARENT, settings.llm_sampling_args), retries=settings.llm_max_retries,
                  seed=seed, batch_size=settings.llm_batch_size, desc=desc, stats=stats)
    votes: dict[int, Counter] = {ci: Counter() for ci in range(len(children))}
    for ci, choice in zip(owners, choices):
        if choice is not None:
            votes[ci][choice] += 1
    return [votes[ci].most_common(1)[0][0] if votes[ci] else int(np.argmax(sims[ci])) for ci in range(len(children))]


def _level_up(
    facet: Facet,
    current: list[ClusterNode],
    level: int,
    llm: LLMBackend,
    embedder: Embedder,
    settings: ClioSettings,
    stats: AskStats | None,
) -> list[ClusterNode]:
    """Make the parents of ``current`` and link them; returns the new level."""
    seed = settings.seed + 1000 * (level + 1)
    rng = random.Random(seed)
    n = len(current)
    target = max(2, min(n - 1, settings.n_names_per_neighbourhood(n)))
    e = embedder.encode([f"{c.name}. {c.summary}" for c in current])
    criteria = facet.summary_criteria or ""

    # 1-2. neighbourhoods and proposals
    groups = neighbourhoods(e, min(n, settings.n_neighbourhoods(n)), settings.n_samples_outside_neighbourhood, seed,
                            settings.kmeans_args)
    prompts = []
    for g in groups:
        shown = [i for i in g if not current[i].hidden]  # withheld clusters never feed a parent's name
        if not shown:
            continue
        lines = "\n".join(f"{k + 1}. {current[i].name}: {current[i].summary}" for k, i in enumerate(shown))
        want = max(1, settings.n_names_per_neighbourhood(len(shown)))
        prompts.append(Prompt(PROPOSE_PARENTS, {"clusters": lines, "n": str(want), "criteria": criteria}))
    proposals_per_group = ask(llm, prompts, lambda t, i: parse_numbered_list(t) or None,
                              sampling_for(PROPOSE_PARENTS, settings.llm_sampling_args),
                              retries=settings.llm_max_retries, seed=seed, batch_size=settings.llm_batch_size,
                              desc=f"{facet.name} L{level + 1} proposals", stats=stats)
    proposals: list[str] = []
    seen: set[str] = set()
    for items in proposals_per_group:
        for item in items or []:
            if item.lower() not in seen and not looks_identifying(item):
                seen.add(item.lower())
                proposals.append(item)

    # 3. de-duplicate across neighbourhoods
    candidates = proposals
    if len(groups) > 1 and len(proposals) > target:
        numbered = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(proposals))
        merged = ask(llm, [Prompt(DEDUPLICATE_PARENTS, {"names": numbered, "n": str(target), "criteria": criteria})],
                     lambda t, i: (lambda items: items if 2 <= len(items) else None)(parse_numbered_list(t)),
                     sampling_for(DEDUPLICATE_PARENTS, settings.llm_sampling_args), retries=settings.llm_max_retries,
                     seed=seed + 1, desc=None, stats=stats)[0]
        if merged:
            candidates = merged
    if len(candidates) > target:
        candidates = merge_similar(candidates, embedder.encode(candidates), target, seed)

    # 4. assign children to candidates
    if len(candidates) >= 2:
        assignment = assign_to_candidates(current, e, candidates, embedder.encode(candidates), llm, settings,
                                          rng=rng, seed=seed + 2, stats=stats, desc=f"{facet.name} L{level + 1} assign")
        parent_keys = sorted(set(assignment))
    else:
        assignment, parent_keys = [], []

    if len(parent_keys) < 2 or len(parent_keys) >= n:
        # The LLM's categories did not shrink the level: group by embedding instead.
        log.info("%s level %d: falling back to embedding grouping (%d candidates)", facet.name, level + 1,
                 len(parent_keys))
        labels, _ = kmeans(e, target, seed=seed, args=settings.kmeans_args)
        assignment = [int(v) for v in labels]
        parent_keys = sorted(set(assignment))
        fallback_names = {k: next((current[i].name for i in np.flatnonzero(labels == k) if not current[i].hidden),
                                  SMALL_CLUSTERS) for k in parent_keys}
    else:
        fallback_names = {k: candidates[k] for k in parent_keys}

    # 5. rename each parent from the children it received
    children_of = [[current[ci] for ci in range(n) if assignment[ci] == k] for k in parent_keys]
    targets = np.stack([e[[ci for ci in range(n) if assignment[ci] == k]].mean(axis=0) for k in parent_keys])
    targets /= np.maximum(np.linalg.norm(targets, axis=1, keepdims=True), 1e-12)
    named = rename_parents(facet, [[(c.name, c.summary, c.size) for c in describable(ch)] for ch in children_of],
                           [fallback_names[k] for k in parent_keys], llm, embedder, settings=settings,
                           seed=seed + 3, stats=stats, targets=targets)
    parents = []
    fslug = slug(facet.name)
    for p, (children, (summary, name)) in enumerate(zip(children_of, named)):
        node = ClusterNode(
            id=f"{fslug}-l{level + 1}-{p}",
            facet=facet.name,
            name=name,
            summary=summary,
            level=level + 1,
            children=[c.id for c in sorted(children, key=lambda c: -c.size)],
            conversation_ids=[cid for c in children for cid in c.conversation_ids],
        )
        for c in children:
            c.parent_id = node.id
        parents.append(node)
    return parents


def user_keys(conversations: Sequence[Conversation], settings: ClioSettings) -> dict[str, str]:
    """Conversation id -> keyed user hash: what the privacy minimums count distinct users by."""
    return {c.id: user_key_of(c, settings.user_id_hash_key) for c in conversations}


def private_leaves(leaves: Sequence[ClusterNode], users_of: Mapping[str, str],
                   settings: ClioSettings) -> list[ClusterNode]:
    """Copies of ``leaves`` with those under the privacy minimums withheld, before anything is named above them,
    so their names never reach a parent's (see ``privacy.mark_below_minimums``)."""
    copies = [leaf.model_copy(deep=True) for leaf in leaves]
    mark_below_minimums(copies, users_of, min_conversations=settings.min_cluster_conversations,
                        min_users=settings.min_cluster_users)
    return copies


def build_hierarchy(
    facet: Facet,
    leaves: Sequence[ClusterNode],
    llm: LLMBackend,
    embedder: Embedder,
    *,
    settings: ClioSettings,
    stats: AskStats | None = None,
) -> FacetHierarchy:
    """The whole tree above ``leaves`` (level-0 nodes), stopping at ``min_top_level_size`` roots."""
    nodes = {leaf.id: leaf for leaf in leaves}
    current = list(leaves)
    level = 0
    while len(current) > settings.min_top_level_size and level < settings.max_hierarchy_levels:
        parents = _level_up(facet, current, level, llm, embedder, settings, stats)
        if len(parents) >= len(current):  # pragma: no cover - _level_up guarantees shrinking
            break
        for p in parents:
            nodes[p.id] = p
        current = parents
        level += 1
        log.info("%s: level %d has %d clusters", facet.name, level, len(current))
    return FacetHierarchy(facet=facet.name, nodes=nodes, root_ids=[c.id for c in sorted(current, key=lambda c: -c.size)])
