"""clio-stream: privacy-preserving insight into how people use an AI assistant, in batch and streaming.

The batch entry point is ``run_clio``; ``clio-stream --help`` lists the command line.
"""

from clio_stream.domain.facets import Facet, generic_summary_facets, genericSummaryFacets, main_facets, mainFacets
from clio_stream.settings import ClioSettings, OpenClioConfig
from clio_stream.llm.templating import cached_replacements, doCachedReplacements

__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavy imports (torch, sklearn) only when the pipeline is actually used.
    if name in {"run_clio", "runClio"}:
        from clio_stream import pipeline

        return getattr(pipeline, name)
    if name in {"get_example_data", "getExampleData"}:
        from clio_stream import batch_input

        return getattr(batch_input, name)
    raise AttributeError(name)


__all__ = [
    "ClioSettings",
    "Facet",
    "OpenClioConfig",
    "cached_replacements",
    "doCachedReplacements",
    "genericSummaryFacets",
    "generic_summary_facets",
    "getExampleData",
    "get_example_data",
    "mainFacets",
    "main_facets",
    "runClio",
    "run_clio",
]
