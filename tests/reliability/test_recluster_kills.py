"""A real kill (``os._exit``: no ``finally``, no lease release) at every step of the clustering write path,
against a real Qdrant server.

For each step of ``clio_stream.living.versions.WRITE_STEPS`` (and, for the steps done once
per facet, also between the facets, and pages in the middle of the assignment pass) a re-clustering
process is started with
``CLIO_FAULT_AT=<step>#<n>:exit`` and dies there. Then, asked of the
readers: the last good version (or, after the commit, the new one) is served
by the store pointers, the publish pointer and the API alike, and the API lists
every stored conversation exactly once; the dead run's lease blocks the next run
only until it expires; and the next run succeeds, with the next version number,
served everywhere, 0 lost and 0 duplicated points.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

import pytest

from clio_stream.domain.facets import main_facets
from clio_stream.ops.faults import EXIT_CODE, EXIT_KIND, FAULT_ENV
from clio_stream.living.job import recluster_once
from clio_stream.storage.store import QdrantStore
from clio_stream.storage.documents import CLUSTERING_LOCK
from clio_stream.living.versions import (
    COMMITTED_STEPS,
    STEP_ASSIGN_PAGE,
    STEP_ASSIGN_PLAN,
    STEP_CATCH_UP,
    STEP_CENTROIDS,
    STEP_LABELS,
    STEP_RESERVE,
    STEP_STATES,
    STEP_STORE_POINTERS,
    WRITE_STEPS,
    committed,
)
from tests.recluster_harness import REPO, assert_complete, driver_argv, job_settings, points, served, worker_models
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

LOCK_TTL_S = 3.0  # the victim renews every second; its lease outlives it by at most this


# Steps the write path takes once per facet (the corpus has two hierarchy facets): killed the second time too,
# i.e. with one facet's part written and the other's not.
PER_FACET = (STEP_CENTROIDS, STEP_ASSIGN_PLAN, STEP_LABELS, STEP_STATES, STEP_STORE_POINTERS, STEP_CATCH_UP)
# The assignment pass writes labels page by page (66 points in pages of 16: 5 per facet): killed mid-facet too.
MID_PASS = [(STEP_ASSIGN_PAGE, 3), (STEP_ASSIGN_PAGE, 7)]
KILLS = [(step, 1) for step in WRITE_STEPS] + [(step, 2) for step in PER_FACET] + MID_PASS


def kill_at(step: str, nth: int, url: str, grpc_port: int, prefix: str, publish_dir: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, FAULT_ENV: f"{step}#{nth}:{EXIT_KIND}", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(driver_argv(url, grpc_port, prefix, publish_dir, LOCK_TTL_S), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("step", "nth"), KILLS)
def test_a_kill_at_any_step_leaves_a_good_version_served_and_the_next_run_succeeds(
    step, nth, qdrant_server, unique_name, tmp_path, reliability_report
) -> None:
    prefix = unique_name("rk").replace("-", "_")
    emb = HashEmbedder()
    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port, prefix=prefix, timeout_s=10)
    settings = job_settings(recluster_lock_ttl_s=LOCK_TTL_S)
    pub = tmp_path / "published"
    try:
        store.ensure_collections(emb.dim)
        store.points.upsert_facets(points(emb, 0, 60))
        first = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
        assert first is not None and first.version == 1
        store.points.upsert_facets(points(emb, 60, 6, worker_models(store)))  # a worker on version 1

        victim = kill_at(step, nth, qdrant_server.url, qdrant_server.grpc_port, prefix, pub)
        assert victim.returncode == EXIT_CODE, victim.stderr[-3000:]
        assert f"exiting at step {step}" in victim.stderr
        killed_at = time.monotonic()
        assert store.locks.holder(CLUSTERING_LOCK) is not None  # a kill releases nothing

        after = served(store, pub, settings)
        if step in COMMITTED_STEPS:
            assert committed(store).version == 2 and not committed(store).applied
            assert after.api in ("1", "2") and after.published == after.api
            assert all(v in (1, 2) for v in after.store.values())
        else:
            assert after.store == {f: 1 for f in after.store} and after.published == after.api == "1", after
        assert_complete(after, store)

        while store.locks.holder(CLUSTERING_LOCK) is not None:
            assert time.monotonic() - killed_at < 3 * LOCK_TTL_S, "the dead run's lease never expired"
            time.sleep(0.2)
        freed_after = time.monotonic() - killed_at
        report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
        assert report is not None
        expected = 2 if step == STEP_RESERVE else 3  # a reserved number is skipped, never reused
        assert report.version == expected
        final = served(store, pub, settings)
        assert final.store == {f: expected for f in final.store}
        assert final.published == final.api == str(expected)
        assert_complete(final, store)
        assert committed(store).applied and store.locks.holder(CLUSTERING_LOCK) is None
        reliability_report(step=f"{step}#{nth}", served_after_kill=after.api, store_after_kill=after.store,
                           lock_free_s_after_kill=round(freed_after, 2), next_version=report.version)
    finally:
        store.close()


def test_a_shard_process_killed_mid_pass_is_resumed_after_its_last_page(
    qdrant_server, unique_name, tmp_path, reliability_report
) -> None:
    """The pass split in two id ranges: a helper process (``clio-stream assign-shard``) takes shard 1 and is
    killed at its second page; the re-clustering job takes the shard over once the helper's lease lapses and
    resumes after the page it recorded, and the version it publishes lists every point exactly once."""
    import sys

    from clio_stream.living.assign_pass import STEP_ASSIGN_PAGE as PAGE
    from clio_stream.ops.faults import armed
    from clio_stream.storage.documents import assign_shard_key

    prefix = unique_name("rs").replace("-", "_")
    emb = HashEmbedder()
    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port, prefix=prefix, timeout_s=10)
    settings = job_settings(recluster_lock_ttl_s=LOCK_TTL_S, recluster_assign_shards=2)
    pub = tmp_path / "published"
    env = {**os.environ, FAULT_ENV: f"{PAGE}#2:{EXIT_KIND}", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "CLIO_QDRANT_URL": qdrant_server.url, "CLIO_QDRANT_GRPC_PORT": str(qdrant_server.grpc_port),
           "CLIO_QDRANT_PREFIX": prefix, "CLIO_RECLUSTER_LOCK_TTL_S": str(LOCK_TTL_S),
           "CLIO_USER_ID_HASH_KEY": "a-test-key-for-the-helper"}
    helper = None
    try:
        store.ensure_collections(emb.dim)
        store.points.upsert_facets(points(emb, 0, 66))
        helper = subprocess.Popen([sys.executable, "-m", "clio_stream.cli", "assign-shard", "--index", "1",
                                   "--wait", "60"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
        seen: dict[str, Any] = {}

        def let_the_helper_die_first(step: str) -> None:
            if step == PAGE and "helper" not in seen:  # the job's first page: wait for the helper's kill
                assert helper.wait(timeout=120) == EXIT_CODE, helper.stderr.read()[-3000:]
                seen["helper"] = store.states.read(assign_shard_key(1, "Request", 1))

        with armed(let_the_helper_die_first):
            report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
        assert report is not None and report.version == 1
        left = seen["helper"]
        assert left is not None and left.pages == 1 and not left.done and left.owner.startswith("assign-1")
        finished = store.states.read(assign_shard_key(1, "Request", 1))
        assert finished.done and finished.owner != left.owner and finished.pages > left.pages
        assert report.facets["Request"]["assign_points"] == 66  # nothing assigned twice, nothing missed
        final = served(store, pub, settings)
        assert final.api == "1"
        assert_complete(final, store)
        reliability_report(helper_pages_before_kill=left.pages, shard_pages=finished.pages,
                           points_assigned=report.facets["Request"]["assign_points"])
    finally:
        if helper is not None and helper.poll() is None:
            helper.kill()
        store.close()
