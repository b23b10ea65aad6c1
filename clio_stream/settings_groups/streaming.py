"""Streaming settings: the Kafka connection and topics, worker batches, metrics, back-off, poison records.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class StreamingFields(BaseModel):
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
    max_in_flight_batches: int = Field(
        2, ge=1, description="Polled batches a worker processes at once: the next batch's prompts are in the LLM "
        "while the previous one is embedded, written and committed (in poll order). 1: one batch at a time.")
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
