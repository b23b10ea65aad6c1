"""Back-fill a facet added to a running deployment: answer it for the conversations stored before it existed.

Workers started with the new facet in their settings answer it for every conversation they consume from then
on; the ones stored earlier lack it. ``backfill_facets`` (``clio-stream backfill-facets``) pages through the
stored conversations, finds those without a point for a configured facet, rebuilds each from the raw text the
store kept (``store_raw_conversations``), asks the LLM (or computes) the missing facets the way a worker does,
embeds the values of hierarchy facets and writes the facet points unassigned; the next re-clustering, which it
requests, clusters and publishes them. A conversation stored without its text cannot be back-filled: it is
counted and reported, never guessed at (re-send it to the topic to have it answered). Deleted users are skipped.
Safe to run again: it only writes points that are missing, under the same ids a worker would use.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from clio_stream.domain.conversation import Conversation, Message
from clio_stream.domain.facets import Facet
from clio_stream.embedding import EmbeddingBackend, embedding_text
from clio_stream.llm.base import AskStats, LLMBackend
from clio_stream.privacy.denylist import DenyList
from clio_stream.settings import ClioSettings
from clio_stream.stages.extract import extract_facets
from clio_stream.stages.prepare import truncate_conversation
from clio_stream.storage.documents import RECLUSTER_REQUEST, ReclusterRequest
from clio_stream.storage.records import FacetPoint
from clio_stream.storage.store import QdrantStore

log = logging.getLogger(__name__)


@dataclass
class BackfillReport:
    """What a back-fill found and did (counts of conversations, except ``written``: facet points)."""

    scanned: int = 0
    complete: int = 0  # had every facet already
    backfilled: dict[str, int] = field(default_factory=dict)  # facet -> conversations answered now
    no_text: dict[str, int] = field(default_factory=dict)  # facet -> conversations that cannot be (no stored text)
    denied: int = 0  # deleted users' conversations, skipped
    written: int = 0
    requested_recluster: bool = False

    def lines(self) -> list[str]:
        out = [f"scanned {self.scanned} stored conversations; {self.complete} already had every facet"]
        for name in sorted(set(self.backfilled) | set(self.no_text)):
            out.append(f"  {name}: back-filled {self.backfilled.get(name, 0)}, cannot back-fill "
                       f"{self.no_text.get(name, 0)} (no stored text)")
        if any(self.no_text.values()):
            out.append("conversations without stored text (store_raw_conversations was off) get a new facet only "
                       "when they are sent to the topic again")
        if self.denied:
            out.append(f"skipped {self.denied} conversations of deleted users")
        return out


def _conversation(payload: dict[str, Any]) -> Conversation | None:
    """A stored conversation rebuilt from its raw text and metadata; None when no text was kept."""
    raw = payload.get("raw")
    if not isinstance(raw, list) or not raw:
        return None
    return Conversation(id=str(payload["conversation_id"]), messages=[Message(**m) for m in raw],
                        timestamp=payload.get("timestamp"), metadata=dict(payload.get("metadata") or {}))


def backfill_facets(store: QdrantStore, facets: Sequence[Facet], llm: LLMBackend, embedder: EmbeddingBackend,
                    settings: ClioSettings, *, page: int = 64, dry_run: bool = False,
                    request_recluster: bool = True) -> BackfillReport:
    """Answer ``facets`` for every stored conversation that lacks them (see the module docstring)."""
    report = BackfillReport()
    names = [f.name for f in facets]
    denylist = DenyList(store.deletions, settings.user_id_hash_key, settings.deletion_denylist_refresh_s)
    for payloads in store.points.scroll_conversations(page):
        report.scanned += len(payloads)
        present = store.points.facets_present([str(p["conversation_id"]) for p in payloads], names)
        groups: dict[tuple[str, ...], list[tuple[dict[str, Any], Conversation]]] = defaultdict(list)
        for payload in payloads:
            cid = str(payload["conversation_id"])
            missing = tuple(n for n in names if (cid, n) not in present)
            if not missing:
                report.complete += 1
                continue
            if denylist.denies(payload.get("user_hash")):
                report.denied += 1
                continue
            conv = _conversation(payload)
            if conv is None:
                for n in missing:
                    report.no_text[n] = report.no_text.get(n, 0) + 1
                continue
            groups[missing].append((payload, conv))
        for missing, items in groups.items():
            for n in missing:
                report.backfilled[n] = report.backfilled.get(n, 0) + len(items)
            if not dry_run:
                report.written += store.points.upsert_facets(
                    _points([f for f in facets if f.name in missing], items, llm, embedder, settings))
    if request_recluster and report.written:
        store.states.write(RECLUSTER_REQUEST, ReclusterRequest(requested_at=time.time(), requested_by="backfill",
                                                               reason=f"back-filled facets {names}"))
        report.requested_recluster = True
    log.info("back-fill: %s", "; ".join(report.lines()))
    return report


def _points(facets: Sequence[Facet], items: Sequence[tuple[dict[str, Any], Conversation]], llm: LLMBackend,
            embedder: EmbeddingBackend, settings: ClioSettings) -> list[FacetPoint]:
    """The facet points of ``facets`` for these conversations, unassigned (the next re-clustering labels them)."""
    convs = [truncate_conversation(conv, settings.max_conversation_tokens, llm.count_tokens)[0] for _, conv in items]
    answers = extract_facets(convs, facets, llm, sampling=settings.llm_sampling_args, retries=settings.llm_max_retries,
                             seed=settings.seed, batch_size=settings.llm_batch_size, stats=AskStats(),
                             settings=settings, layout=settings.facet_layout)
    texts = [embedding_text(f, cf.values[f.name].value) for cf in answers for f in facets
             if f.has_hierarchy and cf.values[f.name].value]
    unique = list(dict.fromkeys(texts))
    vectors = dict(zip(unique, np.asarray(embedder.encode(unique), dtype=np.float32))) if unique else {}
    zero = np.zeros(int(embedder.dim), dtype=np.float32)
    points = []
    for (payload, _), cf in zip(items, answers):
        for f in facets:
            value = cf.values[f.name]
            vec = vectors.get(embedding_text(f, value.value)) if f.has_hierarchy and value.value else None
            points.append(FacetPoint(conversation_id=cf.conversation_id, facet=f.name,
                                     vector=zero if vec is None else vec, value=value.value, numeric=value.numeric,
                                     user_hash=payload.get("user_hash"), timestamp=payload.get("timestamp"),
                                     content_hash=payload.get("content_hash")))
    return points
