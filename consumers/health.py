"""The worker's view of its own health: back-off after failures, and whether the Kafka broker is reachable.

Pure logic, so the rules are tested without a broker; the worker turns the
answers into its ``health`` state and metrics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal


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
