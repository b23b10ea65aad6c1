"""Living-cluster settings: matching old and new clusters, when to re-cluster, re-clustering at scale, trends.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class LivingClusterFields(BaseModel):
    # --- living clusters (re-clustering keeps ids and names of what did not change) ---
    match_min_similarity: float = Field(0.5, ge=0, le=1, description="Old and new clusters scoring below this "
                                        "(weight x centroid cosine + (1 - weight) x member Jaccard) do not match.")
    match_weight: float = Field(0.4, ge=0, le=1, description="Weight of centroid cosine against member overlap.")
    keep_name_jaccard: float = Field(0.8, ge=0, le=1, description="A matched cluster with at least this member "
                                     "overlap (and keep_name_cosine) keeps its name without an LLM call.")
    keep_name_cosine: float = Field(0.95, ge=-1, le=1, description="Centroid cosine needed to keep a name.")
    hierarchy_rebuild_fraction: float = Field(0.3, ge=0, le=1, description="Rebuild the upper levels when more "
                                              "than this share of leaves is new or gone; otherwise patch them.")

    # When to re-cluster (clio_stream.living.scheduler.Triggers.from_settings; CLI flags override).
    recluster_interval_s: float = Field(900.0, gt=0, description="Re-cluster at least this often while new data "
                                        "arrives (wall-clock schedule).")
    recluster_new_fraction: float = Field(0.10, gt=0, description="Re-cluster when the points stored since the last "
                                          "run reach this share of the points then.")
    recluster_min_points: int = Field(30, ge=1, description="Nothing is clustered before this many points exist.")
    recluster_lock_ttl_s: float = Field(120.0, gt=0, description="Lease of the cluster-wide clustering lock "
                                        "(re-clustering and bootstrap-clusters); the running job renews it every "
                                        "third of this, so a job that died blocks the next one at most this long.")
    recluster_outlier_rate: float = Field(0.25, gt=0, le=1, description="Re-cluster when a worker's recent outlier "
                                          "rate reaches this.")
    drift_delta: float = Field(0.002, gt=0, lt=1, description="Confidence parameter of the ADWIN detector each "
                               "worker runs on assignment distances (smaller = fewer, surer detections).")
    drift_min_increase: float = Field(0.02, ge=0, description="A detected change counts as drift only when the "
                                      "mean assignment distance rose by at least this much.")

    # Re-clustering at scale (docs/scaling.md, section 6): a window, a bounded sample, a capped k, a paged pass.
    cluster_window_days: float | None = Field(30.0, gt=0, description="A re-clustering covers the conversations "
                                              "of this many days back from the newest stored conversation time "
                                              "(points without a time always count); None: every stored point.")
    retention_days: float | None = Field(None, gt=0, description="The re-clustering job deletes stored points "
                                         "whose conversation time is older than this many days before now; "
                                         "None keeps everything. At least cluster_window_days.")
    recluster_sample_size: int = Field(50_000, ge=10, description="Points per facet k-means is fitted on and "
                                       "names are drawn from: the window's first this many in point-id order "
                                       "(a uniform sample that stays stable between runs).")
    recluster_max_base_clusters: int = Field(1000, ge=1, description="Cap on a re-clustering's base clusters per "
                                             "facet, whatever n_base_clusters says: it bounds the naming prompts.")
    recluster_page_size: int = Field(16_384, ge=16, description="Points per page of the assignment pass (its "
                                     "memory is bounded by this; progress is stored after every page).")
    recluster_assign_shards: int = Field(1, ge=1, description="Point-id ranges the assignment pass is split into; "
                                         "`clio-stream assign-shard` processes run the ones the job does not.")

    # Trends: per-cluster counts per time window, and clusters flagged as emerging.
    trend_window_s: float = Field(3600.0, gt=0, description="Width of one trend window (by conversation time).")
    trend_windows: int = Field(24, ge=1, le=1000, description="Number of most recent windows kept per cluster.")
    emerging_min_growth: float = Field(0.5, ge=0, description="Growth since the previous version (new members / "
                                       "old size) needed to be flagged emerging.")
    emerging_top: int = Field(5, ge=0, description="At most this many fastest-growing clusters per facet are "
                              "flagged emerging.")

    @model_validator(mode="after")
    def _retention_covers_window(self) -> "LivingClusterFields":
        if self.retention_days is not None and self.cluster_window_days is not None \
                and self.retention_days < self.cluster_window_days:
            raise ValueError(f"retention_days ({self.retention_days}) is shorter than cluster_window_days "
                             f"({self.cluster_window_days}): the window would cover deleted points")
        return self
