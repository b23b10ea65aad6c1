"""Qdrant settings: the server, collection names and layout, and whether raw conversations are stored.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class QdrantFields(BaseModel):
    # Qdrant (read by clio_stream.storage.qdrant.QdrantConnection.options).
    qdrant_url: str = Field("http://127.0.0.1:6333", description="Qdrant server URL, ':memory:' or a folder.")
    qdrant_prefix: str = Field("clio", description="Prefix of the collection names.")
    qdrant_grpc_port: int | None = Field(None, description="gRPC port when not the default 6334.")
    qdrant_prefer_grpc: bool = Field(
        True, description="Talk to the Qdrant server over gRPC (faster for bulk writes) rather than HTTP.")
    qdrant_timeout_s: float = Field(30.0, gt=0, description="Timeout of one Qdrant request.")
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server, if it requires one.")
    qdrant_quantization: Literal["none", "int8"] = Field("none", description="New facet collections keep an "
                                                          "int8 scalar-quantised copy of the vectors in RAM.")
    qdrant_vectors_on_disk: bool = Field(False, description="New facet collections keep the original vectors "
                                         "on disk (memory-mapped) instead of in RAM.")
    qdrant_payload_on_disk: bool = Field(False, description="New collections keep payloads on disk (indexed "
                                         "fields stay in RAM).")
    qdrant_hnsw_m: int = Field(16, ge=0, description="HNSW graph degree of new facet collections; 0 builds no "
                               "graph (clio-stream never searches the facet vectors, it scrolls them).")
    qdrant_shard_number: int = Field(1, ge=1, description="Shards of new facet and conversation collections "
                                     "(the ones that grow with the store; the state collection keeps one). "
                                     "At least the number of nodes in a Qdrant cluster, to spread them over "
                                     "the nodes; on one node a second shard did not speed up the re-clustering "
                                     "pass (docs/scaling.md section 6). Ignored by the embedded engine.")
    store_raw_conversations: bool = Field(
        True,
        description="Keep raw conversation text in Qdrant (handy for the demo). Turn OFF in production: "
        "the facets are the privacy-preserving product, raw text is not.",
    )
