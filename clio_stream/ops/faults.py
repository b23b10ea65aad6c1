"""Named fault points in write paths, so tests can kill a process at *every* step, not only at random times.

A write path calls ``reach(step)`` before each step. Nothing happens unless a
fault is armed, either

* by the environment (a subprocess under test): ``CLIO_FAULT_AT=<step>`` raises
  :class:`InjectedFault` (a store error, like Qdrant failing there) and
  ``CLIO_FAULT_AT=<step>:exit`` ends the process at once with ``os._exit``
  (no ``finally``, no lease release: a SIGKILL as far as the store can tell);
  ``<step>#<n>`` fires the ``n``-th time the step is reached (steps done once
  per facet are reached several times); or
* in-process by a test: ``with armed(hook): ...`` calls ``hook(step)`` at every
  step, and the hook raises whatever it wants.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from clio_stream.storage.errors import StoreUnavailable

log = logging.getLogger(__name__)

FAULT_ENV = "CLIO_FAULT_AT"
EXIT_KIND = "exit"
EXIT_CODE = 137  # what a shell reports for SIGKILL

Hook = Callable[[str], None]
_hooks: list[Hook] = []
_reached: Counter[str] = Counter()  # per process: how often each step was reached


class InjectedFault(StoreUnavailable):
    """A fault armed at a named step: behaves as a store failure there."""


def reach(step: str) -> None:
    """Mark that the write path is about to run ``step``; fires the fault armed there, if any."""
    for hook in list(_hooks):
        hook(step)
    armed_at = os.environ.get(FAULT_ENV)
    if not armed_at:
        return
    where, _, kind = armed_at.partition(":")
    name, _, nth = where.partition("#")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] != int(nth or 1):
        return
    if kind == EXIT_KIND:
        log.error("fault injection: exiting at step %s", step)
        logging.shutdown()
        os._exit(EXIT_CODE)
    raise InjectedFault(f"fault injected at step {step}")


@contextmanager
def armed(hook: Hook) -> Iterator[None]:
    """Call ``hook(step)`` at every ``reach`` inside the block (tests only)."""
    _hooks.append(hook)
    try:
        yield
    finally:
        _hooks.remove(hook)
