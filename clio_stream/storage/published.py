"""Published clustering versions in a directory the API (and any static server) reads: one object per folder.

Layout of ``publish_dir``::

    current                         the current version string; replaced atomically, last
    versions/<version>/result.json  the ClioResult (node ids, ``hidden`` flags and store links final)
    versions/<version>/site/        the static site (clio_stream.site.writer.write_site)
    versions/<version>/lineage.json old cluster id -> successor id (optional)
    versions/<version>/meta.json    {version, published_at, site_version[, redacted_at]}

``result.json`` and ``site/`` make a version folder a result folder (clio_stream.storage.result_folder).
A version folder is built under a temporary name and renamed into place only when complete
(``write_folder``), and ``current`` is flipped only after that, so a reader that follows the pointer
never sees a half-written version. Versions are immutable: publishing an existing version string is an
error. The one rewrite is a user deletion (``scrub``), done file by file with atomic renames, after
which the pointer is rewritten so every reader reloads. The clustering job writes the folder and flips
the pointer as separate steps of its write path (clio_stream.living.versions); the pointer only forwards
(``advance_pointer``).

``PublishedVersions.at(dir)`` is the process-wide object of a folder: it owns the cache of the loaded
current version (re-read only when the pointer or the result file changes), so callers may ask for it
on every request. How leaves join the store's clusters is ``ClioResult.store_links``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from clio_stream.storage.checkpoint import atomic_write_bytes
from clio_stream.domain.clusters import ClioResult
from clio_stream.settings import ClioSettings
from clio_stream.storage.result_folder import RESULT_FILE, SITE_DIR, SiteOptions, rewrite_result_folder

log = logging.getLogger(__name__)

POINTER_FILE = "current"
POINTER_LOCK_FILE = ".current.lock"
VERSIONS_DIR = "versions"
LINEAGE_FILE = "lineage.json"
META_FILE = "meta.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STALE_TMP_S = 3600.0

FileStamp = tuple[int, int]  # (inode, mtime_ns): a file replaced by rename gets a new one


def check_version(version: str) -> str:
    """Version strings become folder names and URL parts: keep them to a safe alphabet."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"invalid version {version!r}: use 1-128 of [A-Za-z0-9._-], not starting with . - _")
    return version


@dataclass
class PublishedVersion:
    """One published version as loaded from disk (immutable; a scrub makes a new one)."""

    version: str
    path: Path
    result: ClioResult
    lineage: dict[str, str]
    published_at: float | None
    result_stamp: FileStamp | None = None  # identity of the result.json it was read from

    @property
    def site_dir(self) -> Path:
        return self.path / SITE_DIR

    @property
    def identity(self) -> tuple[str, FileStamp | None]:
        """What readers key what they derive from this version by (a scrub changes the stamp)."""
        return self.version, self.result_stamp


def _write_json(path: Path, doc: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable before the pointer refers to them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stamp(path: Path) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


# Readers stat the pointer at most this often: a request path touches no file, and another process's publish
# is seen within this many seconds (this process's own publishes and scrubs at once).
POINTER_CHECK_S = 0.5


class PublishedVersions:
    """The versions published in one folder: write, point, load (cached), list, prune, scrub."""

    _instances: ClassVar[dict[Path, PublishedVersions]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, publish_dir: str | Path) -> None:
        self.root = Path(publish_dir).expanduser().absolute()
        self._pointer = str(self.root / POINTER_FILE)
        self._lock = threading.Lock()
        self._current: tuple[FileStamp, PublishedVersion] | None = None  # (pointer stamp, loaded version)
        self._checked_at = float("-inf")  # when the pointer was last stat-ed (monotonic)

    @classmethod
    def at(cls, publish_dir: str | Path) -> PublishedVersions:
        """The process-wide object of ``publish_dir`` (one cache per folder)."""
        root = Path(publish_dir).expanduser().absolute()
        found = cls._instances.get(root)
        if found is None:
            with cls._instances_lock:
                found = cls._instances.setdefault(root, cls(root))
        return found

    @classmethod
    def from_settings(cls, settings: ClioSettings) -> PublishedVersions:
        """``settings.publish_dir``, or ``<cache_dir>/published`` when unset."""
        return cls.at(settings.publish_dir or Path(settings.cache_dir) / "published")

    def folder(self, version: str) -> Path:
        return self.root / VERSIONS_DIR / check_version(version)

    # --- writing ---

    def publish(self, result: ClioResult, version: str, *, settings: ClioSettings,
                lineage: dict[str, str] | None = None, keep: int = 5) -> Path:
        """Write ``result`` as ``version`` (result.json, site, lineage), make it current, prune old versions.

        Returns the version folder. ``keep`` counts versions kept, the new one included; the current version
        is never pruned. (The clustering job writes the folder and flips the pointer as separate steps.)
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        final = self.write_folder(result, version, lineage=lineage, settings=settings)
        self._write_pointer(version)
        self.prune(keep=keep)
        return final

    def write_folder(self, result: ClioResult, version: str, *, settings: ClioSettings,
                     lineage: dict[str, str] | None = None) -> Path:
        """Build ``versions/<version>`` under a temporary name and rename it into place; the pointer is not touched.

        Raises ``FileExistsError`` if the version exists (versions are immutable).
        """
        final = self.folder(version)
        versions = final.parent
        versions.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise FileExistsError(f"version {version} is already published; versions are immutable")
        tmp = versions / f".tmp-{version}-{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        try:
            tmp.mkdir()
            _write_json(tmp / RESULT_FILE, result.model_dump(mode="json"))
            site = SiteOptions.from_settings(settings).write(result, tmp / SITE_DIR, previous=self._previous(version),
                                                             version=version)
            if lineage is not None:
                _write_json(tmp / LINEAGE_FILE, {str(k): str(v) for k, v in lineage.items()})
            site_version = json.loads((site / "data" / "version.json").read_text())["version"]
            _write_json(tmp / META_FILE, {"version": version, "published_at": time.time(),
                                          "site_version": site_version})
            _fsync_dir(tmp)
            os.rename(tmp, final)  # fails if ``final`` appeared meanwhile: two publishers of one version
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(versions)
        log.info("wrote version folder %s in %.2fs", version, time.monotonic() - started)
        return final

    def _previous(self, version: str) -> PublishedVersion | None:
        """The version the site's "what changed" compares with: the current one, if any (never ``version``)."""
        try:
            current = self.load_current()
        except (OSError, ValueError):  # an unreadable previous version only loses the comparison
            log.warning("could not load the current version to compare with", exc_info=True)
            return None
        return current if current is not None and current.version != version else None

    def is_complete(self, version: str) -> bool:
        """Whether ``versions/<version>`` is in place (folders appear only complete, by rename)."""
        return (self.folder(version) / META_FILE).is_file()

    # --- the pointer ---

    def advance_pointer(self, version: int) -> bool:
        """Make the numbered clustering ``version`` current unless a higher number already is; True if current now.

        The compare and the replace run under an ``flock`` of the publish folder, so two publishers (one of
        them late, having lost its lease) cannot move the pointer backwards.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / POINTER_LOCK_FILE, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            current = self.read_pointer()
            if current is not None and current.isdigit() and int(current) > int(version):
                log.warning("not publishing version %d: version %s is already current", version, current)
                return False
            if current != str(version):
                self._write_pointer(str(version))
                log.info("published version %d", version)
        return True

    def _write_pointer(self, version: str) -> None:
        tmp = self.root / f".{POINTER_FILE}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(version + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.root / POINTER_FILE)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        self._checked_at = float("-inf")  # this process sees its own publish at once

    def read_pointer(self) -> str | None:
        """The current version string, or None before the first publish (or if the pointer is unreadable)."""
        try:
            text = (self.root / POINTER_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        try:
            return check_version(text)
        except ValueError:
            log.error("ignoring an invalid publish pointer in %s", self.root)
            return None

    # --- listing ---

    def list_versions(self) -> list[str]:
        """Complete versions, oldest first (by publish time, then name)."""
        versions = self.root / VERSIONS_DIR
        if not versions.is_dir():
            return []
        found: list[tuple[float, str]] = []
        for entry in versions.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            meta = _read_json(entry / META_FILE)
            when = (float(meta["published_at"]) if isinstance(meta, dict) and "published_at" in meta
                    else entry.stat().st_mtime)
            found.append((when, entry.name))
        return [name for _, name in sorted(found)]

    def prune(self, *, keep: int) -> list[str]:
        """Remove all but the newest ``keep`` versions (never the current one) and stale temp folders."""
        current = self.read_pointer()
        ordered = self.list_versions()
        keep_set = set(ordered[-keep:]) | ({current} if current else set())
        removed = []
        for name in ordered:
            if name not in keep_set:
                shutil.rmtree(self.root / VERSIONS_DIR / name, ignore_errors=True)
                removed.append(name)
        now = time.time()
        for entry in (self.root / VERSIONS_DIR).glob(".tmp-*"):
            try:
                if now - entry.stat().st_mtime > _STALE_TMP_S:
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                continue
        if removed:
            log.info("pruned versions %s", ", ".join(removed))
        return removed

    def read_lineage(self, version: str) -> dict[str, str]:
        """The lineage map of one version ({} when it has none), without loading its result."""
        doc = _read_json(self.folder(version) / LINEAGE_FILE)
        return {str(k): str(v) for k, v in dict(doc or {}).items()}

    # --- loading ---

    def _fresh_hit(self) -> PublishedVersion | None:
        """The cached version while the pointer was checked less than ``POINTER_CHECK_S`` ago (no file access)."""
        hit = self._current
        if hit is not None and time.monotonic() - self._checked_at < POINTER_CHECK_S:
            return hit[1]
        return None

    def _pointer_stamp(self) -> FileStamp | None:
        self._checked_at = time.monotonic()
        return _stamp(Path(self._pointer))

    def load_current(self) -> PublishedVersion | None:
        """The current version, loaded once per version: re-read only when the pointer or its result changes.

        Checking costs one ``stat`` of the pointer (``os.replace`` gives it a new inode), at most once per
        ``POINTER_CHECK_S`` (this process's own publishes and scrubs are seen at once), so callers may call
        this on every request.
        """
        fresh = self._fresh_hit()
        if fresh is not None:
            return fresh
        stamp = self._pointer_stamp()
        if stamp is None:
            return None
        hit = self._current
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with self._lock:
            hit = self._current
            if hit is not None and hit[0] == stamp:
                return hit[1]
            version = self.read_pointer()
            if version is None:
                return hit[1] if hit else None
            if hit is not None and hit[1].version == version and hit[1].result_stamp == _stamp(
                    hit[1].path / RESULT_FILE):
                self._current = (stamp, hit[1])
                return hit[1]
            loaded = self.load(version)
            if loaded is None:
                return hit[1] if hit else None
            self._current = (stamp, loaded)
            return loaded

    def current_if_loaded(self) -> PublishedVersion | None:
        """The cached current version if the pointer has not changed since it was loaded, else None.

        At most a ``stat`` (none within ``POINTER_CHECK_S`` of the last): lets async callers skip a thread hop
        on the hot path and call ``load_current`` (which may read files) off the event loop otherwise.
        """
        fresh = self._fresh_hit()
        if fresh is not None:
            return fresh
        hit = self._current
        if hit is None:
            return None
        stamp = _stamp(Path(self._pointer))
        if hit[0] != stamp:
            return None  # moved: the check stays due, so ``load_current`` reads the new version
        self._checked_at = time.monotonic()
        return hit[1]

    def load(self, version: str) -> PublishedVersion | None:
        """A specific published version (uncached), or None if it is not there."""
        path = self.folder(version)
        stamp = _stamp(path / RESULT_FILE)
        try:
            raw = (path / RESULT_FILE).read_bytes()
        except FileNotFoundError:
            log.error("published version %s has no %s (pruned or incomplete)", version, RESULT_FILE)
            return None
        started = time.monotonic()
        result = ClioResult.model_validate_json(raw)
        lineage = _read_json(path / LINEAGE_FILE) or {}
        meta = _read_json(path / META_FILE) or {}
        log.info("loaded published version %s in %.2fs", version, time.monotonic() - started)
        return PublishedVersion(version=version, path=path, result=result,
                                lineage={str(k): str(v) for k, v in dict(lineage).items()},
                                published_at=meta.get("published_at"), result_stamp=stamp)

    # --- the one rewrite: deletion ---

    def scrub(self, edit: Callable[[ClioResult], bool], settings: ClioSettings) -> list[str]:
        """Rewrite every retained version ``edit`` changes (result, site, meta); the versions rewritten.

        Sites are rebuilt with the options each version was published with. If the current version was
        rewritten, the pointer is replaced with the same version (a new inode: every process reloads) and
        this process's cache is dropped at once.
        """
        scrubbed = []
        for version in self.list_versions():
            folder = self.folder(version)
            if rewrite_result_folder(folder, edit, settings):
                self._mark_redacted(folder)
                scrubbed.append(version)
        current = self.read_pointer()
        if current is not None and current in scrubbed:
            atomic_write_bytes(self.root / POINTER_FILE, (current + "\n").encode())
            self.invalidate()
        return scrubbed

    @staticmethod
    def _mark_redacted(folder: Path) -> None:
        meta_path = folder / META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return
        meta["redacted_at"] = time.time()
        atomic_write_bytes(meta_path, json.dumps(meta, separators=(",", ":")).encode())

    def invalidate(self) -> None:
        """Forget the cached current version: the next ``load_current`` reads the files again."""
        with self._lock:
            self._current = None
            self._checked_at = float("-inf")
