"""Site settings: data chunks, the site-only conversation filter, the URL root, host and port.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, Field, ImportString, field_validator


class SiteFields(BaseModel):
    # --- site ---
    site_chunk_size: int = Field(100, ge=1, description="At most this many conversations per data chunk file.")
    site_chunk_bytes: int = Field(
        10_000_000, ge=1024, description="At most this many bytes of JSON per data chunk file (before compression).")
    site_conversation_filter: ImportString[Callable[[Any, Any], bool]] | None = Field(
        None, description="Show a conversation on the site only when this returns True, given its input record and "
        "its facet values; analysis and counts are unchanged (a site-only filter).")
    html_root: str = Field("", description="URL path the site is served under (the seed's htmlRoot), e.g. '/clio'.")
    web_host: str = Field("127.0.0.1", description="Interface the API and site servers listen on.")
    web_port: int = Field(8421, description="Port of the API and site servers.")

    @field_validator("html_root")
    @classmethod
    def _strip_root(cls, v: str) -> str:
        return v.rstrip("/")
