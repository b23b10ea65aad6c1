"""Start, probe and stop the local broker and Qdrant server.

``ManagedProcess`` is deliberately small: one subprocess, its output in its own
log file (so a failure can quote the log tail), a readiness probe polled until
it passes, and a stop that escalates from SIGTERM to SIGKILL. Tests use
``kill9()`` to simulate crashes. Processes still running when the interpreter
exits are stopped by an ``atexit`` hook so a crashed test run does not leave
servers holding ports.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from clio_stream.devstack.binaries import qdrant_binary, tansu_binary

log = logging.getLogger(__name__)

# Strong references on purpose: a server whose handle was dropped must still be stopped at exit.
_LIVE: set[ManagedProcess] = set()
_LIVE_LOCK = threading.Lock()


class ProcessStartError(RuntimeError):
    """A managed process exited early or never became ready (message has the log tail)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on ``host:port`` (bind test, as a server would do it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def tcp_probe(host: str, port: int, timeout: float = 0.5) -> Callable[[], bool]:
    """A probe that passes when ``host:port`` accepts a TCP connection."""

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            return False

    return probe


def http_probe(url: str, timeout: float = 1.0) -> Callable[[], bool]:
    """A probe that passes when GET ``url`` answers 200."""

    # Ignore http_proxy & co: the probe targets a local server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def probe() -> bool:
        try:
            with opener.open(url, timeout=timeout) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False

    return probe


def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


# Resolved in the parent: after fork (in a threaded parent) the child must not dlopen.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """SIGTERM the child when the thread that forked it dies (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM)


class ManagedProcess:
    """One server subprocess with a log file, a readiness probe and a clean stop."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        ready_probe: Callable[[], bool] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = False,
    ) -> None:
        """``die_with_parent`` (Linux) kills the server if the starting *thread* dies;
        useful in tests, wrong if a short-lived thread starts a long-lived server."""
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = Path(log_path)
        self.ready_probe = ready_probe
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self.ready_after_s: float | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> ManagedProcess:
        """Start the process and block until the probe passes (or raise ProcessStartError)."""
        if self.alive:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env} if self.env is not None else None
        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            logf.write(f"--- start {self.name}: {' '.join(self.argv)}\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                # Own session: a Ctrl-C in the terminal reaches us, not the server, so
                # shutdown order stays ours.
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent and _PRCTL else None,
            )
        with _LIVE_LOCK:
            _LIVE.add(self)
        log.info("%s started (pid %d), log %s", self.name, self._proc.pid, self.log_path)
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.ready_after_s = time.monotonic() - t0
        log.info("%s ready in %.2fs", self.name, self.ready_after_s)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll the probe; fail fast with the log tail if the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            code = self.returncode
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited early with code {code}; log tail:\n{self.log_tail()}"
                )
            if self.ready_probe is None or self.ready_probe():
                # A probe can pass against a *different* process on the same port
                # while ours is dying; confirm ours is still there.
                time.sleep(0.05)
                if self.returncode is None:
                    return
                continue
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} not ready after {timeout:.0f}s; log tail:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default ``stop_timeout``), then SIGKILL.

        Returns the exit code (None if never started). Idempotent.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            timeout = self.stop_timeout if timeout is None else timeout
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not exit %.1fs after SIGTERM; killing", self.name, timeout)
                proc.kill()
                proc.wait()
            log.info("%s stopped (code %s)", self.name, proc.returncode)
        _kill_group(proc.pid)
        with _LIVE_LOCK:
            _LIVE.discard(self)
        return proc.returncode

    def kill9(self) -> None:
        """SIGKILL without warning, as a crash would (for fault tests)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
            log.info("%s killed with SIGKILL", self.name)
        if proc is not None:
            _kill_group(proc.pid)  # its children too (a vLLM server's engine core), as a machine crash would
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def restart(self) -> ManagedProcess:
        """Stop (if running) and start again with the same arguments."""
        self.stop()
        return self.start()

    # -- introspection -----------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the log (for error messages)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                data = fh.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return "\n".join(data.splitlines()[-lines:])

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, alive={self.alive})"


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for mp in live:
        try:
            mp.stop(timeout=3.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            log.exception("failed to stop %s at exit", mp.name)


def default_log_dir() -> Path:
    root = Path(os.environ.get("CLIO_CACHE_DIR", "~/.cache/clio-stream")).expanduser()
    return root / "logs"


def require_free(name: str, host: str, port: int) -> None:
    if port_in_use(host, port):
        raise ProcessStartError(f"cannot start {name}: {host}:{port} is already in use")


def start_broker(
    host: str = "127.0.0.1",
    port: int = 9092,
    log_dir: Path | None = None,
    *,
    binary: Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 20.0,
    die_with_parent: bool = False,
) -> ManagedProcess:
    """Start a Tansu broker on ``host:port`` (in-memory storage) and wait until ready.

    In-memory storage means a restart loses topics, records and committed offsets.
    Pass e.g. ``extra_args=["--storage-engine", "s3://bucket/"]`` for durable storage.
    """
    require_free("broker", host, port)
    url = f"tcp://{host}:{port}"
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()
    mp = ManagedProcess(
        "tansu",
        [binary or tansu_binary(), "broker", "--listener-url", url,
         "--advertised-listener-url", url, *extra_args],
        log_path=log_dir / f"tansu-{port}.log",
        ready_probe=tcp_probe(host, port),
        env=env,
        ready_timeout=ready_timeout,
        die_with_parent=die_with_parent,
    )
    return mp.start()


def start_qdrant(
    host: str = "127.0.0.1",
    http_port: int = 6333,
    grpc_port: int = 6334,
    storage_dir: Path | None = None,
    log_dir: Path | None = None,
    *,
    binary: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 60.0,
    die_with_parent: bool = False,
) -> ManagedProcess:
    """Start a Qdrant server and wait until ``/readyz`` answers 200.

    Qdrant writes ``snapshots/`` and ``.qdrant-initialized`` relative to its working
    directory, so the process runs inside ``storage_dir`` with snapshots under it.
    """
    require_free("qdrant (http)", host, http_port)
    require_free("qdrant (grpc)", host, grpc_port)
    root = Path(os.environ.get("CLIO_CACHE_DIR", "~/.cache/clio-stream")).expanduser()
    storage_dir = Path(storage_dir) if storage_dir is not None else root / "qdrant"
    storage_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir is not None else default_log_dir()
    qenv = {
        "QDRANT__SERVICE__HOST": host,
        "QDRANT__SERVICE__HTTP_PORT": str(http_port),
        "QDRANT__SERVICE__GRPC_PORT": str(grpc_port),
        "QDRANT__STORAGE__STORAGE_PATH": str(storage_dir / "storage"),
        "QDRANT__STORAGE__SNAPSHOTS_PATH": str(storage_dir / "snapshots"),
        "QDRANT__TELEMETRY_DISABLED": "true",
        **(env or {}),
    }
    mp = ManagedProcess(
        "qdrant",
        [binary or qdrant_binary(), "--disable-telemetry"],
        log_path=log_dir / f"qdrant-{http_port}.log",
        ready_probe=http_probe(f"http://{host}:{http_port}/readyz"),
        env=qenv,
        cwd=storage_dir,
        ready_timeout=ready_timeout,
        die_with_parent=die_with_parent,
    )
    return mp.start()


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a process group we started (``start_new_session``: its pid is the group).

    A vLLM server's engine core outlives a killed server process and keeps gigabytes of memory; nothing of a
    stopped service may stay behind.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
