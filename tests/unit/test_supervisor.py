"""`clio-stream up` as a supervisor: a child that exits is restarted after a back-off that grows with quick
failures and resets once it stays up; every check is reported. The last test uses a real child process."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from clio_stream.devstack.processes import ManagedProcess
from clio_stream.devstack.supervisor import Supervisor


class FakeChild:
    def __init__(self, name: str, fail_starts: int = 0) -> None:
        self.name, self.alive, self.returncode, self.starts, self.fail_starts = name, True, None, 0, fail_starts

    def exit(self, code: int) -> None:
        self.alive, self.returncode = False, code

    def start(self) -> FakeChild:
        self.starts += 1
        if self.starts <= self.fail_starts:
            raise RuntimeError("port in use")
        self.alive, self.returncode = True, None
        return self

    def log_tail(self, lines: int = 30) -> str:
        return "last words"


def test_an_exited_child_is_restarted_after_a_growing_back_off() -> None:
    now = [0.0]
    child, other = FakeChild("consumer-0"), FakeChild("qdrant")
    reports = []
    sup = Supervisor([child, other], report=reports.append, backoff_initial_s=1, backoff_max_s=8,
                     stable_after_s=100, clock=lambda: now[0])
    child.exit(3)
    doc = sup.check_once()
    assert child.starts == 0 and not doc.children[0].alive and doc.children[0].last_exit_code == 3
    now[0] = 1.0
    doc = sup.check_once()
    assert child.starts == 1 and child.alive and doc.children[0].restarts == 1 and doc.children[1].restarts == 0
    child.exit(3)  # fails again at once: the next wait is longer
    now[0] = 2.0
    sup.check_once()
    now[0] = 3.5
    sup.check_once()
    assert child.starts == 1  # 2 s back-off now, not 1
    now[0] = 4.0
    sup.check_once()
    assert child.starts == 2 and len(reports) == 5 and other.starts == 0


def test_back_off_resets_once_a_child_stays_up_and_a_failed_start_is_retried() -> None:
    now = [0.0]
    child = FakeChild("vllm", fail_starts=1)
    sup = Supervisor([child], backoff_initial_s=1, backoff_max_s=60, stable_after_s=10, clock=lambda: now[0])
    child.exit(1)
    sup.check_once()
    now[0] = 1.0
    sup.check_once()  # start fails: retried after 2 s
    assert child.starts == 1 and not child.alive
    now[0] = 3.0
    sup.check_once()
    assert child.starts == 2 and child.alive
    now[0] = 20.0  # stayed up beyond stable_after_s
    sup.check_once()
    child.exit(1)
    sup.check_once()
    now[0] = 21.0
    sup.check_once()
    assert child.starts == 3  # back to the initial 1 s


def test_a_real_child_killed_is_started_again(tmp_path: Path) -> None:
    p = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                       log_path=tmp_path / "sleeper.log", ready_timeout=5).start()
    try:
        sup = Supervisor([p], backoff_initial_s=0)
        first = p.pid
        os.kill(first, signal.SIGKILL)
        deadline = time.time() + 10
        while p.alive and time.time() < deadline:
            time.sleep(0.05)
        doc = sup.check_once()
        assert p.alive and p.pid != first and doc.children[0].restarts == 1
        assert doc.children[0].last_exit_code == -signal.SIGKILL
    finally:
        p.stop()
