"""Per-stage checkpoints keyed by what the stage depends on.

A stage's key is a hash of its inputs and of the settings that affect it, so
changing one setting invalidates exactly the stages downstream of it, and a
rerun after a crash resumes from the last finished stage. Files are written to
a temporary name and renamed into place, so a crash never leaves a half-written
checkpoint that a resume would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def stable_hash(obj: Any) -> str:
    """A short hash of a JSON-able structure (numpy arrays hashed by their bytes)."""
    h = hashlib.sha256()

    def default(o: Any) -> Any:
        try:
            import numpy as np

            if isinstance(o, np.ndarray):
                return {"ndarray": hashlib.sha256(np.ascontiguousarray(o).tobytes()).hexdigest(), "shape": o.shape}
        except ImportError:  # pragma: no cover
            pass
        if hasattr(o, "model_dump"):
            return o.model_dump(mode="json")
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        return repr(o)

    h.update(json.dumps(obj, sort_keys=True, default=default, ensure_ascii=False).encode())
    return h.hexdigest()[:20]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class Checkpoints:
    """Stage results on disk under ``directory``; ``None`` directory disables caching."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.hits: list[str] = []
        self.misses: list[str] = []

    def path(self, stage: str, key: Any) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{stage}-{stable_hash(key)}.pkl"

    def cached(self, stage: str, key: Any, compute: Callable[[], T]) -> T:
        """Load the stage's result for ``key`` if present, else compute and store it."""
        path = self.path(stage, key)
        if path is not None and path.exists():
            try:
                with path.open("rb") as f:
                    value = pickle.load(f)
                self.hits.append(stage)
                log.info("stage %s: resumed from checkpoint %s", stage, path.name)
                return value
            except Exception:
                log.warning("stage %s: checkpoint %s unreadable; recomputing", stage, path.name, exc_info=True)
        value = compute()
        self.misses.append(stage)
        if path is not None:
            atomic_write_bytes(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return value
