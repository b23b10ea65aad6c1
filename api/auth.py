"""API keys, roles and dashboard sessions (pure: no FastAPI here, so it is unit-testable).

Keys come from ``settings.api_keys`` as ``role:KEY`` pairs separated by commas.
Only the SHA-256 of each key is kept; a presented key is hashed and compared
with every stored hash through ``hmac.compare_digest``, without stopping at the
first match, so timing says nothing about which (or whether a) key matched.
Keys are never logged: log lines name a key by its role and a short hash prefix.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 16
SESSION_COOKIE = "clio_session"


class Role(IntEnum):
    """Roles in increasing power; a role may do everything the roles below it may."""

    viewer = 1  # aggregates: trees, cluster details, status, dashboard
    analyst = 2  # + conversation-level data: membership, single conversations
    admin = 3  # + ingest, re-cluster, delete

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().lower()]
        except KeyError:
            raise ValueError(f"unknown role {name.strip()!r} (expected viewer, analyst or admin)") from None


@dataclass(frozen=True)
class Principal:
    """Who is calling: the role, a non-secret key label for audit trails, and how they authenticated."""

    role: Role
    key_id: str
    via: Literal["bearer", "cookie", "anonymous"]

    def allows(self, needed: Role) -> bool:
        return self.role >= needed


def hash_key(key: str) -> bytes:
    """SHA-256 of a key: what is kept in memory instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_label(role: Role, digest: bytes) -> str:
    """A stable, non-secret name for a key (its role and 8 hex digits of its hash)."""
    return f"{role.name}:{digest.hex()[:8]}"


def parse_api_keys(spec: str | None) -> list[tuple[bytes, Role]]:
    """Parse ``"viewer:KEY,analyst:KEY,..."`` into (hash, role) pairs.

    Errors name the position and role, never the key. A key may contain ``:``
    (only the first one separates the role); duplicate keys are an error since
    one key cannot have two roles.
    """
    entries: list[tuple[bytes, Role]] = []
    if not spec or not spec.strip():
        return entries
    seen: set[bytes] = set()
    for position, item in enumerate(spec.split(","), start=1):
        item = item.strip()
        if not item:
            continue
        role_name, sep, key = item.partition(":")
        if not sep:
            raise ValueError(f"api_keys entry {position} is not 'role:KEY'")
        role = Role.parse(role_name)
        key = key.strip()
        if not key:
            raise ValueError(f"api_keys entry {position} ({role.name}) has an empty key")
        digest = hash_key(key)
        if digest in seen:
            raise ValueError(f"api_keys entry {position} ({role.name}) repeats an earlier key")
        seen.add(digest)
        if len(key) < MIN_KEY_CHARS:
            log.warning("API key %s is shorter than %d characters; use long random keys",
                        key_label(role, digest), MIN_KEY_CHARS)
        entries.append((digest, role))
    return entries


class KeyRing:
    """The configured keys (as hashes) and whether key-less callers are let in as viewers."""

    def __init__(self, entries: list[tuple[bytes, Role]], *, allow_anonymous: bool = False) -> None:
        self._entries = list(entries)
        self.allow_anonymous = allow_anonymous

    @classmethod
    def from_settings(cls, settings: Any) -> KeyRing:
        """Build from ``api_keys`` (a SecretStr or str) and ``api_allow_anonymous``.

        Refuses (ValueError) when there are no keys and anonymous access is not
        explicitly allowed: an API that silently serves everyone is a misconfiguration.
        """
        raw = getattr(settings, "api_keys", None)
        spec = raw.get_secret_value() if hasattr(raw, "get_secret_value") else raw
        ring = cls(parse_api_keys(spec), allow_anonymous=bool(getattr(settings, "api_allow_anonymous", False)))
        if not ring._entries and not ring.allow_anonymous:
            raise ValueError("no API keys configured: set CLIO_API_KEYS='viewer:KEY,analyst:KEY,admin:KEY', "
                             "or CLIO_API_ALLOW_ANONYMOUS=true to let everyone in as a viewer")
        return ring

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: str) -> Principal | None:
        """The principal of ``key``, or None; compares against every stored hash (no early exit)."""
        digest = hash_key(key)
        found: Role | None = None
        for stored, role in self._entries:
            if hmac.compare_digest(stored, digest):
                found = role
        if found is None:
            return None
        return Principal(role=found, key_id=key_label(found, digest), via="bearer")

    def anonymous(self) -> Principal | None:
        """The principal of a caller without a key, when that is allowed."""
        return Principal(role=Role.viewer, key_id="anonymous", via="anonymous") if self.allow_anonymous else None


class SessionStore:
    """Dashboard cookie sessions, in memory: token -> principal, with a lifetime and a size bound.

    Kept per process: behind several API replicas, route a browser to one
    replica (or it logs in again with ``?key=``). Tokens are stored hashed.
    """

    def __init__(self, ttl_s: float, max_sessions: int = 10_000) -> None:
        self.ttl_s = float(ttl_s)
        self.max_sessions = int(max_sessions)
        self._sessions: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, principal: Principal) -> str:
        """A new random token for ``principal`` (the oldest session goes when full)."""
        token = secrets.token_urlsafe(32)
        cookie_principal = Principal(role=principal.role, key_id=principal.key_id, via="cookie")
        with self._lock:
            self._sessions[hash_key(token)] = (cookie_principal, time.monotonic() + self.ttl_s)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return token

    def get(self, token: str) -> Principal | None:
        """The principal of a live session, or None (unknown or expired)."""
        digest = hash_key(token)
        with self._lock:
            hit = self._sessions.get(digest)
            if hit is None:
                return None
            if hit[1] < time.monotonic():
                del self._sessions[digest]
                return None
            return hit[0]
