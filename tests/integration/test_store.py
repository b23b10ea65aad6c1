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
from clio_stream.storage.documents import SCHEDULER_STATE, SchedulerState
from clio_stream.storage.locks import LockLost
from clio_stream.storage.errors import StoreError, StoreUnavailable
from clio_stream.storage.records import ConversationRecord, FacetPoint, facet_point_id
from clio_stream.storage.store import QdrantStore

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
    store.points.upsert_facets(pts)
    assert store.points.count() == 6
    replay = [point(f"c{i}", f, value="again", seed=i * 10 + j)
              for i in range(3) for j, f in enumerate(["request", "task"])]
    store.points.upsert_facets(replay)
    assert store.points.count() == 6
    assert store.points.count(facet="task") == 3
    conv = store.points.get_conversation("c1")
    assert conv is not None and conv["facets"]["request"]["value"] == "again"
    assert conv["facets"]["request"]["id"] == facet_point_id("c1", "request")


def test_scroll_vectors_returns_everything_in_batches(store: QdrantStore) -> None:
    pts = [point(f"c{i}", "request", seed=i) for i in range(23)]
    store.points.upsert_facets(pts + [point("other", "task", seed=99)])
    batches = list(store.points.scroll_vectors("request", batch=10))
    assert [len(b[0]) for b in batches] == [10, 10, 3]
    ids = [i for b in batches for i in b[0]]
    vectors = np.concatenate([b[1] for b in batches])
    assert vectors.dtype == np.float32 and vectors.shape == (23, DIM)
    by_id = {p.id: np.asarray(p.vector) for p in pts}
    for pid, v, payload in zip(ids, vectors, [p for b in batches for p in b[2]]):
        np.testing.assert_allclose(v, by_id[pid], atol=1e-6)
        assert payload["facet"] == "request"


def test_cluster_members_paginate_with_cursor(store: QdrantStore) -> None:
    store.points.upsert_facets([point(f"a{i}", "request", cluster=1, seed=i) for i in range(25)]
                        + [point(f"b{i}", "request", cluster=2, seed=100 + i) for i in range(5)]
                        + [point(f"a{i}", "task", cluster=1, seed=200 + i) for i in range(4)])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        members, cursor = store.points.cluster_members("request", 1, limit=10, offset_cursor=cursor)
        pages += 1
        seen.extend(m["conversation_id"] for m in members)
        assert all(m["cluster_id"] == 1 and m["facet"] == "request" for m in members)
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 25
    assert store.points.count(facet="request", cluster_id=1) == 25
    assert store.points.count(facet="request", cluster_id=2, version=1) == 5
    assert store.points.count(facet="request", cluster_id=2, version=2) == 0
    members, cursor = store.points.cluster_members("request", 2, limit=10, version=1, with_vectors=True)
    assert len(members) == 5 and cursor is None and len(members[0]["vector"]) == DIM


def test_find_by_content_hash_reads_the_stored_values(store: QdrantStore) -> None:
    store.points.upsert_facets([point("done", "request", value="debug code", content_hash="H1"),
                         FacetPoint("done", "concerning", vec(5), value="1", numeric=1, user_hash="u1",
                                    content_hash="H1")])
    store.points.mark_conversations([
        ConversationRecord("done", "processed", user_hash="u1", timestamp=1.0, content_hash="H1"),
        ConversationRecord("half", "pending", user_hash="u1", timestamp=2.0, content_hash="H2"),
    ])
    want = {"request": {"value": "debug code", "numeric": None}, "concerning": {"value": "1", "numeric": 1}}
    assert store.points.find_by_content_hash("H1") == want
    assert store.points.find_by_content_hash("H2") is None  # marked pending, no answers stored yet
    assert store.points.find_by_content_hash("nope") is None
    # A redelivered batch marks the conversation pending again before processing: its answers still count.
    store.points.mark_conversations([ConversationRecord("done", "pending", user_hash="u1", content_hash="H1")])
    assert store.points.find_by_content_hash("H1") == want
    # A batch's lookups in one call: only the hashes with stored answers come back.
    store.points.upsert_facets([point("other", "request", value="pay rent", content_hash="H3")])
    assert store.points.find_by_content_hashes(["H1", "H2", "H3", "nope"]) == {
        "H1": want, "H3": {"request": {"value": "pay rent", "numeric": None}}}


def test_conversation_status_and_raw_policy(store: QdrantStore) -> None:
    raw = [{"role": "user", "content": "hi"}]
    store.points.mark_conversations([ConversationRecord("c1", "pending", user_hash="u1", raw=raw)])
    doc = store.points.get_conversation("c1")
    assert doc is not None and doc["status"] == "pending" and "raw" not in doc and doc["facets"] == {}
    store.keep_raw = True
    store.points.mark_conversations([ConversationRecord("c1", "processed", user_hash="u1", raw=raw)])
    store.points.upsert_facets([point("c1", "request")])
    doc = store.points.get_conversation("c1")
    assert doc is not None and doc["status"] == "processed" and doc["raw"] == raw
    assert set(doc["facets"]) == {"request"}
    assert store.points.get_conversation("missing") is None


def test_set_labels(store: QdrantStore) -> None:
    pts = [point(f"c{i}", "request", seed=i) for i in range(12)]
    store.points.upsert_facets(pts + [point("c0", "task", seed=50)])
    labels = {p.id: i % 3 for i, p in enumerate(pts)}
    labels[facet_point_id("deleted-meanwhile", "request")] = 0  # a vanished point is skipped, not fatal
    store.labels.write("request", labels, version=7)
    for c in range(3):
        assert store.points.count(facet="request", cluster_id=c, version=7) == 4
    assert store.points.count(facet="task", version=7) == 0  # another facet's point is untouched
    assert store.points.count() == 13
    # Per-point similarity and outlier flags.
    store.labels.write("request", {pts[0].id: 2}, version=8, similarities={pts[0].id: 0.25},
                     outliers={pts[0].id: True})
    facets = store.points.get_conversation("c0")["facets"]  # type: ignore[index]
    assert facets["request"]["cluster_id"] == 2 and facets["request"]["cluster_version"] == 8
    assert facets["request"]["similarity"] == pytest.approx(0.25) and facets["request"]["outlier"] is True
    assert facets["task"]["cluster_version"] is None


def test_state_round_trip(store: QdrantStore) -> None:
    assert store.states.get("nothing") is None
    doc = {"a": [1, 2.5, None, True], "nested": {"ü": "ß"}, "big": 2**53 - 1, "f": 0.1}
    store.states.put("k", doc)
    assert store.states.get("k") == doc
    store.states.put("k", {"replaced": 1})
    assert store.states.get("k") == {"replaced": 1}
    store.states.delete("k")
    assert store.states.get("k") is None
    # An online k-means state (k=200, d=768: ~800 kB of base64) for one facet and version.
    rng = np.random.default_rng(0)
    model = OnlineKMeans(normalise_rows(rng.standard_normal((200, 768))), version=3, facet="request")
    assert store.versions.get_centroids("request") is None
    store.versions.put_centroids("request", 3, model.to_state())
    store.versions.set_current_version("request", 3)
    assert store.versions.current_version("request") == 3
    back = OnlineKMeans.from_state(store.versions.get_centroids("request"))  # type: ignore[arg-type]
    np.testing.assert_array_equal(back.centroids, model.centroids)
    assert back.version == 3


def test_lock_exclusivity_renewal_expiry(store: QdrantStore) -> None:
    a = store.locks.acquire("recluster", "a", ttl_s=30)
    assert a is not None
    assert store.locks.acquire("recluster", "b", ttl_s=30) is None
    assert store.locks.renew("recluster", a, ttl_s=30)
    assert store.locks.owner("recluster") == "a"
    store.locks.check("recluster", a)
    assert not store.locks.release("recluster", "not-the-token")
    assert store.locks.acquire("recluster", "b", ttl_s=30) is None
    assert store.locks.release("recluster", a)
    assert store.locks.holder("recluster") is None
    with pytest.raises(LockLost):
        store.locks.check("recluster", a)
    b = store.locks.acquire("recluster", "b", ttl_s=0.3)
    assert b is not None
    assert store.locks.acquire("recluster", "a", ttl_s=30) is None
    time.sleep(0.5)  # b's lease runs out
    assert store.locks.acquire("recluster", "a", ttl_s=30) is not None
    assert not store.locks.renew("recluster", b, ttl_s=30)  # an expired, taken-over holding is never extended
    with pytest.raises(LockLost):
        store.locks.check("recluster", b)
    assert not store.locks.release("recluster", b)
    assert store.locks.owner("recluster") == "a"
    assert store.locks.acquire("other-lock", "b", ttl_s=30) is not None  # locks are independent


def test_lock_contention_single_winner(store: QdrantStore) -> None:
    if store.embedded:
        pytest.skip("the embedded engine is single-process; contention is a server property")
    for round_ in range(3):
        name = f"race-{round_}"
        results: dict[str, str | None] = {}
        barrier = threading.Barrier(6)

        def contend(owner: str) -> None:
            barrier.wait()
            results[owner] = store.locks.acquire(name, owner, ttl_s=30)

        threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        winners = [o for o, token in results.items() if token]
        assert len(results) == 6 and len(winners) == 1, results
        assert store.locks.owner(name) == winners[0]


def test_fenced_writes_never_go_backwards(store: QdrantStore) -> None:
    assert store.states.put_fenced("doc", {"by": 5}, fence=5)
    assert not store.states.put_fenced("doc", {"by": 4}, fence=4)  # a late writer with an older number
    assert store.states.get("doc") == {"by": 5}
    assert store.states.put_fenced("doc", {"by": 5, "again": True}, fence=5)  # the same writer may rewrite
    assert store.states.put_fenced("doc", {"by": 6}, fence=6) and store.states.get("doc") == {"by": 6}
    store.states.put("legacy", {"unfenced": True})  # written before fences existed
    assert store.states.put_fenced("legacy", {"by": 1}, fence=1)
    assert store.versions.set_current_version("request", 3) and not store.versions.set_current_version("request", 2)
    assert store.versions.current_version("request") == 3


def test_reserved_versions_are_never_handed_out_twice(store: QdrantStore) -> None:
    assert [store.versions.reserve() for _ in range(2)] == [1, 2]
    assert store.versions.reserve(floor=10) == 11 and store.versions.reserve(floor=3) == 12
    if store.embedded:
        return  # contention needs a server
    got: list[int] = []
    barrier = threading.Barrier(6)

    def reserve() -> None:
        barrier.wait()
        got.extend(store.versions.reserve() for _ in range(5))

    threads = [threading.Thread(target=reserve) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == len(set(got)) == 30 and min(got) > 12  # distinct; a contended number may be skipped


def test_labels_are_version_scoped(store: QdrantStore) -> None:
    pts = [point(f"c{i}", "request", seed=i) for i in range(6)]  # labelled cluster None
    store.points.upsert_facets(pts)
    store.labels.index(7)
    store.labels.write("request", {p.id: i % 2 for i, p in enumerate(pts)}, version=7)
    store.labels.index(8)
    store.labels.write("request", {p.id: 5 for p in pts[:4]}, version=8)
    assert [store.points.count(facet="request", cluster_id=c, version=7) for c in (0, 1)] == [3, 3]  # 7 still readable
    assert store.points.count(facet="request", cluster_id=5, version=8) == 4
    assert store.points.count(facet="request", version=8) == 4
    page, _ = store.points.cluster_members("request", 0, version=7)
    assert sorted(p["conversation_id"] for p in page) == ["c0", "c2", "c4"]
    missing = [pid for ids, _, _ in store.points.scroll_vectors("request", without_label=8) for pid in ids]
    assert sorted(missing) == sorted(p.id for p in pts[4:])
    store.labels.drop([7])
    assert store.points.count(facet="request", version=7) == 0 and store.points.count(facet="request", version=8) == 4
    store.points.upsert_facets([point("w", "request", cluster=3)])  # a worker's point carries its version's label
    assert store.points.count(facet="request", cluster_id=3, version=1) == 1


def test_pass_label_writes_select_by_id_and_skip_deleted_points(store: QdrantStore) -> None:
    """The assignment pass's write (no per-point extras, the version's field only, not waited for): ids alone
    select the points (one facet's), an id deleted meanwhile is skipped, the latest-label fields are left alone."""
    pts = [point(f"c{i}", "request", seed=i, cluster=9) for i in range(5)]
    other = point("c0", "language", seed=99)  # the same conversation's other facet
    store.points.upsert_facets([*pts, other])
    gone = facet_point_id("deleted", "request")
    store.labels.write("request", {p.id: i % 2 for i, p in enumerate(pts[:3])}, version=4, latest=False,
                       wait=False)
    store.labels.barrier()
    store.labels.write("request", {gone: 1, pts[3].id: 1, pts[4].id: 1}, version=4, latest=False)  # no error
    assert [store.points.count(facet="request", cluster_id=c, version=4) for c in (0, 1)] == [2, 3]
    assert store.points.count(facet="language", version=4) == 0
    assert store.points.count(facet="request", cluster_id=9) == 5  # cluster_id / cluster_version untouched


def test_the_assignment_pass_skips_empty_values_and_labels_the_rest(store: QdrantStore) -> None:
    """Values are tested by Qdrant's filter (the pass reads no value strings): "" and None are not assigned."""
    from clio_stream.living.assign_pass import run_shard
    from clio_stream.living.totals import ClusterTotals
    from clio_stream.storage.documents import AssignPlan

    pts = [point(f"c{i}", "request", seed=i) for i in range(40)]
    for p in pts[:3]:
        p.value = ""
    for p in pts[3:5]:
        p.value = None
    store.points.upsert_facets(pts)
    model = OnlineKMeans(np.stack([vec(1000 + c) for c in range(3)]).astype(np.float32), version=6, facet="request")
    store.versions.put_centroids("request", 6, model.to_state())
    plan = AssignPlan(version=6, facet="request", k=3, shards=1, page_size=16, trend_window_s=3600.0,
                      trend_windows=2)
    done = run_shard(store, plan, model, 0, "me", 30.0)
    assert done is not None and done.done and done.points == 35 and done.pages == 3
    assert store.points.count(facet="request", version=6) == 35
    unlabelled = {pid for ids, _, _ in store.points.scroll_vectors("request", without_label=6) for pid in ids}
    assert unlabelled == {p.id for p in pts[:5]}  # the five empty values, and only they, stay unlabelled
    assert int(ClusterTotals.from_doc(done.totals).counts.sum()) == 35


def test_delete_user_removes_exactly_that_user(store: QdrantStore) -> None:
    store.points.upsert_facets([point(f"x{i}", f, user="victim", seed=i * 3 + j)
                         for i in range(4) for j, f in enumerate(["request", "task"])]
                        + [point(f"y{i}", "request", user="keeper", seed=500 + i) for i in range(3)])
    store.points.mark_conversations([ConversationRecord(f"x{i}", "processed", user_hash="victim") for i in range(4)]
                             + [ConversationRecord(f"y{i}", "processed", user_hash="keeper") for i in range(3)])
    removed = store.points.delete_user("victim")
    assert removed == {store.facets: 8, store.conversations: 4}
    assert store.points.count(user_hash="victim") == 0
    assert store.points.count(user_hash="keeper") == 3 and store.points.count() == 3
    assert store.points.get_conversation("x0") is None
    kept = store.points.get_conversation("y0")
    assert kept is not None and kept["status"] == "processed"
    assert store.points.delete_user("victim") == {store.facets: 0, store.conversations: 0}


def test_unreachable_server_raises_store_unavailable() -> None:
    from clio_stream.devstack.processes import free_port

    st = QdrantStore(f"http://127.0.0.1:{free_port()}", grpc_port=free_port(), timeout_s=2)
    try:
        assert not st.health()
        with pytest.raises(StoreUnavailable):
            st.states.get("k")
        with pytest.raises(StoreUnavailable):
            st.points.upsert_facets([point("c", "f")])
    finally:
        st.close()
    http = QdrantStore(f"http://127.0.0.1:{free_port()}", prefer_grpc=False, timeout_s=2)
    try:
        with pytest.raises(StoreUnavailable):
            http.points.count()
    finally:
        http.close()


def test_reads_before_collections_exist_see_an_empty_store(qdrant_server, unique_name):
    from clio_stream.storage.store import QdrantStore

    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port, prefix=unique_name("fresh").replace("-", "_"))
    assert store.states.get("anything") is None
    assert store.points.count(facet="Request") == 0


def test_state_can_be_written_before_the_other_collections(qdrant_server, unique_name):
    from clio_stream.storage.store import QdrantStore

    store = QdrantStore(qdrant_server.url, grpc_port=qdrant_server.grpc_port,
                        prefix=unique_name("early").replace("-", "_"))
    store.states.write(SCHEDULER_STATE, SchedulerState(runs=0, updated_at=1.0))
    assert store.states.read(SCHEDULER_STATE) == SchedulerState(runs=0, updated_at=1.0)


@pytest.mark.parametrize("variant", ["server", "embedded"])
def test_qdrant_shard_number_shards_the_growing_collections(request: pytest.FixtureRequest, tmp_path: Path,
                                                            variant: str) -> None:
    """``qdrant_shard_number`` reaches Qdrant: the facet and conversation collections are created with that many
    shards, the state collection with one; the embedded engine (no shards) still works with the setting on."""
    from clio_stream.settings import ClioSettings
    from clio_stream.storage.qdrant import QdrantConnection

    prefix = f"t{uuid.uuid4().hex[:10]}"
    if variant == "server":
        server = _server_store(request, prefix)  # skips when there is no Qdrant binary
        server.close()
        handle = request.getfixturevalue("qdrant_server")
        url, grpc_port = handle.url, handle.grpc_port
    else:
        url, grpc_port = str(tmp_path / "qdrant"), None
    settings = ClioSettings(qdrant_url=url, qdrant_grpc_port=grpc_port, qdrant_prefix=prefix, qdrant_shard_number=3)
    assert QdrantConnection.options(settings)["layout"].shard_number == 3
    st = QdrantStore.from_settings(settings)
    try:
        st.ensure_collections(DIM)
        shards = {name: st.client.get_collection(name).config.params.shard_number
                  for name in (st.facets, st.conversations, st.state)}
        if variant == "server":
            assert shards == {st.facets: 3, st.conversations: 3, st.state: 1}
        pts = [point(f"c{i}", "request", seed=i) for i in range(40)]
        st.points.upsert_facets(pts)
        assert st.points.count(facet="request") == 40
        ids = [i for b in st.points.scroll_vectors("request", batch=7) for i in b[0]]
        assert ids == sorted(p.id for p in pts)  # id order across shards, which the sample and the pass rely on
    finally:
        st.close()
