"""Re-clustering over stored points (embedded Qdrant, scripted LLM): versions, labels, publish order, lock."""

import numpy as np
import pytest

from clio_stream.facets import main_facets
from clio_stream.publish import load_current, read_pointer
from clio_stream.recluster import LOCK_NAME, recluster_once
from clio_stream.settings import ClioSettings
from clio_stream.store import FacetPoint, QdrantStore

from .fakes import HashEmbedder, ScriptedLLM, sensible_script

TOPICS = ["cooking", "python", "travel", "poetry", "taxes", "gardening"]


def fill(store, emb, n=60, start=0):
    points = []
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        for f in main_facets:
            value = {"Request": f"The user's overall request for the assistant is to {topic} help {i % 3}",
                     "Task": f"The task is to {topic} task", "Language": "English", "Concerning": "1"}[f.name]
            vec = emb.encode([value])[0] if f.has_hierarchy else np.zeros(emb.dim, dtype=np.float32)
            points.append(FacetPoint(conversation_id=f"c{i}", facet=f.name, vector=vec, value=value,
                                     numeric=1 + i % 5 if f.numeric else None, user_hash=f"u{i % 15}"))
    store.upsert_facets(points)


@pytest.fixture
def setup(tmp_path):
    emb = HashEmbedder()
    store = QdrantStore(":memory:")
    store.ensure_collections(emb.dim)
    settings = ClioSettings(show_progress=False, n_name_description_samples_per_cluster=1, n_rename_samples=1,
                            n_categorize_samples=1, llm_max_retries=0, min_top_level_size=2,
                            min_cluster_users=1, min_cluster_conversations=1)
    return store, emb, settings, tmp_path / "published"


def test_recluster_publishes_a_complete_version(setup):
    store, emb, settings, pub = setup
    fill(store, emb)
    llm = ScriptedLLM(sensible_script)
    report = recluster_once(store, llm, emb, main_facets, settings, publish_dir=pub)
    assert report is not None and report.version == 1
    assert report.points == {"Request": 60, "Task": 60}
    assert read_pointer(pub) == "1" and load_current(pub).result.hierarchies["Request"].depth() >= 2
    for f in ("Request", "Task"):
        assert store.current_version(f) == 1 and store.get_centroids(f, 1)
        # every stored point carries a label of the new version
        assert store.count(facet=f, version=1) == 60
    # Stats come from the stored numeric facet.
    h = load_current(pub).result.hierarchies["Request"]
    assert all(n.numeric["Concerning"].count == n.size for n in h.nodes.values())
    assert store.lock_holder(LOCK_NAME) is None


def test_second_run_is_a_new_version_warm_started(setup):
    store, emb, settings, pub = setup
    fill(store, emb)
    llm = ScriptedLLM(sensible_script)
    recluster_once(store, llm, emb, main_facets, settings, publish_dir=pub)
    first = store.get_centroids("Request", 1)
    fill(store, emb, n=6, start=60)
    report = recluster_once(store, llm, emb, main_facets, settings, publish_dir=pub)
    assert report.version == 2 and read_pointer(pub) == "2"
    assert store.count(facet="Request", version=2) == 66
    assert first is not None and store.get_centroids("Request", 2)


def test_lock_held_elsewhere_skips(setup):
    store, emb, settings, pub = setup
    fill(store, emb, n=12)
    assert store.try_lock(LOCK_NAME, "someone-else", 60)
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub) is None
    assert read_pointer(pub) is None


def test_nothing_stored_is_a_no_op(setup):
    store, emb, settings, pub = setup
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub) is None
