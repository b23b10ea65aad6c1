"""``import openclio``: the seed's (OpenClio's) names, served by clio-stream, so OpenClio scripts run unchanged.

A thin re-export of clio-stream's seed-compatible API (``clio_stream.seed_api`` and the aliases in
``clio_stream``); the README's migration guide lists what differs. Uninstall OpenClio itself first: both
install a package named ``openclio``.
"""

from clio_stream import (
    Facet,
    OpenClioConfig,
    doCachedReplacements,
    genericSummaryFacets,
    getExampleData,
    mainFacets,
)
from clio_stream.seed_api import (
    ConversationCluster,
    ConversationFacetData,
    FacetValue,
    OpenClioResults,
    convertOutputToWebpage,
    runClio,
)

__all__ = [
    "ConversationCluster",
    "ConversationFacetData",
    "Facet",
    "FacetValue",
    "OpenClioConfig",
    "OpenClioResults",
    "convertOutputToWebpage",
    "doCachedReplacements",
    "genericSummaryFacets",
    "getExampleData",
    "mainFacets",
    "runClio",
]
