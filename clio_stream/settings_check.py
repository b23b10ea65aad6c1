"""``clio-stream config check``: the settings that are fine for a laptop demo and unsafe anywhere else.

Each rule is a plain function of ``ClioSettings`` returning its findings, so the rules are unit-tested one by
one and the CLI only prints them. An *error* is a setting that exposes users or their data (a placeholder
secret, an API open to the network without keys, clusters small enough to single out a user); a *warning* is
a demo value an operator should choose on purpose (plain-text Kafka to another host, raw conversations served).
``up`` generates its own secrets for the demo, so it is not subject to these checks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlparse

from clio_stream.secret_settings import SECRET_SETTINGS, is_placeholder
from clio_stream.settings import ClioSettings

#: Distinct users below which a cluster can describe one person; the demo default (2) is only for tiny data.
RECOMMENDED_MIN_USERS = 5


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    setting: str
    severity: Severity
    message: str


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses; '0.0.0.0' and '::' listen on every interface."""
    host = host.strip("[]").lower()
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name other than localhost: another machine as far as we can tell


def _secret_value(settings: ClioSettings, name: str) -> str:
    value = getattr(settings, name)  # noqa: B009 - iterating over the declared secret field names
    if value is None:
        return ""
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def placeholder_secrets(settings: ClioSettings) -> list[Finding]:
    return [Finding(name, Severity.ERROR, f"{name} is a placeholder ('change-me'): set a long random secret")
            for name in sorted(SECRET_SETTINGS) if is_placeholder(_secret_value(settings, name))]


def open_api(settings: ClioSettings) -> list[Finding]:
    if is_loopback(settings.web_host) or settings.api_keys is not None:
        return []
    if settings.api_allow_anonymous:
        return [Finding("api_allow_anonymous", Severity.ERROR,
                        f"the API listens on {settings.web_host} and lets anyone in as a viewer: set CLIO_API_KEYS")]
    return []  # without keys and anonymous access the API refuses to start on its own


def small_clusters(settings: ClioSettings) -> list[Finding]:
    if settings.min_cluster_users < 2:
        return [Finding("min_cluster_users", Severity.ERROR,
                        "min_cluster_users < 2 shows clusters made of one user's conversations")]
    if settings.min_cluster_users < RECOMMENDED_MIN_USERS:
        return [Finding("min_cluster_users", Severity.WARNING,
                        f"min_cluster_users = {settings.min_cluster_users} is a demo value; with real users choose "
                        f"at least {RECOMMENDED_MIN_USERS} (the Clio paper uses far larger minimums)")]
    return []


def raw_conversations(settings: ClioSettings) -> list[Finding]:
    if settings.show_conversations and not is_loopback(settings.web_host):
        return [Finding("show_conversations", Severity.WARNING,
                        "raw conversations are shown to analysts on a networked API; set CLIO_SHOW_CONVERSATIONS="
                        "false unless your users agreed to it")]
    return []


def plaintext_kafka(settings: ClioSettings) -> list[Finding]:
    hosts = [b.rsplit(":", 1)[0] for b in settings.kafka_bootstrap.split(",") if b.strip()]
    if settings.kafka_security_protocol == "PLAINTEXT" and not all(is_loopback(h.strip()) for h in hosts):
        return [Finding("kafka_security_protocol", Severity.WARNING,
                        "conversations travel to a remote Kafka in plain text: use SSL or SASL_SSL")]
    return []


def open_metrics(settings: ClioSettings) -> list[Finding]:
    if settings.metrics_port is not None and settings.metrics_token is None and not is_loopback(settings.metrics_host):
        return [Finding("metrics_token", Severity.WARNING,
                        f"/metrics is open on {settings.metrics_host}; set CLIO_METRICS_TOKEN or keep it on a "
                        "private network")]
    return []


def open_qdrant(settings: ClioSettings) -> list[Finding]:
    url = urlparse(settings.qdrant_url)
    if url.scheme in ("http", "https") and not is_loopback(url.hostname or "") and settings.qdrant_api_key is None:
        return [Finding("qdrant_api_key", Severity.WARNING,
                        f"Qdrant at {url.hostname} is used without an API key; it holds every user's facet values")]
    return []


RULES: tuple[Callable[[ClioSettings], list[Finding]], ...] = (
    placeholder_secrets, open_api, small_clusters, raw_conversations, plaintext_kafka, open_metrics, open_qdrant)


def check_settings(settings: ClioSettings) -> list[Finding]:
    """Every rule's findings, errors first."""
    found = [f for rule in RULES for f in rule(settings)]
    return sorted(found, key=lambda f: (f.severity != Severity.ERROR, f.setting))
