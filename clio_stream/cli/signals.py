"""How a foreground service stops: SIGTERM (``docker stop``, Kubernetes) or Ctrl-C, then a second one at once."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable

log = logging.getLogger(__name__)


def stop_on_signals(stop: Callable[[], None], finishing: str) -> None:
    """On SIGTERM / SIGINT log what is finished first (``finishing``) and call ``stop``; a second signal kills."""

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: %s", signal.Signals(signum).name, finishing)
        stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
