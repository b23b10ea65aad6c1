"""View settings: declared metadata keys and their bounds, time filters, the cluster map, alerts.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from clio_stream.domain.alerts import AlertRule
from clio_stream.domain.metadata import MetadataKey


class ViewFields(BaseModel):
    # --- views: metadata, map, alerts (clio_stream.views) ---
    metadata_keys: list[MetadataKey] = Field(
        default_factory=list, description="Declared metadata keys, e.g. [{\"name\": \"product\", \"role\": \"viewer\"}]: "
        "shown in breakdowns and filters to that role and above, indexed in Qdrant; other keys are stored, never shown.")
    metadata_max_keys: int = Field(32, ge=0, description="Metadata keys kept per conversation; the rest are dropped "
                                   "(noted on the conversation's record).")
    metadata_max_key_chars: int = Field(64, ge=1, description="Longer metadata keys are dropped.")
    metadata_max_value_chars: int = Field(200, ge=1, description="Metadata values (scalars, kept as strings) are "
                                          "cut to this length; nested values are dropped.")
    filter_time_cell_s: float = Field(86400.0, gt=0, description="Time filters (from/to) are widened to whole "
                                      "periods of this length, and a cluster is shown under one only when each "
                                      "period in it holds no conversation or meets the privacy minimums.")
    map_projection: Literal["tsne", "pca"] = Field(
        "tsne", description="How the dashboard's cluster map is laid out at publish time: t-SNE of the base "
        "clusters' centroids (PCA when there are too few of them), or PCA alone.")
    alert_rules: list[AlertRule] = Field(
        default_factory=list, description="Alert rules evaluated at each publish, e.g. [{\"name\": \"new\", "
        "\"kind\": \"new_cluster\"}] (kinds: new_cluster, emerging, growth, mean_above, members_in_window).")
    alert_webhooks: list[str] = Field(default_factory=list, description="URLs every alert is POSTed to (JSON).")
    alert_webhook_secret: SecretStr | None = Field(
        None, description="Key of the HMAC-SHA256 signature header (X-Clio-Signature) of every webhook call.")
    alert_retries: int = Field(3, ge=0, description="Retries of a failed webhook call (doubling back-off); an "
                               "alert still undelivered is tried again at the next publish.")
    alert_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook call.")
