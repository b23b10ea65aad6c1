"""Per-prompt progress of one LLM call that sends many requests (the server back-end on a GPU box).

A naming or extraction call can hold thousands of prompts for many minutes. A terminal gets a tqdm bar; every
run gets log lines at each further tenth of the prompts (at most one per ``log_every_s``) with the rate and the
time left, so a service's log shows where it is without a terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MIN_PROMPTS_TO_REPORT = 20  # smaller calls finish before anyone would look


class PromptProgress:
    def __init__(self, total: int, desc: str | None, *, bar: bool, log_every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.done, self._clock, self._every = total, desc or "llm", 0, clock, log_every_s
        self._started = self._last_log = clock()
        self._next_tenth = 1
        self._report = desc is not None and total >= MIN_PROMPTS_TO_REPORT
        self._bar = None
        if bar and self._report:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=self.desc, unit="prompt", leave=False)

    def one_done(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
        if not self._report or self.done * 10 < self._next_tenth * self.total:
            return
        self._next_tenth = self.done * 10 // self.total + 1
        now = self._clock()
        if now - self._last_log < self._every and self.done < self.total:
            return
        self._last_log = now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        log.info("%s: %d/%d prompts, %.1f/s, about %.0f s left", self.desc, self.done, self.total, rate, left)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
