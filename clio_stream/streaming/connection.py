"""How every Kafka client of clio-stream reaches the brokers: bootstrap servers plus TLS and SASL.

One typed value built once from the settings and handed to every producer, consumer and admin client
(``clio_stream.streaming.kafka_io``), so a secured cluster (MSK, Confluent Cloud, any TLS or SASL listener) needs the
same few settings everywhere and nothing can connect in plaintext by accident. A bare bootstrap string still
works where a caller has nothing else (tests, the embedded broker): it means PLAINTEXT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    from clio_stream.settings import ClioSettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaConnection:
    """Bootstrap servers and the security a broker requires; ``client_config()`` is kafka-python's kwargs."""

    bootstrap: str | list[str]
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        """Refuse a configuration that could only fail later, at the first connection, with a vaguer error."""
        sasl = self.security_protocol.startswith("SASL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"kafka_security_protocol={self.security_protocol} needs kafka_sasl_mechanism")
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"kafka_sasl_mechanism={self.sasl_mechanism} needs kafka_sasl_username and "
                             "kafka_sasl_password")
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(f"kafka_sasl_mechanism is set but kafka_security_protocol={self.security_protocol} "
                             "does not use SASL (use SASL_SSL or SASL_PLAINTEXT)")
        uses_tls = self.security_protocol in ("SSL", "SASL_SSL")
        files = {"kafka_ssl_cafile": self.ssl_cafile, "kafka_ssl_certfile": self.ssl_certfile,
                 "kafka_ssl_keyfile": self.ssl_keyfile}
        for name, path in files.items():
            if path is None:
                continue
            if not uses_tls:
                raise ValueError(f"{name} is set but kafka_security_protocol={self.security_protocol} uses no TLS")
            if not Path(path).is_file():
                raise ValueError(f"{name}={path} is not a readable file")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("kafka_ssl_certfile and kafka_ssl_keyfile go together (a client certificate and its key)")

    @classmethod
    def of(cls, where: "KafkaConnection | str | list[str]") -> "KafkaConnection":
        """``where`` as a connection: a bare bootstrap string means PLAINTEXT."""
        return where if isinstance(where, KafkaConnection) else cls(bootstrap=where)

    @classmethod
    def from_settings(cls, settings: "ClioSettings") -> "KafkaConnection":
        password = settings.kafka_sasl_password
        return cls(
            bootstrap=settings.kafka_bootstrap,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_username=settings.kafka_sasl_username,
            sasl_password=None if password is None else password.get_secret_value(),
            ssl_cafile=settings.kafka_ssl_cafile,
            ssl_certfile=settings.kafka_ssl_certfile,
            ssl_keyfile=settings.kafka_ssl_keyfile,
            ssl_check_hostname=settings.kafka_ssl_check_hostname,
        )

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments for ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient`` alike."""
        config: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.sasl_mechanism is not None:
            config.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password)
        if self.security_protocol in ("SSL", "SASL_SSL"):
            config["ssl_check_hostname"] = self.ssl_check_hostname
            for key, value in (("ssl_cafile", self.ssl_cafile), ("ssl_certfile", self.ssl_certfile),
                               ("ssl_keyfile", self.ssl_keyfile)):
                if value is not None:
                    config[key] = value
        return config
