"""One batch through the core, so that a poison record cannot hold its partition.

A batch is processed whole; if that breaks on something other than an outage
(a bug, a prompt the LLM refuses), each record is tried alone and the ones that
still fail are dead-lettered. Outages (``RETRYABLE``) always propagate: the
worker retries the batch later instead. When the same batch has failed as an
outage ``poison_after_failures`` times, the worker asks for isolation straight
away, and a record whose LLM call fails while the LLM passes its health check
is dead-lettered too: a record that makes the server fail cannot block for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from kafka.errors import KafkaError

from clio_stream.llm.base import LLMBackend, Prompt
from clio_stream.llm.prompts import AUDIT_CLUSTER
from clio_stream.settings import ClioSettings
from clio_stream.storage.errors import StoreError
from clio_stream.storage.records import ConversationRecord
from consumers.decoding import DeadLetter, DecodedBatch, RecordLike, offset_ranges
from consumers.llm_guard import LLMUnavailable, RecordRejected
from consumers.processing import BatchOutcome
from consumers.status_records import dead_lettered_records

log = logging.getLogger(__name__)

# Failures of a dependency: the batch is retried later, never dead-lettered.
RETRYABLE = (StoreError, LLMUnavailable, KafkaError)
# Tries of one isolated record, each failing while the LLM answers its health check, before it is dead-lettered.
ALONE_ATTEMPTS = 3
ALONE_PAUSE_S = 2.0  # times the attempt number, between tries

ProcessFn = Callable[[Sequence[RecordLike], DecodedBatch | None], BatchOutcome]


def process_isolating_poison(records: Sequence[RecordLike], decoded: DecodedBatch, process: ProcessFn, *,
                             isolate: bool, failures: int, llm_healthy: Callable[[], bool],
                             settings: ClioSettings) -> BatchOutcome:
    """``process`` the batch, or (on a non-outage failure, or ``isolate``) each record alone.

    ``process(records, decoded)`` is the core (``process_batch`` with the worker's
    dependencies); ``failures`` counts the batch's failed attempts, for the reason.
    """
    if isolate:
        log.warning("batch failed %d times; trying its %d records one at a time", failures, len(records))
    else:
        try:
            return process(records, decoded)
        except RETRYABLE:
            raise
        except RecordRejected as exc:
            log.warning("the LLM refused a prompt of this batch (%s); retrying record by record", exc)
        except Exception:  # noqa: BLE001 - isolate the poison record instead of blocking the partition
            log.exception("batch processing failed; retrying record by record")
    parts: list[BatchOutcome] = []
    dead: list[DeadLetter] = []
    for rec in records:
        try:
            done = _alone(rec, process, isolate=isolate, llm_healthy=llm_healthy)
            if isinstance(done, BatchOutcome):
                parts.append(done)
            else:
                dead.append(DeadLetter(rec, f"the LLM failed on this record alone {ALONE_ATTEMPTS} times after "
                                            f"{failures} tries of its batch, answering its health check each "
                                            f"time: {done}"[:500], "llm_failed_repeatedly"))
        except RETRYABLE:
            raise
        except RecordRejected as exc:
            dead.append(DeadLetter(rec, f"rejected by the LLM: {exc}"[:500], "llm_rejected"))
        except Exception as exc:  # noqa: BLE001
            dead.append(DeadLetter(rec, f"processing failed: {type(exc).__name__}: {exc}"[:500],
                                   "processing_failed"))
    return merge_outcomes(parts, records, dead, dead_lettered=dead_lettered_records(decoded, dead, settings))


def _alone(rec: RecordLike, process: ProcessFn, *, isolate: bool,
           llm_healthy: Callable[[], bool]) -> BatchOutcome | LLMUnavailable:
    """``rec`` processed on its own, or its last LLM failure when the LLM answered its health check after each of
    ``ALONE_ATTEMPTS`` failed tries of this record alone (it is poison). Any other LLM failure propagates as an
    outage: the batch is retried later.

    One failure while the LLM looks healthy is not evidence enough: a server that has just come back answers its
    health check before every request succeeds (stale connections, a warming engine), and one record of the
    batch retried at that moment must not be dead-lettered for the outage.
    """
    for attempt in range(1, ALONE_ATTEMPTS + 1):
        try:
            return process([rec], None)
        except LLMUnavailable as exc:
            if not (isolate and llm_healthy()):
                raise
            if attempt == ALONE_ATTEMPTS:
                return exc
            time.sleep(ALONE_PAUSE_S * attempt)
    raise AssertionError("unreachable: the loop returns or raises")


def llm_answers_health_check(llm: LLMBackend) -> bool:
    """The LLM answers its own health check (a server's model list; an in-process engine a one-token probe)."""
    probe = getattr(llm, "health", None)  # optional on the LLMBackend protocol: servers have it
    try:
        if callable(probe):
            return bool(probe())
        answer = llm.generate([Prompt(AUDIT_CLUSTER, {"name": "probe", "summary": "probe"})], {"max_tokens": 1})
        return bool(answer and answer[0] is not None)
    except Exception:  # noqa: BLE001 - any failure of the probe means: not healthy
        return False


def merge_outcomes(parts: Sequence[BatchOutcome], records: Sequence[RecordLike],
                   extra_dead: Sequence[DeadLetter] = (),
                   dead_lettered: Sequence[ConversationRecord] = ()) -> BatchOutcome:
    """One outcome from several sub-batches of ``records`` (the record-by-record fallback)."""
    out = BatchOutcome([], [], list(extra_dead), [], offset_ranges(records), dead_lettered=list(dead_lettered))
    for p in parts:
        out.facet_points.extend(p.facet_points)
        out.conversations.extend(p.conversations)
        out.dead_letters.extend(p.dead_letters)
        out.deltas.extend(p.deltas)
        out.duplicates += p.duplicates
        out.reused_by_hash += p.reused_by_hash
        out.llm_calls += p.llm_calls
        out.llm_prompts += p.llm_prompts
        out.unparseable += p.unparseable
        out.seconds += p.seconds
        out.llm_seconds += p.llm_seconds
        out.embed_seconds += p.embed_seconds
        for name, n in p.assigned.items():
            out.assigned[name] = out.assigned.get(name, 0) + n
        for name, n in p.outliers.items():
            out.outliers[name] = out.outliers.get(name, 0) + n
    return out
