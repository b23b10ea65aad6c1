"""Batches in flight: the next batch's prompts are in the engine while the previous one is written and committed.

The worker's own thread keeps everything Kafka (poll, commit, seek) and every write; the processing of each
polled batch (content-hash reuse, the LLM, embedding, assignment: reads and compute only) runs on a thread of
its own, at most ``limit`` at a time. Finished batches are handed back strictly in launch order, so the worker
writes and commits them in poll order, and a batch is committed only after it and every batch polled before
it were stored. A batch that failed, and every batch launched after it, is *abandoned*: never written nor
committed, its records sought back to and polled again. An abandoned batch's thread may still be running (an
LLM call cannot be recalled); it still counts against ``limit`` until it ends, and its result is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition

from clio_stream.ops.faults import reach
from consumers.decoding import RecordLike, offset_ranges
from consumers.processing import BatchOutcome

log = logging.getLogger(__name__)

StartOffsets = tuple[tuple[str, int, int], ...]  # (topic, partition, first offset): a batch's identity


def start_offsets(records: Sequence[RecordLike]) -> StartOffsets:
    """Where a polled batch starts on each partition (how the worker recognises a batch that keeps failing)."""
    return tuple(sorted((t, p, first) for (t, p), (first, _) in offset_ranges(records).items()))


@dataclass(eq=False)
class InFlightBatch:
    """One polled batch and what became of its processing."""

    seq: int
    records: list[RecordLike]
    start: StartOffsets
    launched_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: BatchOutcome | None = None
    error: BaseException | None = None
    abandoned: bool = False

    @property
    def ranges(self) -> dict[tuple[str, int], tuple[int, int]]:
        return offset_ranges(self.records)

    def finish(self, outcome: BatchOutcome | None = None, error: BaseException | None = None) -> None:
        self.outcome, self.error = outcome, error
        self.done.set()


def rewind_targets(batches: Iterable[InFlightBatch]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the first offset of the earliest of ``batches`` there: where to seek back to."""
    out: dict[tuple[str, int], int] = {}
    for b in batches:
        for tp, (first, _) in b.ranges.items():
            out[tp] = min(first, out.get(tp, first))
    return out


def seek_back(consumer: KafkaConsumer, batches: Sequence[InFlightBatch]) -> None:
    """Seek back to the batches' first offsets on the partitions still ``consumer``'s, so they are polled again."""
    owned = consumer.assignment()
    for (topic, partition), first in rewind_targets(batches).items():
        tp = TopicPartition(topic, partition)
        if tp in owned:
            consumer.seek(tp, first)


class InFlight:
    """At most ``limit`` batches processing at once, handed back in launch order."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self._queue: deque[InFlightBatch] = deque()  # launched and not yet taken, oldest first
        self._abandoned: list[InFlightBatch] = []  # given up, their threads possibly still running
        self._seq = 0
        self._progress = threading.Event()  # set whenever a batch finishes

    def __len__(self) -> int:
        return len(self._queue)

    def has_room(self) -> bool:
        """Fewer than ``limit`` batches queued or still running abandoned (those still use the LLM)."""
        self._abandoned = [b for b in self._abandoned if not b.done.is_set()]
        return len(self._queue) + len(self._abandoned) < self.limit

    def launch(self, records: Sequence[RecordLike], work: Callable[[], BatchOutcome]) -> InFlightBatch:
        """Run ``work`` (the batch's processing) on a daemon thread; the batch joins the queue."""
        self._seq += 1
        batch = InFlightBatch(self._seq, list(records), start_offsets(records))

        def run() -> None:
            try:
                outcome = work()
                reach("consume.queued")  # computed, waiting for the worker to write it in order
                batch.finish(outcome)
            except BaseException as exc:  # noqa: BLE001 - handed to the worker's thread, which decides
                batch.finish(error=exc)
            finally:
                self._progress.set()

        self._queue.append(batch)
        threading.Thread(target=run, name=f"batch-{batch.seq}", daemon=True).start()
        return batch

    def failed(self, records: Sequence[RecordLike], error: BaseException) -> InFlightBatch:
        """Queue a batch that failed before it could be launched (say, marking it pending), to be handled in order."""
        self._seq += 1
        batch = InFlightBatch(self._seq, list(records), start_offsets(records))
        batch.finish(error=error)
        self._queue.append(batch)
        self._progress.set()
        return batch

    def oldest(self) -> InFlightBatch | None:
        return self._queue[0] if self._queue else None

    def take_done(self) -> InFlightBatch | None:
        """The oldest batch if its processing has ended (removed from the queue), else None."""
        if self._queue and self._queue[0].done.is_set():
            return self._queue.popleft()
        return None

    def abandon_all(self) -> list[InFlightBatch]:
        """Give up every queued batch (oldest first); their records must be sought back to."""
        dropped = list(self._queue)
        self._queue.clear()
        for b in dropped:
            b.abandoned = True
        self._abandoned.extend(b for b in dropped if not b.done.is_set())
        return dropped

    def wait(self, timeout: float) -> None:
        """Until some batch finishes or ``timeout`` seconds pass."""
        if self._progress.wait(timeout):
            self._progress.clear()

    def wait_for_abandoned(self, timeout: float) -> bool:
        """Until every abandoned batch's thread has ended (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        for b in list(self._abandoned):
            if not b.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        self._abandoned.clear()
        return True


class RevokeListener(ConsumerRebalanceListener):
    """Calls ``on_revoke`` before the group takes this consumer's partitions (kafka-python, inside ``poll``)."""

    def __init__(self, on_revoke: Callable[[], None]) -> None:
        self.on_revoke = on_revoke

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.on_revoke()

    def on_partitions_assigned(self, assigned: Any) -> None:
        return None
