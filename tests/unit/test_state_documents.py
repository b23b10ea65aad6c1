"""The typed state documents processes share: keys defined once, writers write models, readers skip misfits."""

from __future__ import annotations

import logging

import pytest

from clio_stream.storage.documents import (
    LAST_RUN,
    RECLUSTER_REQUEST,
    SCHEDULER_STATE,
    WORKER_METRICS,
    LastRun,
    ReclusterRequest,
    WorkerMetricsDoc,
    centroid_state_key,
    current_version_key,
    id_counter_key,
)
from clio_stream.storage.store import QdrantStore
from consumers.metrics import WorkerMetrics


@pytest.fixture
def store():
    s = QdrantStore(":memory:")
    s.ensure_collections(4)
    yield s
    s.close()


def test_keys_are_distinct_and_stable() -> None:
    keys = [LAST_RUN.key, RECLUSTER_REQUEST.key, SCHEDULER_STATE.key, WORKER_METRICS.of("w1").key,
            id_counter_key("Request").key, current_version_key("Request").key, centroid_state_key("Request", 3).key]
    assert len(set(keys)) == len(keys)
    # Stored documents outlive releases: these strings must never change.
    assert (LAST_RUN.key, RECLUSTER_REQUEST.key, WORKER_METRICS.of("w1").key) == (
        "recluster:last", "recluster_request", "worker:w1")
    assert centroid_state_key("Request", 3).key == "centroids/Request/v3"


def test_a_written_model_reads_back_equal(store: QdrantStore) -> None:
    request = ReclusterRequest(requested_at=12.5, requested_by="admin:k1", reason="new data")
    store.states.write(RECLUSTER_REQUEST, request)
    assert store.states.read(RECLUSTER_REQUEST) == request
    assert store.states.read(LAST_RUN) is None


def test_a_document_that_does_not_fit_is_skipped_with_a_log(store: QdrantStore, caplog) -> None:
    store.states.put(LAST_RUN.key, {"version": "not a number", "finished_at": 1.0})
    with caplog.at_level(logging.ERROR):
        assert store.states.read(LAST_RUN) is None
    assert any("recluster:last" in r.getMessage() and "LastRun" in r.getMessage() for r in caplog.records)


def test_a_writer_cannot_store_a_document_of_the_wrong_shape(store: QdrantStore) -> None:
    with pytest.raises(ValueError):
        store.states.write(LAST_RUN, {"finished_at": 1.0})  # type: ignore[arg-type]
    assert store.states.get(LAST_RUN.key) is None


def test_read_all_returns_the_fitting_documents_of_a_family_by_name(store: QdrantStore) -> None:
    store.states.write(WORKER_METRICS.of("a"), WorkerMetricsDoc(worker_id="a", processed=3))
    store.states.write(WORKER_METRICS.of("b"), WorkerMetricsDoc(worker_id="b", processed=5))
    store.states.put(WORKER_METRICS.of("broken").key, {"processed": 1})  # no worker_id
    store.states.write(LAST_RUN, LastRun(version=1, finished_at=2.0))  # another family
    docs = store.states.read_all(WORKER_METRICS)
    assert {name: d.processed for name, d in docs.items()} == {"a": 3, "b": 5}


def test_unknown_fields_from_a_newer_writer_are_ignored(store: QdrantStore) -> None:
    store.states.put(LAST_RUN.key, {"version": 4, "finished_at": 9.0, "added_later": [1, 2]})
    assert store.states.read(LAST_RUN) == LastRun(version=4, finished_at=9.0)


def test_id_counters_keep_integer_levels_through_json(store: QdrantStore) -> None:
    from clio_stream.storage.documents import IdCounters

    store.states.put_fenced(id_counter_key("Request").key, IdCounters.model_validate({"next": {"0": 7, "1": 2}}),
                            fence=1)
    assert store.states.read(id_counter_key("Request")).next == {0: 7, 1: 2}
    assert store.states.read_json(id_counter_key("Request")) == {"next": {"0": 7, "1": 2}}


def test_worker_metrics_document_carries_every_counter() -> None:
    metrics = WorkerMetrics("w1")
    metrics.add(processed=4, failed_batches=1)
    metrics.add_seconds(busy_seconds=2.0)
    metrics.set_drift({"Request": {"detected_at": 5.0}})
    doc = metrics.document()
    assert type(doc) is WorkerMetricsDoc and doc.worker_id == "w1"
    assert (doc.processed, doc.failed_batches, doc.conversations_per_s) == (4, 1, 2.0)
    assert doc.drift_detected_at("Request") == 5.0 and doc.drift_detected_at("Task") is None
    metrics.set_drift({})
    assert doc.drift == {"Request": {"detected_at": 5.0}}, "the document is a copy, not a view"
    assert metrics.snapshot()["processed"] == 4


def test_versions_counter_and_pointer(store: QdrantStore) -> None:
    assert store.versions.last_reserved() is None and store.versions.current_version("Request") is None
    assert store.versions.reserve(floor=3) == 4 and store.versions.reserve() == 5
    assert store.versions.last_reserved() == 5
    assert store.versions.set_current_version("Request", 5)
    assert not store.versions.set_current_version("Request", 4)  # fenced: never backwards
    assert store.versions.current_version("Request") == 5


def test_centroids_whose_header_does_not_fit_are_absent(store: QdrantStore, caplog) -> None:
    store.versions.put_centroids("Request", 2, {"format": "x", "k": 2, "dim": 4, "centroids": "..."})
    assert store.versions.get_centroids("Request", 2)["k"] == 2
    store.versions.put_centroids("Request", 3, {"centroids": "..."})
    with caplog.at_level(logging.ERROR):
        assert store.versions.get_centroids("Request", 3) is None


def test_lock_holder_is_typed(store: QdrantStore) -> None:
    token = store.locks.acquire("job", "me", ttl_s=30)
    holder = store.locks.holder("job")
    assert holder is not None and (holder.owner, holder.token) == ("me", token)
    assert holder.expires_at > holder.acquired_at
    assert store.locks.owner("job") == "me"
    assert store.locks.release("job", token) and store.locks.owner("job") is None
