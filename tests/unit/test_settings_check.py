"""`clio-stream config check`: each rule fires on the unsafe value and stays quiet on the safe one."""

from __future__ import annotations

import pytest

from clio_stream.cli.main import main as cli_main
from clio_stream.settings import ClioSettings
from clio_stream.settings_check import Severity, check_settings, is_loopback

SAFE = dict(user_id_hash_key="k" * 40, min_cluster_users=10, web_host="127.0.0.1")


def _found(**overrides: object) -> dict[str, Severity]:
    return {f.setting: f.severity for f in check_settings(ClioSettings(**{**SAFE, **overrides}))}


def test_safe_settings_pass() -> None:
    assert _found() == {}


@pytest.mark.parametrize(("overrides", "setting", "severity"), [
    ({"user_id_hash_key": "CHANGE-ME-in-production"}, "user_id_hash_key", Severity.ERROR),
    ({"api_keys": "viewer:change-me-1"}, "api_keys", Severity.ERROR),
    ({"web_host": "0.0.0.0", "api_allow_anonymous": True}, "api_allow_anonymous", Severity.ERROR),
    ({"min_cluster_users": 1}, "min_cluster_users", Severity.ERROR),
    ({"min_cluster_users": 2}, "min_cluster_users", Severity.WARNING),
    ({"web_host": "0.0.0.0", "api_keys": "viewer:" + "v" * 30, "show_conversations": True},
     "show_conversations", Severity.WARNING),
    ({"kafka_bootstrap": "kafka-0.internal:9092,127.0.0.1:9092"}, "kafka_security_protocol", Severity.WARNING),
    ({"metrics_port": 9400, "metrics_host": "0.0.0.0"}, "metrics_token", Severity.WARNING),
    ({"qdrant_url": "http://qdrant.internal:6333"}, "qdrant_api_key", Severity.WARNING),
])
def test_each_rule_fires(overrides: dict[str, object], setting: str, severity: Severity) -> None:
    assert _found(**overrides).get(setting) == severity


@pytest.mark.parametrize(("overrides", "setting"), [
    ({"web_host": "0.0.0.0", "api_keys": "viewer:" + "v" * 30, "show_conversations": False}, "show_conversations"),
    ({"kafka_bootstrap": "kafka-0.internal:9093", "kafka_security_protocol": "SASL_SSL"}, "kafka_security_protocol"),
    ({"metrics_port": 9400, "metrics_host": "0.0.0.0", "metrics_token": "t" * 30}, "metrics_token"),
    ({"qdrant_url": "http://qdrant.internal:6333", "qdrant_api_key": "q" * 30}, "qdrant_api_key"),
])
def test_the_safe_choice_quiets_the_rule(overrides: dict[str, object], setting: str) -> None:
    assert setting not in _found(**overrides)


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("kafka.example.com") and not is_loopback("10.0.0.5")


def test_the_command_exits_1_on_an_error_and_on_warnings_with_strict(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in SAFE.items():
        monkeypatch.setenv(f"CLIO_{name.upper()}", str(value))
    assert cli_main(["config", "check"]) == 0
    monkeypatch.setenv("CLIO_MIN_CLUSTER_USERS", "3")
    assert cli_main(["config", "check"]) == 0 and "warning" in capsys.readouterr().out
    assert cli_main(["config", "check", "--strict"]) == 1
    monkeypatch.setenv("CLIO_USER_ID_HASH_KEY", "change-me")
    assert cli_main(["config", "check"]) == 1 and "user_id_hash_key" in capsys.readouterr().out
