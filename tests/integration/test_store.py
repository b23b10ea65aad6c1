"""QdrantStore against a real Qdrant server (gRPC) and against the embedded engine.

The server variant uses the session ``qdrant_server`` fixture (clio_stream.devstack
starts the binary); it is skipped with a note only when no binary can be had, and
fails when a binary is there but the server does not start. Each test works under its own collection prefix, so tests share one server.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from clio_stream.domain.vectors import normalise_rows
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.store import (
    ConversationRecord,
    FacetPoint,
    QdrantStore,
    LockLost,
    StoreError,
    StoreUnavailable,
    facet_point_id,
)

pytestmark = pytest.mark.integration

DIM = 8


def _server_store(request: pytest.FixtureRequest, prefix: str) -> QdrantStore:
    """The session server; skipped only when there is no Qdrant binary to run (a binary that fails to start
    is a failure: the store's server behaviour would go untested without anyone noticing)."""
    from clio_stream.devstack.binaries import BinaryUnavailable

    try:
        handle = request.getfixturevalue("qdrant_server")
    except BinaryUnavailable as exc:
        pytest.skip(f"server variant skipped: no Qdrant binary ({exc})")
    return QdrantStore(handle.url, grpc_port=handle.grpc_port, prefix=prefix, prefer_grpc=True, timeout_s=10)


@pytest.fixture(params=["server", "embedded"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QdrantStore]:
    """A fresh store with collections of dimension ``DIM``."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "server":
        st = _server_store(request, prefix)
    else:
        st = QdrantStore(str(tmp_path / "qdrant"), prefix=prefix)
    st.ensure_collections(DIM)
    try:
        yield st
    finally:
        st.close()


def vec(seed: int) -> np.ndarray:
    return normalise_rows(np.random.default_rng(seed).standard_normal(DIM))


def point(cid: str, facet: str, *, user: str = "u1", cluster: int | None = None, value: str = "v",
          content_hash: str | None = None, seed: int | None = None) -> FacetPoint:
    return FacetPoint(
        conversation_id=cid, facet=facet, vector=vec(seed if seed is not None else hash((cid, facet)) % 10_000),
        value=value, numeric=None, user_hash=user, timestamp=1_700_000_000.0, cluster_id=cluster,
        cluster_version=1 if cluster is not None else None, similarity=0.9, outlier=False,
        content_hash=content_hash or f"h-{cid}",
    )


# --------------------------------------------------------------------------- tests


def test_health_and_idempotent_schema(store: QdrantStore) -> None:
    assert store.health()
    store.ensure_collections(DIM)  # second call: no error, nothing changes
    with pytest.raises(StoreError, match="8-d"):
        store.ensure_collections(DIM + 1)


def test_replayed_upsert_does_not_duplicate(store: QdrantStore) -> None:
    pts = [point(f"c{i}", f, seed=i * 10 + j) for i in range(3) for j, f in enumerate(["request", "task"])]
    store.upsert_facets(pts)
    assert store.count() == 6
    replay = [point(f"c{i}", f, value="again", seed=i * 10 + j)
              for i in range(3) for j, f in enumerate(["request", "task"])]
    store.upsert_facets(replay)
    assert store.count() == 6
    assert store.count(facet="task") == 3
    conv = store.get_conversation("c1")
    assert conv is not None and conv["facets"]["request"]["value"] == "again"
    assert conv["facets"]["request"]["id"] == facet_point_id("c1", "request")


def test_scroll_vectors_returns_everything_in_batches(store: QdrantStore) -> None:
    pts = [point(f"c{i}", "request", seed=i) for i in range(23)]
    store.upsert_facets(pts + [point("other", "task", seed=99)])
    batches = list(store.scroll_vectors("request", batch=10))
    assert [len(b[0]) for b in batches] == [10, 10, 3]
    ids = [i for b in batches for i in b[0]]
    vectors = np.concatenate([b[1] for b in batches])
    assert vectors.dtype == np.float32 and vectors.shape == (23, DIM)
    by_id = {p.id: np.asarray(p.vector) for p in pts}
    for pid, v, payload in zip(ids, vectors, [p for b in batches for p in b[2]]):
        np.testing.assert_allclose(v, by_id[pid], atol=1e-6)
        assert payload["facet"] == "request"


def test_cluster_members_paginate_with_cursor(store: QdrantStore) -> None:
    store.upsert_facets([point(f"a{i}", "request", cluster=1, seed=i) for i in range(25)]
                        + [point(f"b{i}", "request", cluster=2, seed=100 + i) for i in range(5)]
                        + [point(f"a{i}", "task", cluster=1, seed=200 + i) for i in range(4)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        members, cursor = store.cluster_members("request", 1, limit=10, offset_cursor=cursor)
        pages += 1
        seen.extend(m["conversation_id"] for m in members)
        assert all(m["cluster_id"] == 1 and m["facet"] == "request" for m in members)
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 25
    assert store.count(facet="request", cluster_id=1) == 25
    assert store.count(facet="request", cluster_id=2, version=1) == 5
    assert store.count(facet="request", cluster_id=2, version=2) == 0
    members, cursor = store.cluster_members("request", 2, limit=10, version=1, with_vectors=True)
    assert len(members) == 5 and cursor is None and len(members[0]["vector"]) == DIM


def test_find_by_content_hash_reads_the_stored_values(store: QdrantStore) -> None:
    store.upsert_facets([point("done", "request", value="debug code", content_hash="H1"),
                         FacetPoint("done", "concerning", vec(5), value="1", numeric=1, user_hash="u1",
                                    content_hash="H1")])
    store.mark_conversations([
        ConversationRecord("done", "processed", user_hash="u1", timestamp=1.0, content_hash="H1"),
        ConversationRecord("half", "pending", user_hash="u1", timestamp=2.0, content_hash="H2"),
    ])
    want = {"request": {"value": "debug code", "numeric": None}, "concerning": {"value": "1", "numeric": 1}}
    assert store.find_by_content_hash("H1") == want
    assert store.find_by_content_hash("H2") is None  # marked pending, no answers stored yet
    assert store.find_by_content_hash("nope") is None
    # A redelivered batch marks the conversation pending again before processing: its answers still count.
    store.mark_conversations([ConversationRecord("done", "pending", user_hash="u1", content_hash="H1")])
    assert store.find_by_content_hash("H1") == want


def test_conversation_status_and_raw_policy(store: QdrantStore) -> None:
    raw = [{"role": "user", "content": "hi"}]
    store.mark_conversations([ConversationRecord("c1", "pending", user_hash="u1", raw=raw)])
    doc = store.get_conversation("c1")
    assert doc is not None and doc["status"] == "pending" and "raw" not in doc and doc["facets"] == {}
    store.keep_raw = True
    store.mark_conversations([ConversationRecord("c1", "processed", user_hash="u1", raw=raw)])
    store.upsert_facets([point("c1", "request")])
    doc = store.get_conversation("c1")
    assert doc is not None and doc["status"] == "processed" and doc["raw"] == raw
    assert set(doc["facets"]) == {"request"}
    assert store.get_conversation("missing") is None


def test_set_labels(store: QdrantStore) -> None:
    pts = [point(f"c{i}", "request", seed=i) for i in range(12)]
    store.upsert_facets(pts + [point("c0", "task", seed=50)])
    labels = {p.id: i % 3 for i, p in enumerate(pts)}
    labels[facet_point_id("deleted-meanwhile", "request")] = 0  # a vanished point is skipped, not fatal
    store.set_labels("request", labels, version=7)
    for c in range(3):
        assert store.count(facet="request", cluster_id=c, version=7) == 4
    assert store.count(facet="task", version=7) == 0  # another facet's point is untouched
    assert store.count() == 13
    # Per-point similarity and outlier flags.
    store.set_labels("request", {pts[0].id: 2}, version=8, similarities={pts[0].id: 0.25},
                     outliers={pts[0].id: True})
    facets = store.get_conversation("c0")["facets"]  # type: ignore[index]
    assert facets["request"]["cluster_id"] == 2 and facets["request"]["cluster_version"] == 8
    assert facets["request"]["similarity"] == pytest.approx(0.25) and facets["request"]["outlier"] is True
    assert facets["task"]["cluster_version"] is None


def test_state_round_trip(store: QdrantStore) -> None:
    assert store.get_state("nothing") is None
    doc = {"a": [1, 2.5, None, True], "nested": {"ü": "ß"}, "big": 2**53 - 1, "f": 0.1}
    store.put_state("k", doc)
    assert store.get_state("k") == doc
    store.put_state("k", {"replaced": 1})
    assert store.get_state("k") == {"replaced": 1}
    store.delete_state("k")
    assert store.get_state("k") is None
    # An online k-means state (k=200, d=768: ~800 kB of base64) for one facet and version.
    rng = np.random.default_rng(0)
    model = OnlineKMeans(normalise_rows(rng.standard_normal((200, 768))), version=3, facet="request")
    assert store.get_centroids("request") is None
    store.put_centroids("request", 3, model.to_state())
    store.set_current_version("request", 3)
    assert store.current_version("request") == 3
    back = OnlineKMeans.from_state(store.get_centroids("request"))  # type: ignore[arg-type]
    np.testing.assert_array_equal(back.centroids, model.centroids)
    assert back.version == 3


def test_lock_exclusivity_renewal_expiry(store: QdrantStore) -> None:
    a = store.acquire_lock("recluster", "a", ttl_s=30)
    assert a is not None
    assert store.acquire_lock("recluster", "b", ttl_s=30) is None
    assert store.renew_lock("recluster", a, ttl_s=30)
    assert store.lock_holder("recluster")["owner"] == "a"  # type: ignore[index]
    store.check_lock("recluster", a)
    assert not store.release_lock("recluster", "not-the-token")
    assert store.acquire_lock("recluster", "b", ttl_s=30) is None
    assert store.release_lock("recluster", a)
    assert store.lock_holder("recluster") is None
    with pytest.raises(LockLost):
        store.check_lock("recluster", a)
    b = store.acquire_lock("recluster", "b", ttl_s=0.3)
    assert b is not None
    assert store.acquire_lock("recluster", "a", ttl_s=30) is None
    time.sleep(0.5)  # b's lease runs out
    assert store.acquire_lock("recluster", "a", ttl_s=30) is not None
    assert not store.renew_lock("recluster", b, ttl_s=30)  # an expired, taken-over holding is never extended
    with pytest.raises(LockLost):
        store.check_lock("recluster", b)
    assert not store.release_lock("recluster", b)
    assert store.lock_holder("recluster")["owner"] == "a"  # type: ignore[index]
    assert store.acquire_lock("other-lock", "b", ttl_s=30) is not None  # locks are independent


def test_lock_contention_single_winner(store: QdrantStore) -> None:
    if store.embedded:
        pytest.skip("the embedded engine is single-process; contention is a server property")
    for round_ in range(3):
        name = f"race-{round_}"
        results: dict[str, str | None] = {}
        barrier = threading.Barrier(6)

        def contend(owner: str) -> None:
            barrier.wait()
            results[owner] = store.acquire_lock(name, owner, ttl_s=30)

        threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        winners = [o for o, token in results.items() if token]
        assert len(results) == 6 and len(winners) == 1, results
        assert store.lock_holder(name)["owner"] == winners[0]  # type: ignore[index]


def test_fenced_writes_never_go_backwards(store: QdrantStore) -> None:
    assert store.put_fenced("doc", {"by": 5}, fence=5)
    assert not store.put_fenced("doc", {"by": 4}, fence=4)  # a late writer with an older number
    assert store.get_state("doc") == {"by": 5}
    assert store.put_fenced("doc", {"by": 5, "again": True}, fence=5)  # the same writer may rewrite
    assert store.put_fenced("doc", {"by": 6}, fence=6) and store.get_state("doc") == {"by": 6}
    store.put_state("legacy", {"unfenced": True})  # written before fences existed
    assert store.put_fenced("legacy", {"by": 1}, fence=1)
    assert store.set_current_version("request", 3) and not store.set_current_version("request", 2)
    assert store.current_version("request") == 3


def test_reserved_versions_are_never_handed_out_twice(store: QdrantStore) -> None:
    assert [store.reserve_version() for _ in range(2)] == [1, 2]
    assert store.reserve_version(floor=10) == 11 and store.reserve_version(floor=3) == 12
    if store.embedded:
        return  # contention needs a server
    got: list[int] = []
    barrier = threading.Barrier(6)

    def reserve() -> None:
        barrier.wait()
        got.extend(store.reserve_version() for _ in range(5))

    threads = [threading.Thread(target=reserve) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == len(set(got)) == 30 and min(got) > 12  # distinct; a contended number may be skipped


def test_labels_are_version_scoped(store: QdrantStore) -> None:
    pts = [point(f"c{i}", "request", seed=i) for i in range(6)]  # labelled cluster None
    store.upsert_facets(pts)
    store.index_labels(7)
    store.set_labels("request", {p.id: i % 2 for i, p in enumerate(pts)}, version=7)
    store.index_labels(8)
    store.set_labels("request", {p.id: 5 for p in pts[:4]}, version=8)
    assert [store.count(facet="request", cluster_id=c, version=7) for c in (0, 1)] == [3, 3]  # 7 still readable
    assert store.count(facet="request", cluster_id=5, version=8) == 4 and store.count(facet="request", version=8) == 4
    page, _ = store.cluster_members("request", 0, version=7)
    assert sorted(p["conversation_id"] for p in page) == ["c0", "c2", "c4"]
    missing = [pid for ids, _, _ in store.scroll_vectors("request", without_label=8) for pid in ids]
    assert sorted(missing) == sorted(p.id for p in pts[4:])
    store.drop_labels([7])
    assert store.count(facet="request", version=7) == 0 and store.count(facet="request", version=8) == 4
    store.upsert_facets([point("w", "request", cluster=3)])  # a worker's point carries its version's label
    assert store.count(facet="request", cluster_id=3, version=1) == 1


def test_delete_user_removes_exactly_that_user(store: QdrantStore) -> None:
    store.upsert_facets([point(f"x{i}", f, user="victim", seed=i * 3 + j)
                         for i in range(4) for j, f in enumerate(["request", "task"])]
                        + [point(f"y{i}", "request", user="keeper", seed=500 + i) for i in range(3)])
    store.mark_conversations([ConversationRecord(f"x{i}", "processed", user_hash="victim") for i in range(4)]
                             + [ConversationRecord(f"y{i}", "processed", user_hash="keeper") for i in range(3)])
    removed = store.delete_user("victim")
    assert removed == {store.facets: 8, store.conversations: 4}
    assert store.count(user_hash="victim") == 0
    assert store.count(user_hash="keeper") == 3 and store.count() == 3
    assert store.get_conversation("x0") is None
    kept = store.get_conversation("y0")
    assert kept is not None and kept["status"] == "processed"
    assert store.delete_user("victim") == {store.facets: 0, store.conversations: 0}


def test_unreachable_server_raises_store_unavailable() -> None:
    from clio_stream.devstack.processes import free_port

    st = QdrantStore(f"http://127.0.0.1:{free_port()}", grpc_port=free_port(), timeout_s=2)
    try:
        assert not st.health()
        with pytest.raises(StoreUnavailable):
            st.get_state("k")
        with pytest.raises(StoreUnavailable):
            st.upsert_facets([point("c", "f")])
    finally:
        st.close()
    http = QdrantStore(f"http://127.0.0.1:{free_port()}", prefer_grpc=False, timeout_s=2)
    try:
        with pytest.raises(StoreUnavailable):
            http.count()
    finally:
        http.close()


def test_reads_before_collections_exist_see_an_empty_store(qdrant_server, unique_name):
    from clio_stream.store import QdrantStore

    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port, prefix=unique_name("fresh").replace("-", "_"))
    assert store.get_state("anything") is None
    assert store.count(facet="Request") == 0


def test_state_can_be_written_before_the_other_collections(qdrant_server, unique_name):
    from clio_stream.store import QdrantStore

    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port,
                        prefix=unique_name("early").replace("-", "_"))
    store.put_state("scheduler", {"runs": 0})
    assert store.get_state("scheduler") == {"runs": 0}
