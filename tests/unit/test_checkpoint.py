import numpy as np

from clio_stream.storage.checkpoint import Checkpoints, stable_hash


def test_resume_and_invalidate(tmp_path):
    ck = Checkpoints(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"v": np.arange(3)}

    a = ck.cached("stage", {"k": 1}, compute)
    b = Checkpoints(tmp_path).cached("stage", {"k": 1}, compute)  # a fresh run resumes
    assert len(calls) == 1 and np.array_equal(a["v"], b["v"])
    ck.cached("stage", {"k": 2}, compute)  # a changed key recomputes
    assert len(calls) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_checkpoint_is_recomputed(tmp_path):
    ck = Checkpoints(tmp_path)
    ck.cached("s", 1, lambda: 1)
    ck.path("s", 1).write_bytes(b"garbage")
    assert Checkpoints(tmp_path).cached("s", 1, lambda: 2) == 2


def test_stable_hash_sees_array_contents():
    assert stable_hash({"a": np.zeros(3)}) != stable_hash({"a": np.ones(3)})
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
