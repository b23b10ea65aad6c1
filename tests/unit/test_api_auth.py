"""Unit tests of API key parsing, roles, hashing and sessions (pure: no server, no app)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re

import pytest

from api import auth
from api.auth import KeyRing, Principal, Role, SessionStore, hash_key, key_label, parse_api_keys
from clio_stream.settings import ClioSettings

VIEWER, ANALYST, ADMIN = "v" * 20 + "-view", "a" * 20 + "-anal", "d" * 20 + "-admn"
SPEC = f"viewer:{VIEWER}, analyst:{ANALYST} ,ADMIN:{ADMIN}"


def test_roles_are_ordered_and_parsed_case_insensitively() -> None:
    assert Role.viewer < Role.analyst < Role.admin
    assert Role.parse(" Admin ") is Role.admin
    with pytest.raises(ValueError, match="unknown role 'owner'"):
        Role.parse("owner")
    p = Principal(role=Role.analyst, key_id="x", via="bearer")
    assert p.allows(Role.viewer) and p.allows(Role.analyst) and not p.allows(Role.admin)


def test_parse_keeps_only_hashes_with_roles() -> None:
    entries = parse_api_keys(SPEC)
    assert entries == [(hashlib.sha256(VIEWER.encode()).digest(), Role.viewer),
                       (hashlib.sha256(ANALYST.encode()).digest(), Role.analyst),
                       (hashlib.sha256(ADMIN.encode()).digest(), Role.admin)]
    assert all(len(digest) == 32 for digest, _ in entries)
    assert parse_api_keys(None) == [] and parse_api_keys("  ") == [] and parse_api_keys("a" * 0) == []


def test_key_may_contain_colons_and_blank_items_are_skipped() -> None:
    entries = parse_api_keys(",viewer:abc:def:0123456789abcdef,,")
    assert entries == [(hash_key("abc:def:0123456789abcdef"), Role.viewer)]


@pytest.mark.parametrize("spec, message", [
    ("viewer", "entry 1 is not 'role:KEY'"),
    ("viewer:", "entry 1 (viewer) has an empty key"),
    ("root:secretsecretsecret", "unknown role 'root'"),
    ("viewer:samesamesamesamesame,admin:samesamesamesamesame", "entry 2 (admin) repeats an earlier key"),
])
def test_parse_errors_never_contain_the_key(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        parse_api_keys(spec)
    assert "secretsecretsecret" not in str(err.value) and "samesame" not in str(err.value)


def test_short_keys_warn_without_logging_the_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="api.auth"):
        parse_api_keys("admin:short-key-1")
    assert "shorter than" in caplog.text
    assert "short-key-1" not in caplog.text
    assert key_label(Role.admin, hash_key("short-key-1")) in caplog.text


def test_lookup_matches_each_role_and_rejects_others() -> None:
    ring = KeyRing(parse_api_keys(SPEC))
    for key, role in [(VIEWER, Role.viewer), (ANALYST, Role.analyst), (ADMIN, Role.admin)]:
        principal = ring.lookup(key)
        assert principal is not None and principal.role is role and principal.via == "bearer"
        assert key not in principal.key_id and principal.key_id == key_label(role, hash_key(key))
    assert ring.lookup(VIEWER + "x") is None
    assert ring.lookup("") is None
    assert ring.lookup(VIEWER.upper()) is None
    assert ring.anonymous() is None


def test_lookup_compares_every_hash_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    ring = KeyRing(parse_api_keys(SPEC))
    ring.lookup(VIEWER)  # the first key matches: the others are still compared
    assert len(calls) == 3
    assert all(b == hash_key(VIEWER) for _, b in calls)  # the hash is compared, never the key
    calls.clear()
    ring.lookup("wrong-key-wrong-key")
    assert len(calls) == 3


def test_from_settings_refuses_no_keys_unless_anonymous_is_allowed() -> None:
    with pytest.raises(ValueError, match="no API keys configured"):
        KeyRing.from_settings(ClioSettings(api_keys=None))
    with pytest.raises(ValueError, match="no API keys configured"):
        KeyRing.from_settings(ClioSettings(api_keys=" , "))
    ring = KeyRing.from_settings(ClioSettings(api_allow_anonymous=True))
    anon = ring.anonymous()
    assert anon is not None and anon.role is Role.viewer and anon.via == "anonymous"
    ring = KeyRing.from_settings(ClioSettings(api_keys=SPEC))
    assert len(ring) == 3 and ring.lookup(ADMIN).role is Role.admin  # type: ignore[union-attr]


def test_keys_from_the_environment_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIO_API_KEYS", SPEC)
    settings = ClioSettings()
    assert VIEWER not in repr(settings) and VIEWER not in str(settings.public_dict())
    assert KeyRing.from_settings(settings).lookup(ANALYST).role is Role.analyst  # type: ignore[union-attr]


def test_sessions_expire_and_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    store = SessionStore(ttl_s=60, max_sessions=2)
    admin = Principal(role=Role.admin, key_id="admin:1234abcd", via="bearer")
    token = store.create(admin)
    got = store.get(token)
    assert got is not None and got.role is Role.admin and got.via == "cookie"
    assert store.get(token + "x") is None
    now[0] += 61
    assert store.get(token) is None  # expired
    first = store.create(admin)
    store.create(admin)
    store.create(admin)  # over the bound: the oldest goes
    assert store.get(first) is None
