"""Stage: name and summarise clusters (base clusters from their members, parents from their children).

Each cluster gets several sampled names and summaries; the one kept is the
sample whose embedding lies closest to the mean of all samples (the most
representative), which damps the noise of any single sample. Base clusters are
shown their members next to the nearest non-members, so the name says what
sets the cluster apart (the Clio paper's contrastive naming).
"""

from __future__ import annotations

import logging
import random
import re
from typing import Mapping, Sequence

import numpy as np

from clio_stream.stages.base_clusters import most_central, nearest_outside
from clio_stream.embedding import EmbeddingBackend
from clio_stream.domain.facets import Facet
from clio_stream.llm.base import AskStats, LLMBackend, Prompt, ask, sampling_for
from clio_stream.llm.parsing import MAX_NAME_CHARS, first_sentences, parse_tagged
from clio_stream.llm.prompts import CLUSTER_NAME, CLUSTER_SUMMARY, PARENT_NAME, PARENT_SUMMARY, PromptTemplate
from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)


def _bullets(texts: Sequence[str]) -> str:
    return "\n".join(f"- {t}" for t in texts) if texts else "- (none)"


def _dedup(texts: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in texts:
        if t.lower() not in seen:
            seen.add(t.lower())
            out.append(t)
    return out


# Things a published name must never contain, whatever the model wrote: e-mail
# addresses, links, long digit runs (phone or account numbers), handles.
_IDENTIFYING = re.compile(r"@|https?://|www\.|\d[\d\s().-]{5,}\d|\b\w+_\w+_\w+\b")


def looks_identifying(text: str) -> bool:
    return bool(_IDENTIFYING.search(text))


def _parse_name(text: str | None, i: int) -> str | None:
    name = parse_tagged(text, "name", max_chars=MAX_NAME_CHARS)
    if name is None or len(name) < 3 or not 2 <= len(name.split()) <= 16 or looks_identifying(name):
        return None
    if "#" in name or any(ord(ch) > 0xFFFF for ch in name):  # hashtags and emoji: not a cluster name
        return None
    return name.rstrip(".")


def _parse_summary(text: str | None, i: int) -> str | None:
    summary = parse_tagged(text, "summary", max_chars=1200)
    summary = first_sentences(summary, 2) if summary else None
    if summary is None or len(summary) < 10 or looks_identifying(summary):
        return None
    return summary


def best_candidate(candidates: Sequence[str], embedder: EmbeddingBackend, target: np.ndarray | None,
                   min_similarity: float) -> str | None:
    """The candidate that best fits ``target`` (the cluster's centre), or the most central one.

    With a target, a candidate must reach ``min_similarity`` (cosine) to be kept:
    a name unrelated to what is in the cluster is worse than the fallback.
    """
    if not candidates:
        return None
    vecs = embedder.encode(list(candidates))
    if target is None:
        return candidates[most_central(vecs)]
    sims = vecs @ target
    best = int(np.argmax(sims))
    return candidates[best] if sims[best] >= min_similarity else None


def strip_prefill(value: str, prefill: str) -> str:
    """A facet value without its boilerplate opening, capitalised, to serve as a name."""
    if prefill and value.lower().startswith(prefill.lower()):
        value = value[len(prefill):].strip()
    return value[:1].upper() + value[1:] if value else value


def describe(
    owners_values: Sequence[tuple[int, Mapping[str, str]]],
    n_groups: int,
    summary_t: PromptTemplate,
    name_t: PromptTemplate,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    *,
    settings: ClioSettings,
    seed: int,
    desc: str,
    stats: AskStats | None,
    targets: np.ndarray | None = None,
) -> list[tuple[str | None, str | None]]:
    """Ask for a summary and a name per sample; return the best-fitting ``(summary, name)`` per group.

    ``targets`` (one unit vector per group, in the embedder's space) picks the
    samples closest to what the group holds and rejects unrelated ones.
    """
    prompts = [Prompt(t, values) for _, values in owners_values for t in (summary_t, name_t)]
    owners = [g for g, _ in owners_values for _ in (0, 1)]

    def parse(text: str | None, i: int) -> str | None:
        return (_parse_summary if i % 2 == 0 else _parse_name)(text, i)

    answers = ask(llm, prompts, parse, sampling_for(name_t, settings.llm_sampling_args) | {
        "max_tokens": max(summary_t.max_tokens or 0, name_t.max_tokens or 0),
        "stop": list(summary_t.stop) + [s for s in name_t.stop if s not in summary_t.stop]},
        retries=settings.llm_max_retries, seed=seed, batch_size=settings.llm_batch_size, desc=desc, stats=stats)
    summaries: dict[int, list[str]] = {g: [] for g in range(n_groups)}
    names: dict[int, list[str]] = {g: [] for g in range(n_groups)}
    for i, (g, a) in enumerate(zip(owners, answers)):
        if a is not None:
            (summaries if i % 2 == 0 else names)[g].append(a)
    min_sim = settings.name_min_similarity
    out = []
    for g in range(n_groups):
        target = None if targets is None else targets[g]
        out.append((best_candidate(summaries[g], embedder, target, min_sim),
                    best_candidate(names[g], embedder, target, min_sim)))
    return out


def fallback_name(values: Sequence[str], prefill: str = "") -> str:
    """When no sampled name fits: the most typical member value (first = closest to the centre), shortened."""
    common = strip_prefill(values[0], prefill) if values else "Unnamed cluster"
    common = common.rstrip(".")
    return common if len(common) <= 80 else common[:77].rstrip() + "..."


def name_clusters(
    facet: Facet,
    texts: Sequence[str],
    x: np.ndarray,
    labels: np.ndarray,
    centres: np.ndarray,
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    *,
    settings: ClioSettings,
    stats: AskStats | None = None,
) -> list[tuple[str, str]]:
    """``(summary, name)`` for each cluster id ``0..len(centres)-1``."""
    rng = random.Random(settings.seed)
    samples: list[tuple[int, dict[str, str]]] = []
    for c in range(len(centres)):
        members = np.flatnonzero(labels == c)
        inside = _dedup([texts[i] for i in members])
        near = nearest_outside(x, labels, centres[c], c, settings.max_points_to_sample_outside_cluster * 3)
        lowered = {s.lower() for s in inside}
        outside = [t for t in _dedup([texts[i] for i in near]) if t.lower() not in lowered]
        outside = outside[: settings.max_points_to_sample_outside_cluster]
        for _ in range(settings.n_name_description_samples_per_cluster):
            sample = rng.sample(inside, min(len(inside), settings.max_points_to_sample_inside_cluster))
            samples.append((c, {"inside": _bullets(sample), "outside": _bullets(outside),
                                "criteria": facet.summary_criteria or ""}))
    described = describe(samples, len(centres), CLUSTER_SUMMARY, CLUSTER_NAME, llm, embedder, settings=settings,
                         seed=settings.seed + 101, desc=f"name {facet.name} clusters", stats=stats, targets=centres)
    out = []
    for c, (summary, name) in enumerate(described):
        members = np.flatnonzero(labels == c)
        typical = [texts[i] for i in members[np.argsort(-(x[members] @ centres[c]))]]
        if name is None:
            log.info("%s cluster %d: no sampled name fits; using its most typical value", facet.name, c)
            name = fallback_name(typical, facet.prefill)
        if summary is None:
            summary = "Conversations such as: " + "; ".join(_dedup(typical)[:3])
        out.append((summary, name))
    return out


SMALL_CLUSTERS = "Smaller clusters"  # name of a group whose children are all withheld
SMALL_CLUSTERS_SUMMARY = "Clusters too small to describe individually."


def rename_parents(
    facet: Facet,
    children_of: Sequence[Sequence[tuple[str, str, int]]],
    fallback: Sequence[str],
    llm: LLMBackend,
    embedder: EmbeddingBackend,
    *,
    settings: ClioSettings,
    seed: int,
    stats: AskStats | None = None,
    targets: np.ndarray | None = None,
) -> list[tuple[str, str]]:
    """Name each parent from its children ``(name, summary, size)``; the largest children are shown first.

    ``targets``: the mean embedding of each parent's children, to pick the best-fitting sample.
    Callers pass only describable children (``privacy.describable``); a parent with none gets a generic
    summary and its ``fallback`` name without an LLM call.
    """
    rng = random.Random(seed)
    samples: list[tuple[int, dict[str, str]]] = []
    for p, children in enumerate(children_of):
        if not children:  # all withheld: nothing to show the model (handled below)
            continue
        shown = sorted(children, key=lambda c: -c[2])[: settings.max_children_for_renaming]
        for _ in range(settings.n_rename_samples):
            order = shown[:]
            rng.shuffle(order)
            samples.append((p, {"children": "\n".join(f"- {n}: {s}" for n, s, _ in order),
                                "criteria": facet.summary_criteria or ""}))
    described = describe(samples, len(children_of), PARENT_SUMMARY, PARENT_NAME, llm, embedder, settings=settings,
                         seed=seed, desc=f"rename {facet.name} parents", stats=stats, targets=targets)
    out = []
    for p, (summary, name) in enumerate(described):
        if not children_of[p]:  # every child withheld (privacy): nothing may be described
            out.append((SMALL_CLUSTERS_SUMMARY, fallback[p]))
            continue
        if summary is None:
            summary = "Includes: " + "; ".join(n for n, _, _ in children_of[p][:5])
        out.append((summary, name or fallback[p]))
    return out
