"""A fault at every step of the clustering write path (clio_stream.living.versions), in-process, embedded Qdrant.

For each step, and each time the path reaches it (once per facet for some), a
store error is raised there during the second re-clustering. Then, asked of the
readers (store pointers, publish pointer, the API's member pages): the last good
version is still served, complete (0 lost, 0 duplicated points), or, once the
fault came after the commit, the new version is; and the next run succeeds,
publishes the next number and serves every point exactly once.
The same with a real kill (``os._exit``) against a Qdrant server is in
tests/reliability/test_recluster_kills.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from clio_stream.ops.faults import InjectedFault, armed
from clio_stream.domain.facets import main_facets
from clio_stream.living.job import recluster_once
from clio_stream.storage.store import QdrantStore
from clio_stream.storage.documents import CLUSTERING_LOCK
from clio_stream.living.versions import (
    COMMITTED_STEPS,
    STEP_CENTROIDS,
    STEP_RESERVE,
    WRITE_STEPS,
    committed,
)
from tests.recluster_harness import assert_complete, job_settings, points, served, worker_models

from .fakes import HashEmbedder, ScriptedLLM, sensible_script


def run(world):
    store, emb, settings, pub = world
    return recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)


def trace(world) -> Counter:
    """How often one clean run reaches each step."""
    seen: Counter = Counter()
    with armed(lambda step: seen.update([step])):
        run(world)
    return seen


def test_every_step_is_reached(tmp_path):
    """The harness below is only as good as its step list: a clean run passes every step."""
    emb = HashEmbedder()
    store = QdrantStore(":memory:")
    store.ensure_collections(emb.dim)
    store.points.upsert_facets(points(emb, 0, 30))
    seen = trace((store, emb, job_settings(), tmp_path / "published"))
    assert set(seen) == set(WRITE_STEPS), seen


def fail_at(step: str, nth: int, world):
    """A hook raising at the ``nth`` time ``step`` is reached; also stores 3 conversations as a worker on the
    current version would, right after the scroll (they must not be lost either)."""
    store, emb, _, _ = world
    reached: Counter = Counter()

    def hook(s: str) -> None:
        reached.update([s])
        if s == STEP_CENTROIDS and reached[s] == 1:
            store.points.upsert_facets(points(emb, 66, 3, worker_models(store)))
        if s == step and reached[s] == nth:
            raise InjectedFault(f"injected at {step} #{nth}")

    return hook


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_store_error_at_any_step_keeps_a_good_version_served_and_the_next_run_succeeds(step, tmp_path):
    emb = HashEmbedder()
    ref_store = QdrantStore(":memory:")
    ref_store.ensure_collections(emb.dim)
    ref_store.points.upsert_facets(points(emb, 0, 60))
    occurrences = trace((ref_store, emb, job_settings(), tmp_path / "ref"))[step]
    assert occurrences >= 1
    for nth in range(1, occurrences + 1):
        world = _world(tmp_path / f"{step}-{nth}")
        store, emb, settings, pub = world
        with armed(fail_at(step, nth, world)), pytest.raises(InjectedFault):
            run(world)
        assert store.locks.holder(CLUSTERING_LOCK) is None  # an error (not a kill) releases the lease
        after = served(store, pub, settings)
        if step in COMMITTED_STEPS:
            assert committed(store).version == 2
            assert after.api in ("1", "2") and after.published == after.api
            assert all(v in (1, 2) for v in after.store.values())
        else:
            assert after.store == {f: 1 for f in after.store} and after.published == "1" and after.api == "1", after
        assert_complete(after, store)

        report = run(world)
        assert report is not None, (step, nth)
        expected = 2 if step == STEP_RESERVE else 3  # a reserved number is never reused, only skipped
        assert report.version == expected
        final = served(store, pub, settings)
        assert final.store == {f: expected for f in final.store} and final.published == final.api == str(expected)
        assert_complete(final, store)
        assert committed(store).applied and store.locks.holder(CLUSTERING_LOCK) is None


def _world(path):
    emb = HashEmbedder()
    store = QdrantStore(":memory:")
    store.ensure_collections(emb.dim)
    settings = job_settings()
    pub = path / "published"
    store.points.upsert_facets(points(emb, 0, 60))
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub).version == 1
    store.points.upsert_facets(points(emb, 60, 6, worker_models(store)))
    return store, emb, settings, pub


def test_the_scheduler_service_finishes_a_committed_version_without_waiting_for_a_run(tmp_path):
    """A job killed after its commit: the service's poll applies the version (the API switches) at once."""
    from clio_stream.living.service import ReclusterService
    from clio_stream.living.versions import STEP_PUBLISH_POINTER

    world = _world(tmp_path)
    store, emb, settings, pub = world
    with armed(fail_at(STEP_PUBLISH_POINTER, 1, world)), pytest.raises(InjectedFault):
        run(world)
    assert served(store, pub, settings).api == "1" and not committed(store).applied
    service = ReclusterService(settings, facets=main_facets, store=store, llm=ScriptedLLM(sensible_script),
                               embedder=emb, publish_dir=pub)
    assert service.recover() == 2
    now = served(store, pub, settings)
    assert now.store == {f: 2 for f in now.store} and now.published == now.api == "2"
    assert_complete(now, store)
    assert service.recover() is None and committed(store).applied  # nothing pending: one read, no lease
