"""Who a conversation belongs to, as stored and counted: a keyed hash, never the user id itself."""

from __future__ import annotations

import hashlib
import hmac

from clio_stream.domain.conversation import Conversation

# Who conversations without a user id count as: one and the same user. Counting each as its own user would let
# one person reach any distinct-user minimum alone by leaving the id out. No client can send this id by mistake,
# and one that sends it on purpose only merges itself with the anonymous user (fewer users: more is withheld).
ANONYMOUS_USER_ID = "\x00anonymous"


def keyed_user_hash(user_id: str, key: str) -> str:
    """HMAC of a user id: distinct users can be counted without storing who they are."""
    return hmac.new(key.encode(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def user_identity(conv: Conversation) -> str:
    """The user a conversation counts as in distinct-user minimums: its user id, or the one anonymous user."""
    return conv.user_id if conv.user_id is not None else ANONYMOUS_USER_ID


def user_key_of(conv: Conversation, key: str) -> str:
    """The keyed hash of ``user_identity``: what is stored and counted instead of the user id."""
    return keyed_user_hash(user_identity(conv), key)
