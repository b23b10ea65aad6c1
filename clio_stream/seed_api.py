"""The seed's (OpenClio's) Python API, as thin wrappers over clio-stream's own: code ported from OpenClio runs as is.

``runClio(facets, llm, embeddingModel, data, outputDirectory, htmlRoot, hostWebui=True, cfg=None, **kwargs)``
is ``run_clio`` with the seed's parameter names and defaults: ``llm`` a ``vllm.LLM``, ``embeddingModel`` a
``SentenceTransformer``, ``cfg`` an ``OpenClioConfig`` (``ClioSettings``) whose fields the keyword arguments
override, ``verbose`` printing the stage log. It writes ``outputDirectory/result.json`` and the site under
``outputDirectory/site`` and, with ``hostWebui``, serves it on ``webuiPort`` (``web_port``), prints the link and
returns once interrupted (Ctrl-C), with an ``OpenClioResults`` carrying the seed's fields. The top-level
``openclio`` package re-exports these names, so ``import openclio as clio`` works unchanged.

What differs from the seed, on purpose: clusters under the privacy minimums (``min_cluster_conversations``,
``min_cluster_users``) are left out of the result's cluster lists and the site; the web UI listens on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from clio_stream.domain.clusters import ClioResult, ClusterNode
from clio_stream.domain.facets import Facet
from clio_stream.privacy.visibility import FacetVisibility, result_visibility
from clio_stream.settings import ClioSettings


@dataclass
class FacetValue:
    """One facet's answer for one data point, as the seed shaped it (``facet`` is the ``Facet``)."""

    facet: Facet
    value: Optional[str]


@dataclass
class ConversationFacetData:
    """A data point and its facet values, in the facets' order."""

    conversation: Any
    facetValues: list[FacetValue]  # noqa: N815 - the seed's field name


@dataclass(eq=False)
class ConversationCluster:
    """One visible cluster of the result, linked like the seed's: ``children``, ``parent``, and ``indices`` (rows
    of ``OpenClioResults.data``). ``id`` is clio-stream's cluster id (the one the site and API use)."""

    facet: Facet
    summary: str
    name: str
    id: str = ""
    children: Optional[list["ConversationCluster"]] = None
    parent: Optional["ConversationCluster"] = None
    indices: Optional[np.ndarray] = None


@dataclass
class OpenClioResults:
    """The seed's result fields, made from clio-stream's ``ClioResult`` (kept in ``result``)."""

    facets: list[Facet]
    facetValues: list[ConversationFacetData]  # noqa: N815
    facetValuesEmbeddings: list[Optional[np.ndarray]]  # noqa: N815
    baseClusters: list[Optional[list[ConversationCluster]]]  # noqa: N815
    rootClusters: list[Optional[list[ConversationCluster]]]  # noqa: N815
    data: list[Any]
    cfg: ClioSettings
    result: ClioResult
    records: dict[str, Any] = field(default_factory=dict, repr=False)  # conversation id -> input record


def _clusters(facet: Facet, shown: FacetVisibility, rows: dict[str, int]) -> tuple[list[ConversationCluster],
                                                                                   list[ConversationCluster]]:
    """(base clusters, root clusters) of one facet's visible tree, linked both ways."""
    base: list[ConversationCluster] = []

    def build(node: ClusterNode, parent: ConversationCluster | None) -> ConversationCluster:
        cluster = ConversationCluster(facet=facet, summary=node.summary, name=node.name, id=node.id, parent=parent,
                                      indices=np.array([rows[c] for c in node.conversation_ids if c in rows],
                                                       dtype=np.int64))
        children = shown.visible_children(node)
        if children:
            cluster.children = [build(child, cluster) for child in children]
        else:
            base.append(cluster)
        return cluster

    roots = [build(shown.hierarchy.nodes[r], None) for r in shown.visible_roots]
    return base, roots


def seed_results(result: ClioResult, facets: Sequence[Facet], embeddings: dict[str, tuple[list[int], np.ndarray]],
                 records: dict[str, Any], settings: ClioSettings) -> OpenClioResults:
    """``result`` with the seed's fields: a row per conversation kept (after de-duplication), in the result's order."""
    rows = {c.id: i for i, c in enumerate(result.conversations)}
    data = [records.get(c.id, c) for c in result.conversations]
    by_facet = {f.name: f for f in facets}
    values = [ConversationFacetData(data[rows[cf.conversation_id]],
                                    [FacetValue(by_facet[n], v.value) for n, v in cf.values.items() if n in by_facet])
              for cf in result.facet_values]
    visibility = result_visibility(result)
    vectors: list[Optional[np.ndarray]] = []
    base: list[Optional[list[ConversationCluster]]] = []
    roots: list[Optional[list[ConversationCluster]]] = []
    for f in facets:
        got = embeddings.get(f.name)
        if got is None or not f.has_hierarchy:
            vectors.append(None)
        else:
            filled = np.zeros((len(rows), got[1].shape[1] if got[1].ndim == 2 else 0), dtype=np.float32)
            filled[got[0]] = got[1]
            vectors.append(filled)
        shown = visibility.facets.get(f.name)
        facet_base, facet_roots = _clusters(f, shown, rows) if shown is not None else (None, None)
        base.append(facet_base)
        roots.append(facet_roots)
    return OpenClioResults(facets=list(facets), facetValues=values, facetValuesEmbeddings=vectors, baseClusters=base,
                           rootClusters=roots, data=data, cfg=settings, result=result, records=records)


def runClio(facets: Sequence[Facet], llm: Any, embeddingModel: Any, data: Sequence[Any],  # noqa: N802,N803
            outputDirectory: str, htmlRoot: str, hostWebui: bool = True,  # noqa: N803
            cfg: ClioSettings | None = None, **kwargs: Any) -> OpenClioResults:
    """The seed's ``runClio``: see the module docstring; keyword arguments override ``cfg``'s fields."""
    from clio_stream.ops.logs import setup_logging
    from clio_stream.pipeline import clio_run

    settings = (cfg if cfg is not None else ClioSettings()).with_overrides(**kwargs)
    if settings.show_progress:  # the seed's ``verbose``: say what each stage does
        setup_logging()
    run = clio_run(facets, llm, embeddingModel, data, outputDirectory, htmlRoot, settings=settings,
                   host_webui=hostWebui)
    return seed_results(run.result, run.facets, run.embeddings, run.records, settings)


def convertOutputToWebpage(output: OpenClioResults, rootHtmlPath: str, targetDir: str,  # noqa: N802,N803
                           maxSizePerFile: int,  # noqa: N803
                           conversationFilter: Callable[[Any, Any], bool] | None = None,  # noqa: N803
                           dataToJson: Callable[[Any], Any] | None = None, verbose: bool = True) -> Path:
    """The seed's site writer over a ``runClio`` result: the site in ``targetDir`` (chunks of at most
    ``maxSizePerFile`` bytes), ``conversationFilter`` and ``dataToJson`` as ``site_conversation_filter`` and
    ``conversation_to_json``."""
    from clio_stream.stages.input_records import site_records
    from clio_stream.storage.result_folder import SiteOptions

    overrides: dict[str, Any] = {"html_root": rootHtmlPath, "site_chunk_bytes": maxSizePerFile,
                                 "show_progress": verbose, "site_conversation_filter": conversationFilter}
    if dataToJson is not None:
        overrides["conversation_to_json"] = dataToJson
    settings = output.cfg.with_overrides(**overrides)
    shown = site_records(output.records, output.result, settings)
    return SiteOptions.from_settings(settings).write(output.result, Path(targetDir), shown=shown)
