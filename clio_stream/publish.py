"""Publish clustering versions to a directory the API (and any static server) reads.

Layout of ``publish_dir``::

    current                         the current version string; replaced atomically, last
    versions/<version>/result.json  the ClioResult (node ids and ``hidden`` flags final)
    versions/<version>/site/        the static site (clio_stream.site.writer.write_site)
    versions/<version>/lineage.json old cluster id -> successor id (optional)
    versions/<version>/meta.json    {version, published_at, site_version}

A version folder is built under a temporary name and renamed into place only
when complete (``write_version_folder``), and ``current`` is flipped only after
that, so a reader that follows the pointer never sees a half-written version.
Versions are immutable: publishing an existing version string is an error. The
clustering job writes the folder and flips the pointer as separate steps of its
write path (clio_stream.living.versions), the pointer only forwards (``advance_pointer``).

Contract with the store (how the API joins live Qdrant points to the tree):
a level-0 node stands for the online cluster ``cluster_id`` of its facet under
clustering version ``cluster_version``. ``result.stats["store_clusters"]``
({node id: int}) and ``result.stats["cluster_versions"]`` ({facet: int}) say so
explicitly (``result.stats["version"]``, an int, stands for every facet's
clustering version, as the re-clustering job writes it); without them a leaf id
ending in ``-l0-<int>`` (the pipelines' naming) is taken as that cluster, and
the store's current version of the facet is used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clio_stream.site.writer import write_site
from clio_stream.domain.clusters import ClioResult

log = logging.getLogger(__name__)

POINTER_FILE = "current"
POINTER_LOCK_FILE = ".current.lock"
VERSIONS_DIR = "versions"
RESULT_FILE = "result.json"
LINEAGE_FILE = "lineage.json"
META_FILE = "meta.json"
SITE_DIR = "site"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STALE_TMP_S = 3600.0


@dataclass
class PublishedVersion:
    """One published version as loaded from disk; ``cache`` lets readers memoise views of it."""

    version: str
    path: Path
    result: ClioResult
    lineage: dict[str, str]
    published_at: float | None
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def site_dir(self) -> Path:
        return self.path / SITE_DIR


def resolve_publish_dir(settings: Any) -> Path:
    """``settings.publish_dir``, or ``<cache_dir>/published`` when unset."""
    configured = getattr(settings, "publish_dir", None)
    if configured:
        return Path(configured).expanduser()
    return Path(getattr(settings, "cache_dir")).expanduser() / "published"


def check_version(version: str) -> str:
    """Version strings become folder names and URL parts: keep them to a safe alphabet."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"invalid version {version!r}: use 1-128 of [A-Za-z0-9._-], not starting with . - _")
    return version


def publish_version(
    result: ClioResult,
    publish_dir: str | Path,
    version: str,
    *,
    lineage: dict[str, str] | None = None,
    keep: int = 5,
    settings: Any,
) -> Path:
    """Write ``result`` as ``version`` (result.json, site, lineage), make it current, prune old versions.

    Returns the version folder. ``keep`` counts versions kept, the new one
    included; the current version is never pruned. (The clustering job writes
    the folder and flips the pointer as separate steps: ``clio_stream.living.versions``.)
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    final = write_version_folder(result, publish_dir, version, lineage=lineage, settings=settings)
    root = final.parent.parent
    _write_pointer(root, version)
    prune_versions(root, keep=keep)
    return final


def write_version_folder(
    result: ClioResult,
    publish_dir: str | Path,
    version: str,
    *,
    lineage: dict[str, str] | None = None,
    settings: Any,
) -> Path:
    """Build ``versions/<version>`` under a temporary name and rename it into place; the pointer is not touched.

    Raises ``FileExistsError`` if the version exists (versions are immutable).
    """
    check_version(version)
    root = Path(publish_dir).expanduser().absolute()
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / version
    if final.exists():
        raise FileExistsError(f"version {version} is already published; versions are immutable")
    tmp = versions / f".tmp-{version}-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    try:
        tmp.mkdir()
        _write_json(tmp / RESULT_FILE, result.model_dump(mode="json"))
        site = write_site(
            result, tmp / SITE_DIR,
            chunk_size=int(getattr(settings, "site_chunk_size", 100)),
            html_root=str(getattr(settings, "html_root", "") or ""),
            show_conversations=bool(getattr(settings, "show_conversations", True)),
        )
        if lineage is not None:
            _write_json(tmp / LINEAGE_FILE, {str(k): str(v) for k, v in lineage.items()})
        site_version = json.loads((site / "data" / "version.json").read_text())["version"]
        _write_json(tmp / META_FILE, {"version": version, "published_at": time.time(), "site_version": site_version})
        _fsync_dir(tmp)
        os.rename(tmp, final)  # fails if ``final`` appeared meanwhile: two publishers of one version
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(versions)
    log.info("wrote version folder %s in %.2fs", version, time.monotonic() - started)
    return final


def is_complete(publish_dir: str | Path, version: str) -> bool:
    """Whether ``versions/<version>`` is in place (folders appear only complete, by rename)."""
    return (Path(publish_dir).expanduser() / VERSIONS_DIR / check_version(version) / META_FILE).is_file()


def advance_pointer(publish_dir: str | Path, version: int) -> bool:
    """Make the numbered clustering ``version`` current unless a higher number already is; True if current now.

    The compare and the replace run under an ``flock`` of the publish folder, so two publishers (one of them
    late, having lost its lease) cannot move the pointer backwards.
    """
    import fcntl

    root = Path(publish_dir).expanduser().absolute()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / POINTER_LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        current = read_pointer(root)
        if current is not None and current.isdigit() and int(current) > int(version):
            log.warning("not publishing version %d: version %s is already current", version, current)
            return False
        if current != str(version):
            _write_pointer(root, str(version))
            log.info("published version %d", version)
    return True


def _write_json(path: Path, doc: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())


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


def _write_pointer(root: Path, version: str) -> None:
    tmp = root / f".{POINTER_FILE}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / POINTER_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(root)


def read_pointer(publish_dir: str | Path) -> str | None:
    """The current version string, or None before the first publish (or if the pointer is unreadable)."""
    try:
        text = (Path(publish_dir) / POINTER_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    try:
        return check_version(text)
    except ValueError:
        log.error("ignoring an invalid publish pointer in %s", publish_dir)
        return None


def list_versions(publish_dir: str | Path) -> list[str]:
    """Complete versions, oldest first (by publish time, then name)."""
    versions = Path(publish_dir) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    found: list[tuple[float, str]] = []
    for entry in versions.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        meta = _read_json(entry / META_FILE)
        when = float(meta["published_at"]) if isinstance(meta, dict) and "published_at" in meta else entry.stat().st_mtime
        found.append((when, entry.name))
    return [name for _, name in sorted(found)]


def prune_versions(publish_dir: str | Path, *, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions (never the current one) and stale temp folders."""
    root = Path(publish_dir)
    current = read_pointer(root)
    ordered = list_versions(root)
    keep_set = set(ordered[-keep:]) | ({current} if current else set())
    removed = []
    for name in ordered:
        if name not in keep_set:
            shutil.rmtree(root / VERSIONS_DIR / name, ignore_errors=True)
            removed.append(name)
    now = time.time()
    for entry in (root / VERSIONS_DIR).glob(".tmp-*"):
        try:
            if now - entry.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            continue
    if removed:
        log.info("pruned versions %s", ", ".join(removed))
    return removed


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


_cache_lock = threading.Lock()
_cache: dict[Path, tuple[tuple[int, int], PublishedVersion]] = {}
_paths: dict[str | Path, tuple[Path, str]] = {}  # publish_dir as given -> (resolved root, pointer path)


def load_current(publish_dir: str | Path) -> PublishedVersion | None:
    """The current version, loaded once per version: re-read only when the pointer file changes.

    Checking costs one ``stat`` of the pointer (``os.replace`` gives it a new
    inode), so callers may call this on every request.
    """
    root = Path(publish_dir).expanduser().absolute()
    pointer = root / POINTER_FILE
    try:
        st = pointer.stat()
    except FileNotFoundError:
        return None
    stamp = (st.st_ino, st.st_mtime_ns)
    hit = _cache.get(root)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    with _cache_lock:
        hit = _cache.get(root)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        version = read_pointer(root)
        if version is None:
            return hit[1] if hit else None
        if hit is not None and hit[1].version == version and hit[1].cache.get(_RESULT_STAMP) == _result_stamp(hit[1].path):
            _cache[root] = (stamp, hit[1])
            return hit[1]
        loaded = _load_version(root, version)
        if loaded is None:
            return hit[1] if hit else None
        _cache[root] = (stamp, loaded)
        return loaded


def read_lineage(publish_dir: str | Path, version: str) -> dict[str, str]:
    """The lineage map of one version ({} when it has none), without loading its result."""
    doc = _read_json(Path(publish_dir) / VERSIONS_DIR / check_version(version) / LINEAGE_FILE)
    return {str(k): str(v) for k, v in dict(doc or {}).items()}


def current_if_loaded(publish_dir: str | Path) -> PublishedVersion | None:
    """The cached current version if the pointer has not changed since it was loaded, else None.

    Only a ``stat``: lets async callers skip a thread hop on the hot path and
    call ``load_current`` (which may read files) off the event loop otherwise.
    """
    paths = _paths.get(publish_dir)
    if paths is None:
        root = Path(publish_dir).expanduser().absolute()
        paths = _paths[publish_dir] = (root, str(root / POINTER_FILE))
    hit = _cache.get(paths[0])
    if hit is None:
        return None
    try:
        st = os.stat(paths[1])
    except FileNotFoundError:
        return None
    return hit[1] if hit[0] == (st.st_ino, st.st_mtime_ns) else None


def load_version(publish_dir: str | Path, version: str) -> PublishedVersion | None:
    """A specific published version (uncached), or None if it is not there."""
    return _load_version(Path(publish_dir).expanduser().absolute(), check_version(version))


_RESULT_STAMP = "publish.result_stamp"


def _result_stamp(path: Path) -> tuple[int, int] | None:
    """Identity of a version's result.json: only a user deletion (clio_stream.deletion) replaces it in place."""
    try:
        st = (path / RESULT_FILE).stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _load_version(root: Path, version: str) -> PublishedVersion | None:
    path = root / VERSIONS_DIR / version
    stamp = _result_stamp(path)
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
    loaded = PublishedVersion(version=version, path=path, result=result,
                              lineage={str(k): str(v) for k, v in dict(lineage).items()},
                              published_at=meta.get("published_at"))
    loaded.cache[_RESULT_STAMP] = stamp
    return loaded
