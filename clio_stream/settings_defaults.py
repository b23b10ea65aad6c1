"""The default functions of the callable settings: the seed's rules, importable by name from env or TOML."""

from __future__ import annotations

from typing import Any


def default_n_base_clusters(n: int) -> int:
    """The seed's rule: about ten conversations per base cluster."""
    return max(1, n // 10)


def default_n_neighbourhoods(n: int) -> int:
    """Clio's appendix: neighbourhoods of about 40 clusters each."""
    return max(1, n // 40)


def default_names_per_neighbourhood(n: int) -> int:
    """Propose about half as many parents as there are children."""
    return max(1, n // 2)


def default_dedup_key(conversation: Any) -> str:
    """Two conversations are duplicates when their turns are identical."""
    from clio_stream.stages.prepare import conversation_content_key

    return conversation_content_key(conversation)


def default_conversation_getter(record: Any) -> Any:
    """Records are conversations already; override to unwrap your own records."""
    return record


def default_conversation_filter(conversation: Any) -> bool:
    """Keep every conversation."""
    return True


def default_conversation_to_json(conversation: Any) -> Any:
    """A conversation's turns as the site shows them (the default of ``conversation_to_json``)."""
    return [m.model_dump() if hasattr(m, "model_dump") else m for m in conversation.messages]
