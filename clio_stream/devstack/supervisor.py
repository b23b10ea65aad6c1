"""``clio-stream up`` as a supervisor: a child that exits is restarted with back-off, and reported.

The embedded stack's children (broker, Qdrant, vLLM server, consumers) are long-lived. When one exits, the
supervisor logs its exit code and the tail of its log, restarts it after a back-off that doubles with each quick
failure (reset once it has stayed up), and keeps a typed record per child that it stores as the ``UpChildren``
state document, which ``GET /v1/status`` shows. Pure scheduling logic with an injectable clock, so the policy
is unit-tested; starting is the child's own ``start()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from clio_stream.storage.documents import ChildStatus, UpChildren

log = logging.getLogger(__name__)


class Child(Protocol):
    name: str

    @property
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | None: ...

    def start(self) -> object: ...

    def log_tail(self, lines: int = 30) -> str: ...


class Supervisor:
    """Restart exited children; ``report`` receives the children's state after every change and heartbeat."""

    def __init__(self, children: Sequence[Child], *, report: Callable[[UpChildren], None] | None = None,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0, stable_after_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.children = list(children)
        self._report, self._clock = report, clock
        self.backoff_initial_s, self.backoff_max_s, self.stable_after_s = backoff_initial_s, backoff_max_s, stable_after_s
        now = clock()
        self.state = {c.name: ChildStatus(name=c.name, alive=c.alive, started_at=now) for c in self.children}
        self._backoff = {c.name: backoff_initial_s for c in self.children}
        self._retry_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> UpChildren:
        now = self._clock()
        for child in self.children:
            st = self.state[child.name]
            if child.alive:
                if not st.alive:
                    st.alive = True
                if st.started_at is not None and now - st.started_at >= self.stable_after_s:
                    self._backoff[child.name] = self.backoff_initial_s  # it stayed up: forgive earlier failures
                continue
            if st.alive:  # it just exited
                st.alive, st.last_exit_code, st.last_exit_at = False, child.returncode, now
                self._retry_at[child.name] = now + self._backoff[child.name]
                log.warning("%s exited with code %s; restarting in %.0f s. Last lines of its log:\n%s", child.name,
                            child.returncode, self._backoff[child.name], child.log_tail(15))
            if now >= self._retry_at.get(child.name, now):
                self._restart(child, st, now)
        doc = UpChildren(children=list(self.state.values()), updated_at=now)
        if self._report is not None:
            try:
                self._report(doc)
            except Exception:  # noqa: BLE001 - reporting is informative; supervising goes on
                log.debug("could not store the children's state", exc_info=True)
        return doc

    def _restart(self, child: Child, st: ChildStatus, now: float) -> None:
        st.restarts += 1
        try:
            child.start()
        except Exception as exc:  # noqa: BLE001 - a failed start is retried after a longer back-off
            log.warning("restarting %s failed: %s", child.name, exc)
        self._backoff[child.name] = min(self.backoff_max_s, self._backoff[child.name] * 2)
        st.alive, st.started_at = child.alive, now
        if st.alive:
            log.info("%s restarted (restart %d)", child.name, st.restarts)
        else:
            self._retry_at[child.name] = now + self._backoff[child.name]

    def start(self, interval_s: float = 2.0) -> Supervisor:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.check_once()

        self._thread = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
