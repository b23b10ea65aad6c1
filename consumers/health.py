"""The worker's view of its own health: back-off after failures, and whether the Kafka broker is reachable.

Pure logic, so the rules are tested without a broker; the worker turns the
answers into its ``health`` state and metrics.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Literal

from consumers.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def backoff_delay(failures: int, initial_s: float, max_s: float, jitter: float = 0.1) -> float:
    """Exponential back-off after ``failures`` consecutive failures (1 = first), capped, with a little jitter."""
    base = min(max_s, initial_s * (2 ** max(0, failures - 1)))
    return base * (1.0 + random.uniform(-jitter, jitter))


BrokerChange = Literal["back", "unreachable"]


@dataclass
class BrokerWatch:
    """Whether an idle consumer still has a group coordinator, judged over ``unreachable_s``.

    An empty poll looks the same whether the topic is idle or the broker is gone,
    so the worker asks its group client after each empty poll and feeds the answer here.
    """

    unreachable_s: float
    lost_at: float | None = None  # monotonic time the coordinator was first found missing

    def observe(self, lost: bool, now: float) -> BrokerChange | None:
        """``"unreachable"`` once the coordinator has been missing ``unreachable_s``; ``"back"`` when it returns."""
        if not lost:
            missed = self.lost_at is not None
            self.lost_at = None
            return "back" if missed else None
        if self.lost_at is None:
            self.lost_at = now
            return None
        return "unreachable" if now - self.lost_at >= self.unreachable_s else None

    def reset(self) -> None:
        """Records arrived: the broker is there."""
        self.lost_at = None


class WorkerHealth:
    """A worker's ``health`` (starting, ok, degraded, stopped) and its reason, kept in its metrics too; the
    count of consecutive failures and the back-off after each."""

    def __init__(self, metrics: WorkerMetrics, *, backoff_initial_s: float, backoff_max_s: float,
                 broker_unreachable_s: float) -> None:
        self.metrics = metrics
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.broker = BrokerWatch(broker_unreachable_s)
        self.state = "starting"
        self.reason: str | None = None
        self.failures = 0

    def set(self, state: str, reason: str | None = None) -> None:
        self.state, self.reason = state, reason
        self.metrics.set_health(state, reason)

    def fail(self, reason: str, stop: threading.Event, *, back_off: bool = True) -> None:
        """Report degraded and wait before the retry (interrupted by ``stop``)."""
        self.failures += 1
        self.metrics.add(failed_batches=1)
        self.set("degraded", reason[:300])
        delay = backoff_delay(self.failures, self.backoff_initial_s, self.backoff_max_s)
        log.warning("worker degraded (%s); retrying in %.1f s", reason[:300], delay if back_off else 0.0)
        if back_off:
            stop.wait(delay)

    def recovered(self) -> None:
        if self.failures:
            log.info("worker recovered after %d failed attempts", self.failures)
        self.failures = 0
        if self.state != "ok":
            self.set("ok")

    def watch_broker(self, consumer: Any, now: float) -> None:
        """After an empty poll: show a lost group coordinator as ``degraded`` (kafka-python reconnects by itself)."""
        try:
            lost = bool(consumer._coordinator.coordinator_unknown())
        except Exception:  # noqa: BLE001 - a private API of kafka-python: never let it break the loop
            return
        lost_since = self.broker.lost_at
        change = self.broker.observe(lost, now)
        if change == "back" and self.state == "degraded":
            log.info("broker reachable again")
            self.set("ok")
        elif change == "unreachable" and self.state == "ok":
            log.warning("no Kafka group coordinator for %.0f s: broker unreachable", now - (lost_since or now))
            self.set("degraded", "Kafka broker unreachable")
