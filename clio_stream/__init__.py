"""clio-stream: privacy-preserving insight into how people use an AI assistant, in batch and streaming.

The batch entry point is ``run_clio``; ``clio-stream --help`` lists the command line.
"""

from clio_stream.domain.facets import Facet, generic_summary_facets, genericSummaryFacets, main_facets, mainFacets
from clio_stream.settings import ClioSettings, OpenClioConfig
from clio_stream.llm.templating import cached_replacements, chat_prompt, doCachedReplacements

__version__ = "0.1.0"


def __getattr__(name: str):
    # Heavy imports (torch, sklearn) only when the pipeline is actually used.
    if name == "run_clio":
        from clio_stream.pipeline import run_clio

        return run_clio
    if name in {"runClio", "OpenClioResults", "convertOutputToWebpage"}:
        from clio_stream import seed_api

        return getattr(seed_api, name)
    if name in {"get_example_data", "getExampleData"}:
        from clio_stream import batch_input

        return getattr(batch_input, name)
    raise AttributeError(name)


__all__ = [
    "ClioSettings",
    "Facet",
    "OpenClioConfig",
    "OpenClioResults",
    "cached_replacements",
    "chat_prompt",
    "convertOutputToWebpage",
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
