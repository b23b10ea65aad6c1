"""``clio-stream up --logs``: follow every child's log file on the console, each line prefixed with its name.

The children write to their own files under the run folder (so nothing is lost when the console is closed);
this follows those files from where they end when it starts, as ``tail -F`` would, including a file a restarted
child appends to.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO


class LogFollower:
    def __init__(self, logs: Sequence[tuple[str, Path]], out: IO[str], *, interval_s: float = 0.5) -> None:
        self.logs, self.out, self.interval_s = list(logs), out, interval_s
        self._stop = threading.Event()
        self._offsets = {path: (path.stat().st_size if path.exists() else 0) for _, path in self.logs}
        self._partial: dict[Path, str] = {}
        self._thread: threading.Thread | None = None
        width = max((len(n) for n, _ in self.logs), default=0)
        self._prefix = {path: f"[{name:<{width}}] " for name, path in self.logs}

    def poll_once(self) -> int:
        """Write every complete new line of every log; returns how many."""
        written = 0
        for _, path in self.logs:
            if not path.exists():
                continue
            size = path.stat().st_size
            start = self._offsets.get(path, 0)
            if size < start:  # truncated or replaced: start over
                start = 0
            if size == start:
                continue
            with open(path, "rb") as fh:
                fh.seek(start)
                chunk = fh.read(size - start).decode("utf-8", "replace")
            self._offsets[path] = size
            text = self._partial.pop(path, "") + chunk
            *lines, rest = text.split("\n")
            if rest:
                self._partial[path] = rest
            for line in lines:
                self.out.write(self._prefix[path] + line + "\n")
                written += 1
        if written:
            self.out.flush()
        return written

    def start(self) -> LogFollower:
        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.poll_once()

        self._thread = threading.Thread(target=loop, name="log-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.poll_once()
