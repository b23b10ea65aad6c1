"""Rejected centroid deltas to the dead-letter topic, once per record per worker (a rewind of the deltas topic
replays them)."""

from __future__ import annotations

import logging

from clio_stream.streaming.kafka_io import DeadLetterWriter
from consumers.centroids import DeltaReport

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000  # past this the memory of sent records starts afresh (a repeat dead letter is harmless)


class DeltaDeadLetters:
    """Which deltas-topic records this worker already dead-lettered, and the sending."""

    def __init__(self) -> None:
        self._sent: set[tuple[int, int]] = set()  # (partition, offset) on the deltas topic

    def send(self, dlq: DeadLetterWriter, report: DeltaReport) -> None:
        """Dead-letter the rejected deltas of ``report`` not sent before.

        Best effort: a delta that could not be dead-lettered was still not applied.
        """
        try:
            for item in report.rejected:
                rec = item.record
                if (rec.partition, rec.offset) in self._sent:
                    continue
                dlq.send(key=rec.key, value=rec.value, reason=f"centroid delta rejected: {item.reason}",
                         topic=rec.topic, partition=rec.partition, offset=rec.offset)
                if len(self._sent) >= MAX_REMEMBERED:
                    self._sent.clear()
                self._sent.add((rec.partition, rec.offset))
            dlq.flush(timeout=10)
        except Exception as exc:  # noqa: BLE001 - never let a hostile delta break the loop
            log.warning("dead-lettering rejected centroid deltas failed: %s", exc)
