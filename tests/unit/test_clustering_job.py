"""The clustering job frame shared by bootstrap-clusters and the re-clustering job (embedded Qdrant)."""

from __future__ import annotations

import time

import pytest

import clio_stream.living.clustering_job as job_frame
from clio_stream.domain.facets import main_facets
from clio_stream.living.clustering_job import ClusteringLockBusy, NothingToCluster, fitted_labels, run_clustering_job
from clio_stream.living.job import recluster_once
from clio_stream.living.stored import load_stored
from clio_stream.living.versions import VersionWrite, committed
from clio_stream.storage.documents import CLUSTERING_LOCK
from clio_stream.stages.base_clusters import base_clusters
from clio_stream.storage.store import QdrantStore
from consumers.bootstrap import bootstrap_clustering
from tests.recluster_harness import job_settings, points
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

TREE = [f for f in main_facets if f.has_hierarchy]


@pytest.fixture
def world(tmp_path):
    emb = HashEmbedder()
    store = QdrantStore(":memory:")
    store.ensure_collections(emb.dim)
    return store, emb, tmp_path / "published"


def _plain_build(settings, seen):
    def build(stored, version):
        seen.append((version, sorted(stored.facets)))
        parts = []
        for name in stored.clusterable():
            labels, centres = base_clusters(stored.facets[name].vectors, settings)
            parts.append(fitted_labels(name, stored.facets[name], labels, centres, version))
        return VersionWrite(version=version, facets=parts), version
    return build


def test_the_lease_is_renewed_while_a_job_outlasts_its_ttl(world, monkeypatch):
    """One lock discipline: the bootstrap's scroll takes longer than the lease; the lease is renewed, not lost."""
    store, emb, _ = world
    store.points.upsert_facets(points(emb, 0, 24))
    settings = job_settings(recluster_lock_ttl_s=0.6)
    holders = []

    def slow_scroll(*args, **kwargs):
        holders.append(store.locks.holder(CLUSTERING_LOCK))
        time.sleep(1.5)  # > the TTL: without renewal the next fenced write would raise LockLost
        return load_stored(*args, **kwargs)

    monkeypatch.setattr(job_frame, "load_stored", slow_scroll)
    assert bootstrap_clustering(store, main_facets, settings) == 1
    assert holders[0].owner.startswith("bootstrap-")
    assert holders[0].expires_at - time.time() <= 0.6 + 0.1  # the settings' TTL, not an hour
    assert committed(store).version == 1 and committed(store).applied
    assert store.locks.holder(CLUSTERING_LOCK) is None


def test_bootstrap_then_recluster_share_one_version_sequence(world):
    store, emb, pub = world
    store.points.upsert_facets(points(emb, 0, 36))
    settings = job_settings()
    assert bootstrap_clustering(store, main_facets, settings) == 1
    report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    assert report is not None and report.version == 2
    seen = []
    assert run_clustering_job(store, "test", TREE, settings, _plain_build(settings, seen), publish_dir=pub) == 3
    assert seen == [(3, ["Request", "Task"])]
    assert all(store.versions.current_version(f.name) == 3 for f in TREE)


def test_a_busy_lock_stops_every_job_before_it_scrolls(world):
    store, emb, pub = world
    store.points.upsert_facets(points(emb, 0, 12))
    settings = job_settings()
    assert store.locks.acquire(CLUSTERING_LOCK, "someone-else", 60)
    seen = []
    with pytest.raises(ClusteringLockBusy, match="someone-else"):
        run_clustering_job(store, "test", TREE, settings, _plain_build(settings, seen))
    with pytest.raises(RuntimeError):
        bootstrap_clustering(store, main_facets, settings)
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub) is None
    assert seen == [] and committed(store) is None


def test_nothing_stored_reserves_no_version(world):
    store, emb, pub = world
    settings = job_settings()
    seen = []
    with pytest.raises(NothingToCluster):
        run_clustering_job(store, "test", TREE, settings, _plain_build(settings, seen))
    with pytest.raises(ValueError, match="stream some conversations first"):
        bootstrap_clustering(store, main_facets, settings)
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub) is None
    assert seen == []
    store.points.upsert_facets(points(emb, 0, 12))
    assert bootstrap_clustering(store, main_facets, settings) == 1  # no number was used up by the no-ops


def test_the_scroll_gives_unit_vectors_and_the_stored_conversations(world):
    store, emb, _ = world
    store.points.upsert_facets(points(emb, 0, 6))
    stored = load_stored(store, main_facets)
    assert stored.clusterable() == ["Request", "Task"]
    s = stored.facets["Request"]
    assert len(s.point_ids) == 6 and sorted(s.conversation_ids) == sorted(stored.conversations)
    assert abs(float((s.vectors ** 2).sum(axis=1).max()) - 1.0) < 1e-5
    conversations, values = stored.as_conversations(main_facets)
    assert [c.id for c in conversations] == sorted(stored.conversations)
    assert all(set(v.values) == {f.name for f in main_facets} for v in values)
    assert values[0].values["Request"].value == stored.conversations[conversations[0].id].values["Request"][0]
