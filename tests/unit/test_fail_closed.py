"""Issue 13, defect 9: defaults that failed open.

Placeholder secrets (the ``change-me`` default user hash key, the CHANGE-ME-... values of the deploy
examples) are refused at start-up; ``up`` generates its demo secrets instead and never logs a key;
wrong API keys are throttled per client address.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import FailedAuthLimiter, KeyRing
from clio_stream.cli import main as cli
from clio_stream.settings import ClioSettings
from clio_stream.devstack.stack import Stack
from clio_stream.storage.store import QdrantStore

ROOT = Path(__file__).parents[2]
EXAMPLES = [ROOT / "deploy" / "compose" / ".env.example", ROOT / "deploy" / "k8s" / "secrets.env.example"]
VIEWER, ADMIN = "viewer-" + "v" * 24, "admin-" + "d" * 24


def _example(name: str) -> str:
    """A setting's value as shipped in the deploy example files (the same in both)."""
    values = {re.match(rf"{name}=(.*)", line).group(1)  # type: ignore[union-attr]
              for path in EXAMPLES for line in path.read_text().splitlines() if line.startswith(f"{name}=")}
    assert len(values) == 1, values
    return values.pop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("CLIO_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray clio-stream.toml
    monkeypatch.setenv("CLIO_CACHE_DIR", str(tmp_path / "cache"))
    return monkeypatch


# ----------------------------------------------------------------------------- placeholders


def test_example_api_keys_are_refused_without_echoing_them() -> None:
    spec = _example("CLIO_API_KEYS")
    for settings in (ClioSettings(api_keys=spec), ClioSettings(api_keys=f"viewer:{VIEWER},admin:change-me-please")):
        with pytest.raises(ValueError, match="CLIO_API_KEYS") as err:
            KeyRing.from_settings(settings)
        assert "placeholder" in str(err.value) and "secrets.token_urlsafe" in str(err.value)
        assert "CHANGE-ME-viewer-key" not in str(err.value) and "change-me-please" not in str(err.value)
        with pytest.raises(ValueError, match="placeholder"):
            create_app(settings, store=QdrantStore(":memory:"))
    assert len(KeyRing.from_settings(ClioSettings(api_keys=f"viewer:{VIEWER}"))) == 1


@pytest.mark.timeout(60, method="thread")  # a service that got past the check would wait for Kafka/Qdrant forever
@pytest.mark.parametrize("argv", [["consume"], ["recluster"], ["scheduler"], ["bootstrap-clusters"],
                                  ["delete-user", "someone", "--no-store"], ["api"]])
@pytest.mark.parametrize("hash_key", [None, "example"], ids=["default", "example-file"])
def test_services_refuse_a_placeholder_user_hash_key(clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                     argv: list[str], hash_key: str | None) -> None:
    """Exit status 2 with an error naming the setting and how to make a key, before connecting to anything."""
    clean_env.setenv("CLIO_API_KEYS", f"viewer:{VIEWER}")
    clean_env.setenv("CLIO_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens: reaching it would hang or fail
    clean_env.setenv("CLIO_QDRANT_URL", "http://127.0.0.1:1")
    if hash_key is not None:
        clean_env.setenv("CLIO_USER_ID_HASH_KEY", _example("CLIO_USER_ID_HASH_KEY"))
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    assert "CLIO_USER_ID_HASH_KEY" in caplog.text and "secrets.token_urlsafe" in caplog.text


# ----------------------------------------------------------------------------- up's demo secrets


def test_up_generates_its_demo_secrets_once_and_keeps_them_private(tmp_path: Path) -> None:
    run = tmp_path / "run"
    stack = Stack(ClioSettings(cache_dir=tmp_path))
    s = stack._demo_secrets(run)
    assert s.user_id_hash_key != "change-me" and len(s.user_id_hash_key) >= 32
    assert stack.settings is s and s.api_keys is not None and stack.admin_key and stack.viewer_key
    for name in ("user-id-hash-key", "api-keys"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600, name
    assert stack.admin_key in (run / "api-keys").read_text()
    # The user hashes in Qdrant outlive a run: the next `up` uses the same key (new API keys are fine).
    again = Stack(ClioSettings(cache_dir=tmp_path))
    assert again._demo_secrets(run).user_id_hash_key == s.user_id_hash_key
    assert again.admin_key != stack.admin_key
    # Chosen secrets are kept as they are; chosen placeholders are refused, not replaced.
    mine = Stack(ClioSettings(user_id_hash_key="my-own-secret-key-0123456789", api_keys=f"viewer:{VIEWER}"))
    assert mine._demo_secrets(tmp_path / "mine").user_id_hash_key == "my-own-secret-key-0123456789"
    assert mine.admin_key is None and not (tmp_path / "mine" / "api-keys").exists()
    with pytest.raises(ValueError, match="CLIO_USER_ID_HASH_KEY"):
        Stack(ClioSettings(user_id_hash_key=_example("CLIO_USER_ID_HASH_KEY")))._demo_secrets(tmp_path / "x")
    with pytest.raises(ValueError, match="CLIO_API_KEYS"):
        Stack(ClioSettings(api_keys=_example("CLIO_API_KEYS")))._demo_secrets(tmp_path / "y")


def test_up_never_logs_a_key(clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """`up` runs its real secret generation and summary (the services themselves are left out)."""
    started: list[Stack] = []

    def start(self: Stack) -> Stack:
        self.run_dir = Path(self.settings.cache_dir) / "run"
        self._demo_secrets(self.run_dir)
        self.urls.update(dashboard="http://127.0.0.1:8421/", dashboard_login=f"http://127.0.0.1:8421/?key={self.viewer_key}",
                         api_docs="http://127.0.0.1:8421/docs", llm="http://127.0.0.1:1/v1")
        started.append(self)
        os.kill(os.getpid(), signal.SIGTERM)  # `up` waits for this; its handler ends the wait
        return self

    clean_env.setattr(Stack, "start", start)
    clean_env.setattr(Stack, "stop", lambda self: None)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with caplog.at_level(logging.DEBUG):
            assert cli.main(["up", "--no-example-data"]) == 0
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    stack = started[0]
    keys = (run := stack.run_dir / "api-keys").read_text()  # type: ignore[operator]
    secrets = [line.split(":", 1)[1] for line in keys.split()] + [stack.settings.user_id_hash_key]
    assert len(secrets) == 4 and "clio-stream is up." in caplog.text and str(run) in caplog.text
    for secret in secrets:
        assert secret not in caplog.text
    out = capsys.readouterr().out  # the terminal gets the viewer's log-in link, nothing more
    assert f"?key={stack.viewer_key}" in out and stack.admin_key not in out
    assert all(secret not in out for secret in secrets if secret != stack.viewer_key)


# ----------------------------------------------------------------------------- key guessing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_is_a_token_bucket_per_address() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(3, 6.0, max_clients=2, clock=clock)  # a burst of 3, then one per 10 s
    for _ in range(3):
        assert limiter.retry_after("a") == 0
        limiter.failed("a")
    assert limiter.retry_after("a") == 10 and limiter.retry_after("b") == 0
    clock.now += 4
    assert limiter.retry_after("a") == 6
    clock.now += 6
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 10  # earned back one attempt, spent it
    clock.now += 3600
    assert limiter.retry_after("a") == 0
    limiter.failed("a")
    assert limiter.retry_after("a") == 0  # a full bucket again, not more than the burst
    limiter.failed("b")
    limiter.failed("c")  # over max_clients: the least recently failing address ("a") is forgotten
    assert set(limiter._buckets) == {"b", "c"}


def test_wrong_keys_are_throttled_per_address(tmp_path: Path) -> None:
    settings = ClioSettings(api_keys=f"viewer:{VIEWER},admin:{ADMIN}", publish_dir=tmp_path,
                            api_auth_failures_burst=3, api_auth_failures_per_minute=6)
    app = create_app(settings, store=QdrantStore(":memory:"))
    clock = Clock()
    app.state.ctx.auth_limiter = FailedAuthLimiter(3, 6.0, clock=clock)
    guesser = TestClient(app, client=("203.0.113.7", 40000))
    other = TestClient(app, client=("198.51.100.2", 40000))
    good = {"Authorization": f"Bearer {VIEWER}"}
    for i in range(3):
        r = guesser.get("/v1/facets", headers={"Authorization": f"Bearer wrong-guess-{i:020d}"})
        assert r.status_code == 401
    assert guesser.get("/v1/facets").status_code == 401  # no key at all: not a guess, not counted
    r = guesser.get("/v1/facets", headers={"Authorization": "Bearer another-wrong-guess-0000"})
    assert r.status_code == 429 and r.headers["retry-after"] == "10"
    # While throttled even the right key is refused: the answers tell a guesser nothing.
    assert guesser.get("/v1/facets", headers=good).status_code == 429
    assert guesser.get("/?key=" + VIEWER, follow_redirects=False).status_code == 429
    assert other.get("/v1/facets", headers=good).status_code == 200
    clock.now += 10
    assert guesser.get("/v1/facets", headers=good).status_code == 200
    # The dashboard's one-time ?key= log-in counts as a guess too.
    assert guesser.get("/?key=wrong-dashboard-key-0000", follow_redirects=False).status_code == 401
    assert guesser.get("/v1/facets", headers=good).status_code == 429
    metrics = other.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert re.search(r'auth_failures_total\{[^}]*"429"\} [1-9]', metrics), metrics[-2000:]
