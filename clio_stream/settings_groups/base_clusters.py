"""Base-cluster settings: how many base clusters, how k-means runs, how they are named.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, Field, ImportString, field_validator

from clio_stream.seed_names import kmeans_args
from clio_stream.settings_defaults import default_n_base_clusters


class BaseClusterFields(BaseModel):
    # --- base clusters (seed: nBaseClustersFunc, maxPointsToSample*, nNameDescriptionSamplesPerCluster) ---
    n_base_clusters: ImportString[Callable[[int], int]] = Field(
        default_n_base_clusters, description="Number of base clusters for n conversations (default n // 10, as the seed).")
    max_points_to_sample_inside_cluster: int = Field(10, ge=1,
        description="Member values shown to the LLM when it names a base cluster.")
    max_points_to_sample_outside_cluster: int = Field(10, ge=0,
        description="Nearby non-member values shown as contrast when naming a base cluster.")
    n_name_description_samples_per_cluster: int = Field(3, ge=1,
        description="Name proposals sampled per base cluster; the one nearest the centre wins.")
    name_min_similarity: float = Field(
        0.2, ge=-1, le=1,
        description="A sampled cluster name must be at least this similar (cosine) to the cluster's centre; "
        "otherwise the cluster's most typical value names it.",
    )
    name_min_closeness: float = Field(
        0.6, ge=0, le=1,
        description="A cluster name is shown only if it is at least this fraction as close (cosine) to its "
        "members' centre as the members are on average, and retrieves its own cluster among its level's; "
        "otherwise its keyword label is shown and the name is marked weak. 0 turns the closeness floor off.",
    )
    kmeans_args: dict[str, Any] = Field(default_factory=lambda: {"n_init": 3, "max_iter": 300},
        description="Extra arguments for scikit-learn's KMeans (base clusters and neighbourhoods); the seed's "
        "FAISS-only ones (approximate, M, ef, n_jobs, verbose) are ignored, others refused.")

    @field_validator("kmeans_args")
    @classmethod
    def _sklearn_kmeans(cls, v: dict[str, Any]) -> dict[str, Any]:
        return kmeans_args(v)
