"""API settings: published versions, API keys and roles, CORS, request bounds, sessions, throttling, workers.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


class ApiFields(BaseModel):
    # --- api ---
    # The HTTP API and dashboard (api/). Keys: "role:KEY" pairs, comma-separated; roles viewer < analyst < admin.
    publish_dir: Path | None = Field(
        None, description="Published clustering versions (versions/<v>/, pointer file 'current'); "
        "default <cache_dir>/published.")
    api_keys: SecretStr | None = Field(
        None, description="API keys with roles, e.g. 'viewer:KEY1,analyst:KEY2,admin:KEY3' (env CLIO_API_KEYS). "
        "Only their SHA-256 is kept in memory.")
    api_allow_anonymous: bool = Field(
        False, description="Without keys the API refuses to start; True lets it start and treats everyone as viewer.")
    api_cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list in env); empty = closed.")
    api_max_body_bytes: int = Field(8 << 20, ge=1024, description="Larger request bodies are refused with 413.")
    api_max_page_size: int = Field(500, ge=1, description="Largest page of cluster members; bigger limits are clamped.")
    api_max_batch: int = Field(1000, ge=1, description="Most conversations in one POST /v1/conversations:batch.")
    api_session_ttl_s: float = Field(12 * 3600.0, gt=0, description="Lifetime of a dashboard cookie session.")
    api_produce_timeout_s: float = Field(10.0, gt=0, description="Wait for Kafka's ack before answering 503.")
    api_status_cache_s: float = Field(2.0, ge=0, description="GET /v1/status reuses its answer this long.")
    api_worker_stale_s: float = Field(300.0, gt=0, description="Worker metrics older than this are ignored.")
    api_dashboard_poll_s: float = Field(5.0, gt=0, description="How often the dashboard polls status and updates.")
    api_auth_failures_burst: int = Field(10, ge=1, description="Wrong API keys one client address may present "
                                         "in a row before it is answered 429 (per API process).")
    api_auth_failures_per_minute: float = Field(6.0, gt=0, description="How fast a throttled address earns "
                                                "attempts back (token bucket).")
    api_workers: int = Field(
        1, ge=1, description="uvicorn worker processes for `python -m api.app`; each keeps its own /metrics "
        "and its own list of just-posted (pending) ids.")
