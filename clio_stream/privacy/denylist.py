"""The deny-list of deleted users: who must never be written to Qdrant or published again.

A deletion (``clio_stream.privacy.deletion``) records a request whose *deletion token*
is ``HMAC(user_id_hash_key, "deleted:" + user hash)``: one-way, keyed, and
different from the user hash every stored point and published file carries, so
the deny-list itself matches nothing that was deleted, yet whoever holds the key
recognises the user's records again. The tokens of every request, pending or
done, form the deny-list; it is kept after the deletion finished because the
user's raw records stay in the Kafka topics until retention removes them (a
redelivery or a replay must not bring them back).

Readers: the streaming workers drop a denied user's records before they write
anything (``DenyList``, cached and refreshed every
``deletion_denylist_refresh_s``), and the re-clustering job removes denied users
from a result right before it publishes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from clio_stream.privacy.users import keyed_user_hash

log = logging.getLogger(__name__)

_TOKEN_PREFIX = "deleted:"


def deletion_token(user_hash: str, key: str) -> str:
    """The deny-list token of the user whose keyed hash is ``user_hash``."""
    return keyed_user_hash(_TOKEN_PREFIX + user_hash, key)


class TokenSource(Protocol):
    """Where the tokens are stored (``QdrantStore.deletions`` fits)."""

    def deny_tokens(self) -> set[str]: ...


class DenyList:
    """The stored tokens, reloaded when older than ``refresh_s``.

    A failed reload raises (the store's error): a worker that cannot tell who is
    denied retries its batch rather than write it unchecked.
    """

    def __init__(self, source: TokenSource, key: str, refresh_s: float) -> None:
        self.source, self.key, self.refresh_s = source, key, float(refresh_s)
        self._tokens: frozenset[str] = frozenset()
        self._loaded_at: float | None = None
        self._lock = threading.Lock()

    def tokens(self) -> frozenset[str]:
        """The current tokens; at most ``refresh_s`` old."""
        with self._lock:
            now = time.monotonic()
            if self._loaded_at is None or now - self._loaded_at >= self.refresh_s:
                self._tokens = frozenset(self.source.deny_tokens())
                self._loaded_at = now
            return self._tokens

    def denies(self, user_hash: str | None) -> bool:
        """Whether the user with keyed hash ``user_hash`` was deleted."""
        tokens = self.tokens()
        return bool(tokens) and user_hash is not None and deletion_token(user_hash, self.key) in tokens
