"""The fields of ``ClioSettings``, one module per group (general, input, ..., Qdrant), each a pydantic mixin.

``clio_stream.settings.ClioSettings`` composes them and keeps what spans groups: the sources (env, TOML), the
seed's camelCase names, copies with overrides. A validator that reads one group's fields lives with that group.
``GROUPS`` is the groups in the order the reference (docs/configuration.md) lists their fields.
"""

from __future__ import annotations

from clio_stream.settings_groups.api import ApiFields
from clio_stream.settings_groups.base_clusters import BaseClusterFields
from clio_stream.settings_groups.embeddings import EmbeddingFields
from clio_stream.settings_groups.facets import FacetFields
from clio_stream.settings_groups.general import GeneralFields
from clio_stream.settings_groups.hierarchy import HierarchyFields
from clio_stream.settings_groups.input import InputFields
from clio_stream.settings_groups.living import LivingClusterFields
from clio_stream.settings_groups.llm import LLMFields
from clio_stream.settings_groups.privacy import PrivacyFields
from clio_stream.settings_groups.qdrant import QdrantFields
from clio_stream.settings_groups.runtime import RuntimeFields
from clio_stream.settings_groups.site import SiteFields
from clio_stream.settings_groups.streaming import StreamingFields
from clio_stream.settings_groups.views import ViewFields

GROUPS = (
    GeneralFields,
    InputFields,
    BaseClusterFields,
    HierarchyFields,
    LLMFields,
    EmbeddingFields,
    LivingClusterFields,
    PrivacyFields,
    FacetFields,
    ViewFields,
    SiteFields,
    RuntimeFields,
    ApiFields,
    StreamingFields,
    QdrantFields,
)

__all__ = [g.__name__ for g in GROUPS] + ["GROUPS"]
