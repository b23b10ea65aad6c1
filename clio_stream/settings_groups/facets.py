"""Facet settings: the operator's own facets, and which facets are in use.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from clio_stream.domain.facet_specs import FacetSpec


class FacetFields(BaseModel):
    # --- facets (the main facets, and the operator's own: clio_stream.domain.facet_specs) ---
    custom_facets: list[FacetSpec] = Field(
        default_factory=list, description="Your own facets as data ([[custom_facets]] in TOML: name, question, "
        "prefill, summary_criteria, numeric, source), used by every command like the main facets.")
    facets: list[str] | None = Field(
        None, description="The facets in use, by name, from the main and custom facets (default: all of them).")

    @model_validator(mode="after")
    def _facet_names(self) -> "FacetFields":
        names = [f.name for f in self.custom_facets]
        if len(set(names)) != len(names):
            raise ValueError(f"custom_facets: names must be unique, got {names}")
        return self
