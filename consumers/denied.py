"""Dropping deleted users' records before a worker writes anything (the deny-list, clio_stream.privacy.denylist).

Two places, both before any write of the batch: the decoded batch (so a denied
user's conversation is neither marked ``pending`` nor sent to the LLM, nor
counted in the centroid deltas), and the outcome right before the upsert (which
also covers the record-by-record fallback and a deny-list that grew while the
batch was processed). The records' offsets stay in the batch: they are
committed, deliberately dropped, and counted in ``denied_dropped``.
"""

from __future__ import annotations

from dataclasses import replace

import logging

from clio_stream.privacy.denylist import DenyList
from clio_stream.privacy.users import user_key_of
from consumers.decoding import DecodedBatch
from consumers.metrics import WorkerMetrics
from consumers.processing import BatchOutcome

log = logging.getLogger(__name__)


def drop_denied_conversations(decoded: DecodedBatch, denylist: DenyList) -> tuple[DecodedBatch, int]:
    """The decoded batch without denied users' conversations, and how many went."""
    kept = [c for c in decoded.conversations if not denylist.denies(user_key_of(c.conversation, denylist.key))]
    return replace(decoded, conversations=kept), len(decoded.conversations) - len(kept)


def drop_denied_writes(outcome: BatchOutcome, denylist: DenyList) -> tuple[BatchOutcome, int]:
    """The outcome without denied users' facet points and status records, and how many conversations went."""
    convs = [r for r in outcome.conversations if not denylist.denies(r.user_hash)]
    dropped = len(outcome.conversations) - len(convs)
    points = [p for p in outcome.facet_points if not denylist.denies(p.user_hash)]
    dead = [r for r in outcome.dead_lettered if not denylist.denies(r.user_hash)]
    if dropped == 0 and len(points) == len(outcome.facet_points) and len(dead) == len(outcome.dead_lettered):
        return outcome, 0
    return replace(outcome, conversations=convs, facet_points=points, dead_lettered=dead), dropped


class DenyFilter:
    """Both drops for one worker, counted in its ``denied_dropped``."""

    def __init__(self, denylist: DenyList, metrics: WorkerMetrics) -> None:
        self.denylist, self.metrics = denylist, metrics

    def conversations(self, decoded: DecodedBatch) -> DecodedBatch:
        """Deleted users' conversations out before anything is written or asked."""
        kept, dropped = drop_denied_conversations(decoded, self.denylist)
        self._count(dropped)
        return kept

    def writes(self, outcome: BatchOutcome) -> BatchOutcome:
        """Deleted users' points out right before the upsert; their offsets are still committed."""
        kept, dropped = drop_denied_writes(outcome, self.denylist)
        self._count(dropped)
        return kept

    def _count(self, dropped: int) -> None:
        if dropped:
            self.metrics.add(denied_dropped=dropped)
            log.info("dropped %d conversation(s) of deleted users; their offsets are committed", dropped)
