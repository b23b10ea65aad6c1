"""A batch run's input records: which conversations they make, which item each facet sees, what the site shows.

Records go through the settings' ``conversation_getter`` (the seed's ``getConversationFunc``). When every facet
the LLM answers reads the data item itself (``Facet.reads_data``: ``generic_summary_facets`` or the seed's own
prompt functions), a record need not be a conversation at all: a string or a dict such as
``{"title", "body"}`` becomes a one-turn text (keeping an ``id``, ``user_id`` and ``timestamp`` it has, so
privacy minimums still count users), and the facets get the item as it was. Otherwise every record must be a
conversation and a bad one is a ``DataError`` naming it.

Two seed settings act on the site only, never on the analysis: ``site_conversation_filter`` (the seed's
``htmlConversationFilterFunc``) leaves a conversation off the site, and ``conversation_to_json`` (the seed's
``htmlDataToJsonFunc``) says how a record is shown; both get the input record as it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from clio_stream.domain.clusters import ClioResult
from clio_stream.domain.conversation import Conversation
from clio_stream.domain.facets import Facet, data_as_text
from clio_stream.settings import ClioSettings
from clio_stream.settings_defaults import default_conversation_to_json
from clio_stream.site.writer import SiteRecords
from clio_stream.stages.prepare import DataError, LoadStats, prepare_conversations, to_conversation


@dataclass
class Loaded:
    """The conversations of a run's records, and what the later stages need to go back to the records."""

    conversations: list[Conversation]
    stats: LoadStats
    records: dict[str, Any]  # conversation id -> the input record as given
    items: dict[str, Any] | None  # generic data: conversation id -> the item facets that read data see


def reads_data_only(facets: Sequence[Facet]) -> bool:
    """Whether every facet the LLM answers reads the data item itself, so records may be anything."""
    asked = [f for f in facets if f.compute is None]
    return bool(asked) and all(f.reads_data for f in asked)


def as_text_record(item: Any, index: int) -> dict[str, Any]:
    """A non-conversation item as a one-turn conversation record (its id, user and time kept when it has them)."""
    meta = item if isinstance(item, dict) else {}
    return {"id": str(meta.get("id", f"item-{index}")), "user_id": meta.get("user_id"),
            "timestamp": meta.get("timestamp"), "conversation": [{"role": "user", "content": data_as_text(item)}]}


def load_records(raw: list[Any], facets: Sequence[Facet], settings: ClioSettings) -> Loaded:
    """Validate, skip empties, filter and de-duplicate ``raw`` (see the module docstring for generic data)."""
    items = [settings.conversation_getter(x) for x in raw]
    generic = reads_data_only(facets)
    records: list[Any] = []
    for i, item in enumerate(items):
        try:
            to_conversation(item, i)
            records.append(item)
        except DataError:
            if not generic:
                raise
            records.append(as_text_record(item, i))
    ids = [to_conversation(r, i).id for i, r in enumerate(records)]
    conversations, stats = prepare_conversations(
        records, keep=settings.conversation_filter, dedup=settings.dedup, dedup_key=settings.dedup_key)
    if not conversations:
        raise ValueError("no conversations left after skipping empty ones and filtering")
    return Loaded(conversations, stats, records=dict(zip(ids, raw)),
                  items=dict(zip(ids, items)) if generic else None)


def site_records(records: dict[str, Any], result: ClioResult, settings: ClioSettings) -> SiteRecords:
    """The site-only filter and display function applied to each conversation's input record."""
    shown = SiteRecords()
    keep = settings.site_conversation_filter
    show = settings.conversation_to_json
    values = {cf.conversation_id: cf for cf in result.facet_values}
    for conv in result.conversations:
        record = records.get(conv.id, conv)
        if keep is not None and not keep(record, values.get(conv.id)):
            shown.hidden.add(conv.id)
        elif show is not default_conversation_to_json:
            shown.messages[conv.id] = list(show(record))
    return shown
