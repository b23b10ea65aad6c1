"""Unit tests of API key parsing, roles, hashing and sessions (pure: no server, no app)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re

import pytest

from api import auth
from api.auth import KeyRing, Principal, Role, hash_key, key_label, parse_api_keys, session_secret
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
    assert [(e.digest, e.role) for e in entries] == [(hashlib.sha256(VIEWER.encode()).digest(), Role.viewer),
                                                     (hashlib.sha256(ANALYST.encode()).digest(), Role.analyst),
                                                     (hashlib.sha256(ADMIN.encode()).digest(), Role.admin)]
    assert [e.session_secret for e in entries] == [session_secret(k) for k in (VIEWER, ANALYST, ADMIN)]
    assert all(len(e.digest) == len(e.session_secret) == 32 and e.digest != e.session_secret for e in entries)
    assert not any(k.encode() in repr(entries).encode() for k in (VIEWER, ANALYST, ADMIN))
    assert parse_api_keys(None) == [] and parse_api_keys("  ") == [] and parse_api_keys("a" * 0) == []


def test_key_may_contain_colons_and_blank_items_are_skipped() -> None:
    entries = parse_api_keys(",viewer:abc:def:0123456789abcdef,,")
    assert [(e.digest, e.role) for e in entries] == [(hash_key("abc:def:0123456789abcdef"), Role.viewer)]


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


def test_sessions_are_signed_expire_and_carry_the_key_role() -> None:
    ring = KeyRing(parse_api_keys(SPEC))
    analyst = ring.lookup(ANALYST)
    assert analyst is not None
    token = ring.issue_session(analyst, ttl_s=60, now=1000.0)
    assert ANALYST not in token and token.startswith(analyst.key_id + ".1060.")
    got = ring.session_principal(token, now=1059.0)
    assert got is not None and got.role is Role.analyst and got.via == "cookie" and got.key_id == analyst.key_id
    assert ring.session_principal(token, now=1061.0) is None  # expired
    # Stateless: another process with the same keys accepts it; one without that key does not.
    assert KeyRing(parse_api_keys(SPEC)).session_principal(token, now=1000.0) is not None
    assert KeyRing(parse_api_keys(f"viewer:{VIEWER}")).session_principal(token, now=1000.0) is None


def test_session_cookies_cannot_be_forged_or_escalated() -> None:
    ring = KeyRing(parse_api_keys(SPEC))
    viewer = ring.lookup(VIEWER)
    assert viewer is not None
    label, expiry, signature = ring.issue_session(viewer, ttl_s=60, now=0.0).split(".")
    admin_label = key_label(Role.admin, hash_key(ADMIN))
    for forged in (f"{admin_label}.{expiry}.{signature}",  # another key's label, the viewer's signature
                   f"{label}.{int(expiry) + 10**6}.{signature}",  # a later expiry
                   f"{label}.{expiry}.{signature[:-2]}AA",  # a tampered signature
                   f"{label}.{expiry}", "", "...", "a.b.c"):
        assert ring.session_principal(forged, now=1.0) is None, forged
    # Knowing the viewer key gives only the viewer's session secret: signing the admin label with it fails.
    mac = hmac.new(session_secret(VIEWER), f"{admin_label}.{expiry}".encode(), hashlib.sha256).digest()
    forged = f"{admin_label}.{expiry}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    assert ring.session_principal(forged, now=1.0) is None
    with pytest.raises(ValueError):
        ring.issue_session(Principal(role=Role.admin, key_id="anonymous", via="anonymous"), ttl_s=60)
