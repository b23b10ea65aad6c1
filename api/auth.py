"""API keys, roles and dashboard sessions (pure: no FastAPI here, so it is unit-testable).

Keys come from ``settings.api_keys`` as ``role:KEY`` pairs separated by commas.
Only the SHA-256 of each key is kept; a presented key is hashed and compared
with every stored hash through ``hmac.compare_digest``, without stopping at the
first match, so timing says nothing about which (or whether a) key matched.
Keys are never logged: log lines name a key by its role and a short hash prefix.

Dashboard sessions are stateless signed cookies, so they work across uvicorn
workers and replicas: ``label.expiry.signature`` where the signature is an
HMAC keyed by a second one-way hash of the key that issued it. The role comes
from the server's key list, never from the cookie, so a cookie can only ever
carry its own key's role, and removing a key ends its sessions.

Key guessing is throttled per client address (``FailedAuthLimiter``): a few wrong
keys in a row, then 429 with ``Retry-After`` for every presented key, right or
wrong, so a throttled guesser learns nothing from the answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, NamedTuple

from clio_stream.secret_settings import NEW_SECRET_HINT, is_placeholder
from clio_stream.settings import ClioSettings

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


class KeyEntry(NamedTuple):
    """What is kept of one configured key: its hash, its role, and the secret its sessions are signed with."""

    digest: bytes
    role: Role
    session_secret: bytes


def hash_key(key: str) -> bytes:
    """SHA-256 of a key: what is kept in memory instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def session_secret(key: str) -> bytes:
    """A second, independent one-way hash of a key: signs the sessions this key opens."""
    return hashlib.sha256(b"clio-stream session\x00" + key.encode("utf-8")).digest()


def key_label(role: Role, digest: bytes) -> str:
    """A stable, non-secret name for a key (its role and 8 hex digits of its hash)."""
    return f"{role.name}:{digest.hex()[:8]}"


def parse_api_keys(spec: str | None) -> list[KeyEntry]:
    """Parse ``"viewer:KEY,analyst:KEY,..."`` into (hash, role, session secret) entries.

    Errors name the position and role, never the key. A key may contain ``:``
    (only the first one separates the role); duplicate keys are an error since
    one key cannot have two roles.
    """
    entries: list[KeyEntry] = []
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
        if is_placeholder(key):
            raise ValueError(f"api_keys entry {position} ({role.name}) is a CHANGE-ME placeholder from an example "
                             f"file: set CLIO_API_KEYS to keys of your own (e.g. {NEW_SECRET_HINT} each)")
        digest = hash_key(key)
        if digest in seen:
            raise ValueError(f"api_keys entry {position} ({role.name}) repeats an earlier key")
        seen.add(digest)
        if len(key) < MIN_KEY_CHARS:
            log.warning("API key %s is shorter than %d characters; use long random keys",
                        key_label(role, digest), MIN_KEY_CHARS)
        entries.append(KeyEntry(digest, role, session_secret(key)))
    return entries


class KeyRing:
    """The configured keys (as hashes) and whether key-less callers are let in as viewers."""

    def __init__(self, entries: list[KeyEntry], *, allow_anonymous: bool = False) -> None:
        self._entries = list(entries)
        self.allow_anonymous = allow_anonymous

    @classmethod
    def from_settings(cls, settings: ClioSettings) -> KeyRing:
        """Build from ``api_keys`` and ``api_allow_anonymous``.

        Refuses (ValueError) when there are no keys and anonymous access is not
        explicitly allowed: an API that silently serves everyone is a misconfiguration.
        """
        spec = settings.api_keys.get_secret_value() if settings.api_keys is not None else None
        ring = cls(parse_api_keys(spec), allow_anonymous=settings.api_allow_anonymous)
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
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.role
        if found is None:
            return None
        return Principal(role=found, key_id=key_label(found, digest), via="bearer")

    def anonymous(self) -> Principal | None:
        """The principal of a caller without a key, when that is allowed."""
        return Principal(role=Role.viewer, key_id="anonymous", via="anonymous") if self.allow_anonymous else None

    def issue_session(self, principal: Principal, ttl_s: float, now: float | None = None) -> str:
        """A signed cookie value for ``principal`` (a key-holder), valid for ``ttl_s`` seconds."""
        expiry = int((time.time() if now is None else now) + ttl_s)
        for entry in self._entries:
            if key_label(entry.role, entry.digest) == principal.key_id:
                return f"{principal.key_id}.{expiry}.{_sign(entry.session_secret, principal.key_id, expiry)}"
        raise ValueError("sessions are only issued to configured keys")

    def session_principal(self, token: str, now: float | None = None) -> Principal | None:
        """The principal of a valid, unexpired cookie (role from the key list), else None."""
        try:
            label, expiry_text, signature = token.split(".")
            expiry = int(expiry_text)
        except ValueError:
            return None
        if expiry < (time.time() if now is None else now):
            return None
        found: Principal | None = None
        for entry in self._entries:  # every entry is checked: timing says nothing about which matched
            if hmac.compare_digest(_sign(entry.session_secret, label, expiry).encode(), signature.encode()) \
                    and key_label(entry.role, entry.digest) == label:
                found = Principal(role=entry.role, key_id=label, via="cookie")
        return found


def _sign(secret: bytes, label: str, expiry: int) -> str:
    mac = hmac.new(secret, f"{label}.{expiry}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


class FailedAuthLimiter:
    """A token bucket of wrong keys per client address: ``burst`` in a row, then ``per_minute``.

    Only presented keys count (a missing key is not a guess). While an address has no token left every key it
    presents is refused without being looked up. Memory is bounded: at most ``max_clients`` addresses are
    remembered, the least recently failing forgotten first (a forgotten address starts with a full bucket).
    """

    def __init__(self, burst: int, per_minute: float, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)
        self._lock = threading.Lock()

    def _tokens(self, client: str, now: float) -> float:
        tokens, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def retry_after(self, client: str) -> int:
        """Whole seconds until ``client`` may present a key again (0: now)."""
        with self._lock:
            tokens = self._tokens(client, self.clock())
        return 0 if tokens >= 1 else math.ceil((1 - tokens) / self.rate)

    def failed(self, client: str) -> None:
        """Count one wrong key from ``client``."""
        with self._lock:
            now = self.clock()
            self._buckets[client] = (max(0.0, self._tokens(client, now) - 1), now)
            self._buckets.move_to_end(client)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)

    @classmethod
    def from_settings(cls, settings: ClioSettings) -> FailedAuthLimiter:
        return cls(settings.api_auth_failures_burst, settings.api_auth_failures_per_minute)
