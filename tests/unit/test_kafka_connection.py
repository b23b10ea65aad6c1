"""Every Kafka client gets the same security settings, and a configuration that cannot work is refused at once.

The embedded Tansu broker could not stand in for a secured cluster here (with ``--authentication`` it refuses
``tansu user create`` itself, so no SCRAM user can exist with in-memory storage; its ``--cert`` listener did not
complete a handshake with kafka-python), so these tests check the client configuration; the PLAINTEXT path goes
through the same ``KafkaConnection`` in every streaming test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clio_stream.streaming.connection import KafkaConnection
from clio_stream.settings import ClioSettings


def test_plaintext_is_the_default_and_a_bare_string_means_it() -> None:
    assert KafkaConnection.of("h:9092").client_config() == {"bootstrap_servers": "h:9092",
                                                             "security_protocol": "PLAINTEXT"}
    assert KafkaConnection.from_settings(ClioSettings(kafka_bootstrap="h:9092")) == KafkaConnection("h:9092")


def test_sasl_ssl_from_settings_reaches_every_client(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = ClioSettings(kafka_bootstrap="b-1.msk:9096", kafka_security_protocol="SASL_SSL",
                     kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="clio",
                     kafka_sasl_password="pw-123", kafka_ssl_cafile=str(ca))
    config = KafkaConnection.from_settings(s).client_config()
    assert config == {"bootstrap_servers": "b-1.msk:9096", "security_protocol": "SASL_SSL",
                      "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "clio",
                      "sasl_plain_password": "pw-123", "ssl_check_hostname": True, "ssl_cafile": str(ca)}
    assert "pw-123" not in repr(KafkaConnection.from_settings(s)) and "pw-123" not in repr(s)
    assert "pw-123" not in str(s.public_dict())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"security_protocol": "SASL_SSL"}, "needs kafka_sasl_mechanism"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "kafka_sasl_password"),
    ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}, "does not use SASL"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "not a readable file"),
    ({"ssl_cafile": "/etc/hostname"}, "uses no TLS"),
])
def test_a_configuration_that_cannot_connect_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KafkaConnection("h:9092", **kwargs)


def test_a_real_client_accepts_the_configuration() -> None:
    """kafka-python itself takes the keyword arguments (it rejects unknown ones) without connecting."""
    from kafka import KafkaConsumer

    conn = KafkaConnection("127.0.0.1:1", "SASL_PLAINTEXT", "PLAIN", "u", "p")
    consumer = KafkaConsumer(**conn.client_config(), api_version=(2, 5, 0))
    consumer.close()
