"""Which settings are secrets, and the rule that refuses placeholder secrets at start-up.

Kept apart from ``ClioSettings`` because every service entry point (CLI, API, dev stack) checks it, and the
deploy examples' ``CHANGE-ME-...`` values must be refused the same way everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clio_stream.settings import ClioSettings

# Settings whose values are never published, printed or logged.
SECRET_SETTINGS = frozenset({"user_id_hash_key", "llm_api_key", "qdrant_api_key", "api_keys", "kafka_sasl_password",
                             "metrics_token", "alert_webhook_secret"})

DEFAULT_USER_ID_HASH_KEY = "change-me"
PLACEHOLDER_MARK = "change-me"  # the default above and every CHANGE-ME-... value of deploy/*.example
NEW_SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def is_placeholder(secret: str) -> bool:
    """True for a value copied from the defaults or an example file rather than chosen (``change-me``)."""
    return PLACEHOLDER_MARK in secret.lower()


def check_user_hash_key(settings: ClioSettings) -> None:
    """Refuse to start a service that stores or matches user hashes under a placeholder key.

    With a known key anyone holding the stored hashes can test user ids against them. ``up`` generates a
    key for its demo before this check runs; batch runs keep the raw ids in ``result.json`` and are not checked.
    """
    if is_placeholder(settings.user_id_hash_key):
        raise ValueError("user_id_hash_key is a placeholder: set CLIO_USER_ID_HASH_KEY to a long random secret "
                         f"(e.g. {NEW_SECRET_HINT}) and keep it: changing it splits every user in two")
