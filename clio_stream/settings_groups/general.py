"""General settings: the seed, and how many prompts and texts go into one call.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class GeneralFields(BaseModel):
    # --- general (seed: seed, llmBatchSize, embedBatchSize) ---
    seed: int = Field(27, description="Seed for sampling, k-means and the LLM, so a run can be repeated.")
    llm_batch_size: int = Field(1000, ge=1, description="Prompts handed to the LLM per call.")
    embed_batch_size: int = Field(256, ge=1, description="Texts per embedding call.")
