"""Hierarchy settings: neighbourhoods, parent names, assignment and renaming, the level loop.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, Field, ImportString

from clio_stream.settings_defaults import default_names_per_neighbourhood, default_n_neighbourhoods


class HierarchyFields(BaseModel):
    # --- hierarchy (seed: minTopLevelSize, nAverageClustersPerNeighborhood, nSamplesOutsideNeighborhood, ...) ---
    min_top_level_size: int = Field(5, ge=1,
        description="Stop building levels once a level has at most this many clusters.")
    n_neighbourhoods: ImportString[Callable[[int], int]] = Field(
        default_n_neighbourhoods, description="Number of k-means neighbourhoods for n clusters of one level (default n // 40).")
    n_samples_outside_neighbourhood: int = Field(5, ge=0,
        description="Nearest clusters from other neighbourhoods shown when proposing parents.")
    n_names_per_neighbourhood: ImportString[Callable[[int], int]] = Field(
        default_names_per_neighbourhood, description="Parent names to propose for a neighbourhood of n clusters (default n // 2).")
    n_categorize_samples: int = Field(3, ge=1,
        description="Samples when assigning a child to a parent; the majority wins.")
    max_categorize_candidates: int = Field(
        12, ge=2, description="Parent names shown when assigning one child (the nearest by embedding)."
    )
    max_children_for_renaming: int = Field(10, ge=1,
        description="Children shown to the LLM when it renames a parent after assignment.")
    n_rename_samples: int = Field(3, ge=1, description="Name proposals sampled when renaming a parent.")
    max_hierarchy_levels: int = Field(6, ge=1, description="Safety stop for the level loop.")
