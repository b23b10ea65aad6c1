"""``run_clio``: the batch Clio pipeline, a composition of the stage functions in ``clio_stream.stages``.

prepare -> truncate -> facets (``stages.extract``) -> embeddings -> base clusters + names
(``stages.base_clusters``, ``stages.naming``) -> hierarchy over the privacy-checked leaves
(``stages.hierarchy``) -> finalise (privacy minimums, optional audit, trends: ``stages.finalise``, the same
step the re-clustering job runs) -> site. Each expensive stage is checkpointed under
``output_dir/checkpoints`` by a hash of what it depends on, so a rerun resumes, and a changed setting
recomputes only what it affects.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from clio_stream.domain.clusters import ClioResult, ClusterMap, ClusterNode, FacetHierarchy, RunStats, StoreLink
from clio_stream.domain.conversation import Conversation, ConversationFacets
from clio_stream.domain.facet_specs import configured_facets
from clio_stream.domain.facets import Facet
from clio_stream.embedding import EmbeddingBackend, embedding_text, make_embedder
from clio_stream.views.layout import cluster_map, member_centroids, place_points
from clio_stream.llm import as_llm
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.settings import ClioSettings
from clio_stream.stages.base_clusters import base_clusters
from clio_stream.stages.extract import extract_facets
from clio_stream.stages.finalise import finalise
from clio_stream.stages.hierarchy import build_hierarchy, private_leaves, slug, user_keys
from clio_stream.stages.naming import name_clusters
from clio_stream.site.writer import SiteRecords
from clio_stream.stages.input_records import Loaded, load_records, site_records
from clio_stream.stages.prepare import LoadStats, conversation_content_key, truncate_conversation
from clio_stream.storage.checkpoint import Checkpoints, atomic_write_bytes, stable_hash

log = logging.getLogger(__name__)

FacetEmbeddings = dict[str, tuple[list[int], np.ndarray]]  # facet -> (rows with a value, their embeddings)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, bar: tqdm | None) -> Iterator[None]:
        t0 = time.perf_counter()
        if bar is not None:
            bar.set_description(f"clio: {name}")
        log.info("stage %s: start", name)
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        log.info("stage %s: done in %.1f s", name, self.seconds[name])
        if bar is not None:
            bar.update(1)


@dataclass
class Prepared:
    """The conversations a run clusters: as loaded, truncated for the LLM, and the raw items of generic data."""

    conversations: list[Conversation]  # as loaded (what the result shows)
    truncated: list[Conversation]  # what the LLM reads
    raw_items: list[Any] | None  # generic data: the item (after conversation_getter) facets that read data see
    load_stats: LoadStats
    records: dict[str, Any]  # conversation id -> the input record it came from (site filter and display)


@dataclass
class ClioRun:
    """A finished run: the result, the facets it asked, the embeddings of each hierarchy facet's values (rows with
    a value) and each conversation's input record (the seed's result carries them)."""

    result: ClioResult
    facets: list[Facet]
    embeddings: FacetEmbeddings
    records: dict[str, Any]


@dataclass(frozen=True)
class BaseLeaves:
    """One facet's base clusters as leaves, and the k-means cluster each leaf is (its label in the store)."""

    leaves: list[ClusterNode]
    clusters: dict[str, int]  # leaf id -> k-means cluster index


@dataclass
class BaseStage:
    """Each clustered facet's base leaves and the checkpoint key they were made under (the hierarchy's extends it)."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    leaves: dict[str, BaseLeaves] = field(default_factory=dict)


@dataclass(frozen=True)
class RunTools:
    """What every stage of one run shares: its settings, the two back-ends and the tally of LLM calls."""

    settings: ClioSettings
    llm: LLMBackend
    embedder: EmbeddingBackend
    ask_stats: AskStats


def run_clio(
    facets: Sequence[Facet] | None = None,
    llm: Any = None,
    embedding_model: Any = None,
    data: Sequence[Any] | None = None,
    output_dir: str | Path | None = "clio-output",
    html_root: str | None = None,
    *,
    settings: ClioSettings | None = None,
    write_site: bool = True,
    host_webui: bool = False,
    **overrides: Any,
) -> ClioResult:
    """Run Clio over ``data`` and, when ``output_dir`` is given, write checkpoints and the static site.

    ``facets`` left out are the settings' (the main facets and any custom ones). ``llm`` is an LLM
    back-end (or a ``vllm.LLM``), ``embedding_model`` a name, an ``Embedder`` or a ``SentenceTransformer``;
    either left out is built from the settings. ``settings`` and keyword ``overrides`` (snake_case or the
    seed's camelCase names) are combined, overrides winning. ``host_webui`` serves the site on
    ``web_host:web_port`` afterwards, prints its link and returns when interrupted (Ctrl-C).
    """
    return clio_run(facets, llm, embedding_model, data, output_dir, html_root, settings=settings,
                    write_site=write_site, host_webui=host_webui, **overrides).result


def clio_run(
    facets: Sequence[Facet] | None,
    llm: Any,
    embedding_model: Any,
    data: Sequence[Any] | None,
    output_dir: str | Path | None,
    html_root: str | None,
    *,
    settings: ClioSettings | None = None,
    write_site: bool = True,
    host_webui: bool = False,
    **overrides: Any,
) -> ClioRun:
    """``run_clio``, returning the embeddings too (the seed's result carries them)."""
    if data is None:
        raise ValueError("run_clio needs data: a list of conversations (see clio_stream.get_example_data)")
    settings, facets = _configure(facets, html_root, settings, overrides)
    out = Path(output_dir) if output_dir is not None else None
    ckpt = Checkpoints(out / "checkpoints" if out is not None else None)
    timer = _Timer()
    bar = tqdm(total=6, disable=not settings.show_progress, desc="clio", unit="stage")

    with timer.stage("prepare", bar):
        loaded = load_records(list(data), facets, settings)
        tools = RunTools(settings, as_llm(llm, settings), make_embedder(settings, embedding_model), AskStats())
        prep = _for_llm(loaded, tools.llm, settings)
    facet_key = _facet_key(prep.truncated, facets, tools)
    with timer.stage("facets", bar):
        facet_values: list[ConversationFacets] = ckpt.cached("facets", facet_key, lambda: _extract(prep, facets, tools))
    tree_facets = [f for f in facets if f.has_hierarchy]
    embed_key = {"facets": facet_key, "model": tools.embedder.model_name, "text": "answer after prefill"}
    with timer.stage("embeddings", bar):
        embedded = ckpt.cached("embeddings", embed_key, lambda: _embed(tree_facets, facet_values, tools.embedder))
    with timer.stage("base clusters", bar):
        base = _base_stage(tree_facets, embedded, embed_key, prep.truncated, facet_values, tools, ckpt)
    with timer.stage("hierarchy", bar):
        hierarchies = _hierarchy_stage(tree_facets, base, prep.truncated, tools, ckpt)
    with timer.stage("privacy", bar):
        audit_scores = _finalise_stage(hierarchies, prep.truncated, facet_values, facets, tools)

    stats = _run_stats(prep, facets, facet_values, tools.ask_stats, timer, ckpt, audit_scores)
    result = _result(prep, facets, facet_values, hierarchies, settings, stats,
                     {name: StoreLink(clusters=base.leaves[name].clusters) for name in hierarchies})
    with timer.stage("map", bar):
        result.maps.update(_maps(hierarchies, embedded, facet_values, settings))
    with timer.stage("site", bar):
        if out is not None:
            _write_outputs(result, out, settings, write_site=write_site,
                           shown=site_records(prep.records, result, settings))
    bar.close()
    result.stats.seconds = timer.seconds
    if host_webui and out is not None and write_site:
        _serve(out, settings)
    return ClioRun(result, facets, embedded, prep.records)


def _configure(facets: Sequence[Facet] | None, html_root: str | None, settings: ClioSettings | None,
               overrides: dict[str, Any]) -> tuple[ClioSettings, list[Facet]]:
    """The run's settings (overrides and ``html_root`` winning) and its facets, whose names must be unique."""
    settings = (settings or ClioSettings()).with_overrides(**overrides)
    if html_root is not None:
        settings = settings.with_overrides(html_root=html_root)
    facets = list(facets) if facets else configured_facets(settings)
    if len({f.name for f in facets}) != len(facets):
        raise ValueError("facet names must be unique")
    return settings, facets


def _for_llm(loaded: Loaded, llm: LLMBackend, settings: ClioSettings) -> Prepared:
    """The conversations truncated to what the LLM may read, and for generic data the item each facet sees."""
    truncated = []
    for conv in loaded.conversations:
        conv2, was = truncate_conversation(conv, settings.max_conversation_tokens, llm.count_tokens)
        truncated.append(conv2)
        loaded.stats.truncated += int(was)
    raw_items = None if loaded.items is None else [loaded.items[c.id] for c in truncated]
    return Prepared(conversations=loaded.conversations, truncated=truncated, raw_items=raw_items,
                    load_stats=loaded.stats, records=loaded.records)


def _facet_key(truncated: Sequence[Conversation], facets: Sequence[Facet], tools: RunTools) -> dict[str, Any]:
    """What the facet values depend on: the text the LLM reads, the questions, the model and its sampling."""
    return {
        "conversations": stable_hash([(c.id, conversation_content_key(c)) for c in truncated]),
        "facets": [f.to_dict() for f in facets],
        "llm": getattr(tools.llm, "model_name", "?"),
        **tools.settings.fingerprint("llm_sampling_args", "llm_max_retries", "seed", "max_conversation_tokens"),
    }


def _extract(prep: Prepared, facets: Sequence[Facet], tools: RunTools) -> list[ConversationFacets]:
    """Every facet of every truncated conversation, asked of the LLM in batches of ``llm_batch_size``."""
    s = tools.settings
    return extract_facets(prep.truncated, facets, tools.llm, sampling=s.llm_sampling_args, retries=s.llm_max_retries,
                          seed=s.seed, batch_size=s.llm_batch_size, raw_items=prep.raw_items, stats=tools.ask_stats,
                          prefix_group=s.facet_prefix_group, settings=s, layout=s.facet_layout)


def _embed(facets: Sequence[Facet], facet_values: Sequence[ConversationFacets],
           embedder: EmbeddingBackend) -> FacetEmbeddings:
    """Each facet's rows with a value and the embeddings of those values (the text the workers embed too)."""
    result: FacetEmbeddings = {}
    for f in facets:
        rows = [i for i, fv in enumerate(facet_values) if fv.values[f.name].value]
        vecs = embedder.encode([embedding_text(f, facet_values[i].values[f.name].value) for i in rows],
                               desc=f"embed {f.name}")
        result[f.name] = (rows, vecs)
    return result


def _base_key(facet: Facet, embed_key: dict[str, Any], tools: RunTools) -> dict[str, Any]:
    """What one facet's base clusters depend on: its embeddings, k-means and the naming prompts' settings."""
    return {"embed": embed_key, "facet": facet.name, "criteria": facet.summary_criteria, "form": "BaseLeaves",
            "embedder": tools.embedder.model_name, **tools.settings.fingerprint(
                "n_base_clusters", "kmeans_args", "seed", "max_points_to_sample_inside_cluster",
                "max_points_to_sample_outside_cluster", "n_name_description_samples_per_cluster",
                "llm_sampling_args", "llm_max_retries")}


def _base_stage(tree_facets: Sequence[Facet], embedded: FacetEmbeddings, embed_key: dict[str, Any],
                conversations: Sequence[Conversation], facet_values: Sequence[ConversationFacets], tools: RunTools,
                ckpt: Checkpoints) -> BaseStage:
    """Named base clusters of each hierarchy facet with values, each checkpointed on its own."""
    base = BaseStage()
    for f in tree_facets:
        rows, vecs = embedded[f.name]
        if not rows:
            log.warning("facet %s: no usable values; no clusters", f.name)
            continue
        base.keys[f.name] = _base_key(f, embed_key, tools)
        base.leaves[f.name] = ckpt.cached(f"base-{slug(f.name)}", base.keys[f.name], lambda f=f, rows=rows, vecs=vecs:
                                          _base_leaves(f, conversations, facet_values, vecs, rows, tools))
    return base


def _base_leaves(facet: Facet, conversations: Sequence[Conversation], facet_values: Sequence[ConversationFacets],
                 vectors: np.ndarray, rows: list[int], tools: RunTools) -> BaseLeaves:
    """Base clusters of one facet's value embeddings as leaves ``<facet>-l0-<k-means index>``, named by the LLM."""
    texts = [facet_values[r].values[facet.name].value or "" for r in rows]
    labels, centres = base_clusters(vectors, tools.settings)
    names = name_clusters(facet, texts, vectors, labels, centres, tools.llm, tools.embedder, settings=tools.settings,
                          stats=tools.ask_stats)
    leaves, clusters = [], {}
    fslug = slug(facet.name)
    for c, (summary, name) in enumerate(names):
        members = [conversations[rows[i]].id for i in np.flatnonzero(labels == c)]
        if members:
            leaf = ClusterNode(id=f"{fslug}-l0-{c}", facet=facet.name, name=name, summary=summary, level=0,
                               conversation_ids=members)
            leaves.append(leaf)
            clusters[leaf.id] = c
    return BaseLeaves(leaves, clusters)


def _hierarchy_stage(tree_facets: Sequence[Facet], base: BaseStage, conversations: Sequence[Conversation],
                     tools: RunTools, ckpt: Checkpoints) -> dict[str, FacetHierarchy]:
    """Each clustered facet's hierarchy, built over only the leaves that meet the privacy minimums."""
    settings = tools.settings
    users_of = user_keys(conversations, settings)
    hierarchies: dict[str, FacetHierarchy] = {}
    for f in tree_facets:
        if f.name not in base.leaves:
            continue
        key = {"base": base.keys[f.name], **settings.fingerprint(
            "min_top_level_size", "n_neighbourhoods", "n_samples_outside_neighbourhood",
            "n_names_per_neighbourhood", "n_categorize_samples", "max_categorize_candidates",
            "max_children_for_renaming", "n_rename_samples", "max_hierarchy_levels", "min_cluster_conversations",
            "min_cluster_users", "user_id_hash_key")}
        hierarchies[f.name] = ckpt.cached(
            f"hierarchy-{slug(f.name)}", key,
            lambda f=f: build_hierarchy(f, private_leaves(base.leaves[f.name].leaves, users_of, settings),
                                        tools.llm, tools.embedder, settings=settings, stats=tools.ask_stats))
    return hierarchies


def _finalise_stage(hierarchies: dict[str, FacetHierarchy], conversations: Sequence[Conversation],
                    facet_values: Sequence[ConversationFacets], facets: Sequence[Facet],
                    tools: RunTools) -> dict[str, dict[str, int | None]]:
    """Finalise every hierarchy in place (privacy, audit, trends); the audit's scores of the facets it rated."""
    audit_scores: dict[str, dict[str, int | None]] = {}
    for name, h in hierarchies.items():
        scores = finalise(h, conversations, facet_values, facets, tools.llm, tools.embedder, tools.settings,
                          stats=tools.ask_stats)
        if scores is not None:
            audit_scores[name] = scores
    return audit_scores


def _run_stats(prep: Prepared, facets: Sequence[Facet], facet_values: Sequence[ConversationFacets],
               ask_stats: AskStats, timer: _Timer, ckpt: Checkpoints,
               audit_scores: dict[str, dict[str, int | None]]) -> RunStats:
    """The run's figures: input counts, LLM calls, stage times, checkpoint hits, unparseable values, audit."""
    return RunStats(
        load={k: v for k, v in vars(prep.load_stats).items() if k != "duplicate_of"},
        llm=AskStats(**vars(ask_stats)),
        seconds=timer.seconds,
        checkpoint_hits=ckpt.hits,
        unparseable_facet_values={f.name: sum(1 for fv in facet_values if fv.values[f.name].value is None)
                                  for f in facets},
        audit=audit_scores)


def _result(prep: Prepared, facets: Sequence[Facet], facet_values: list[ConversationFacets],
            hierarchies: dict[str, FacetHierarchy], settings: ClioSettings, stats: RunStats,
            store_links: dict[str, StoreLink]) -> ClioResult:
    originals = {c.id: c for c in prep.conversations}
    return ClioResult(facets=[f.to_dict() for f in facets], conversations=[originals[c.id] for c in prep.truncated],
                      facet_values=facet_values, hierarchies=hierarchies, settings=settings.public_dict(), stats=stats,
                      store_links=store_links)


def _maps(hierarchies: dict[str, FacetHierarchy], embedded: FacetEmbeddings,
          facet_values: Sequence[ConversationFacets], settings: ClioSettings) -> dict[str, ClusterMap]:
    """Each hierarchy's 2-D map: its clusters laid out by their members' centroids, a sample of points among them."""
    maps: dict[str, ClusterMap] = {}
    for name, h in hierarchies.items():
        rows, vecs = embedded[name]
        by_conversation = {facet_values[i].conversation_id: vecs[j] for j, i in enumerate(rows)}
        centroids = member_centroids(h, by_conversation)
        layout = cluster_map(h, centroids, method=settings.map_projection, seed=settings.seed)
        maps[name] = place_points(layout, centroids, list(by_conversation),
                                  np.asarray(list(by_conversation.values())), settings.seed)
    return maps


def _write_outputs(result: ClioResult, out: Path, settings: ClioSettings, *, write_site: bool,
                   shown: SiteRecords) -> None:
    """``result.json`` and, unless ``write_site`` is False, the static site under ``out/site``."""
    atomic_write_bytes(out / "result.json", result.model_dump_json().encode())
    if write_site:
        from clio_stream.storage.result_folder import SiteOptions

        SiteOptions.from_settings(settings).write(result, out / "site", shown=shown)


def _serve(out: Path, settings: ClioSettings) -> None:
    """Serve the written site until interrupted (the seed's ``hostWebui``)."""
    from clio_stream.site.server import announce_link, serve_site

    serve_site(out / "site", host=settings.web_host, port=settings.web_port, html_root=settings.html_root,
               announce=announce_link)
