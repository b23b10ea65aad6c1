"""``process_batch``: the streaming core with a scripted LLM, a hash embedder and an in-memory Qdrant."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import numpy as np
import pytest

from clio_stream.domain.facets import CONCERNING, REQUEST, TASK
from clio_stream.streaming.wire_format import encode_message
from clio_stream.privacy.users import keyed_user_hash
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import facet_point_id
from clio_stream.storage.store import QdrantStore
from consumers.bootstrap import bootstrap_clustering
from consumers.centroids import SharedCentroids
from consumers.decoding import Record, decode_records, offset_ranges
from consumers.deltas_io import ReceivedDelta, encode_deltas, receive
from consumers.llm_guard import LLMUnavailable
from consumers.processing import BatchOutcome, process_batch
from consumers.status_records import pending_records
from consumers.producing import record_to_message
from consumers.health import backoff_delay
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

FACETS = [REQUEST, CONCERNING]
TOPIC = "clio.conversations"


def conv_msg(cid: str, text: str, user: str | None = "u1", **extra: object) -> dict:
    return {"id": cid, "user_id": user, "conversation": [{"role": "user", "content": text},
                                                         {"role": "assistant", "content": "Sure, here you go."}],
            **extra}


def records(values: list[bytes], partition: int = 0, start: int = 0) -> list[Record]:
    return [Record(TOPIC, partition, start + i, None, v) for i, v in enumerate(values)]


@pytest.fixture
def settings() -> ClioSettings:
    return ClioSettings(max_message_bytes=4096, user_id_hash_key="k", show_progress=False, n_base_clusters=lambda n: 2)


@pytest.fixture
def store() -> Iterator[QdrantStore]:
    s = QdrantStore(":memory:", keep_raw=True)
    s.ensure_collections(HashEmbedder.dim)
    yield s
    s.close()


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM(sensible_script)


def run(recs: list[Record], llm: ScriptedLLM, store: QdrantStore, settings: ClioSettings,
        models: dict | None = None, facets: list = FACETS) -> BatchOutcome:
    return process_batch(recs, facets=facets, llm=llm, embedder=HashEmbedder(), store=store.points, models=models or {},
                         settings=settings)


def write(outcome: BatchOutcome, store: QdrantStore) -> None:
    """What the worker does with an outcome (the Qdrant part)."""
    store.points.upsert_facets(outcome.facet_points)
    store.points.mark_conversations(outcome.conversations)


def test_bad_records_become_dead_letters_and_the_good_ones_around_them_are_processed(llm, store, settings) -> None:
    values = [
        encode_message(conv_msg("good-1", "How do I reset my online banking password?")),
        b"\xc1 definitely not msgpack",
        encode_message({"user_id": "u", "conversation": [{"role": "user", "content": "hi"}]}),
        encode_message({"id": "bad-role", "conversation": [{"role": "wizard", "content": "hi"}]}),
        encode_message(conv_msg("too-big", "x" * 5000)),
        encode_message({"id": "blank", "conversation": [{"role": "user", "content": "   "}]}),
        encode_message(conv_msg("good-2", "Why was my card declined at the shop today?")),
    ]
    out = run(records(values), llm, store, settings)
    assert sorted(c.conversation_id for c in out.conversations) == ["good-1", "good-2"]
    assert len(out.facet_points) == 2 * len(FACETS)
    reasons = {d.record.offset: (d.code, d.reason) for d in out.dead_letters}
    assert set(reasons) == {1, 2, 3, 4, 5}
    assert reasons[1][0] == "not_msgpack"
    assert reasons[2] == ("bad_id", "missing id")
    assert reasons[3][0] == "unknown_role" and "wizard" in reasons[3][1]
    assert reasons[4][0] == "too_large" and "4096" in reasons[4][1]
    assert reasons[5][0] == "empty_conversation"
    assert out.offsets == {(TOPIC, 0): (0, 6)}
    assert out.llm_calls == 1 and out.llm_prompts == 2 * len(FACETS)


def test_prompts_of_one_conversation_are_adjacent_in_one_call(store, settings) -> None:
    seen: list[list[str]] = []

    class Recording(ScriptedLLM):
        def generate(self, prompts, sampling, *, seed=None, desc=None):
            seen.append([p.values["conversation"] for p in prompts])
            return super().generate(prompts, sampling, seed=seed, desc=desc)

    values = [encode_message(conv_msg(f"c{i}", f"Question number {i} about loans")) for i in range(3)]
    run(records(values), Recording(sensible_script), store, settings, facets=[REQUEST, TASK, CONCERNING])
    assert len(seen) == 1 and len(seen[0]) == 9
    texts = seen[0]
    assert all(texts[3 * i] == texts[3 * i + 1] == texts[3 * i + 2] for i in range(3))
    assert len(set(texts)) == 3


def test_duplicate_ids_in_a_batch_keep_the_last(llm, store, settings) -> None:
    values = [encode_message(conv_msg("dup", "first version of the question")),
              encode_message(conv_msg("other", "a different question")),
              encode_message(conv_msg("dup", "second version of the question"))]
    out = run(records(values), llm, store, settings)
    assert out.duplicates == 1 and out.processed == 2
    dup = next(c for c in out.conversations if c.conversation_id == "dup")
    assert dup.raw[0]["content"] == "second version of the question"
    assert dup.extra["source"]["offset"] == 2
    ids = [p.id for p in out.facet_points]
    assert len(ids) == len(set(ids)) == 2 * len(FACETS)


def test_identical_content_reuses_stored_facets_without_an_llm_call(llm, store, settings) -> None:
    first = run(records([encode_message(conv_msg("orig", "Can I get a refund for a double charge?"))]),
                llm, store, settings)
    write(first, store)
    llm.calls.clear()
    again = run(records([encode_message(conv_msg("copy", "Can I get a refund for a double charge?", user="u2"))],
                        start=1), llm, store, settings)
    assert llm.calls == [] and again.llm_calls == 0 and again.reused_by_hash == 1
    before = {p.facet: (p.value, p.numeric) for p in first.facet_points}
    after = {p.facet: (p.value, p.numeric) for p in again.facet_points}
    assert after == before
    assert {p.conversation_id for p in again.facet_points} == {"copy"}
    assert again.conversations[0].user_hash == keyed_user_hash("u2", "k")


def test_identical_content_within_a_batch_is_asked_once(llm, store, settings) -> None:
    values = [encode_message(conv_msg(f"same-{i}", "How long does a transfer take?", user=f"u{i}"))
              for i in range(3)]
    out = run(records(values), llm, store, settings)
    assert out.processed == 3 and out.reused_by_hash == 2
    assert len(llm.calls) == len(FACETS)
    assert len({p.value for p in out.facet_points if p.facet == "Request"}) == 1


def test_unassigned_before_a_clustering_exists(llm, store, settings) -> None:
    values = [encode_message(conv_msg(f"c{i}", f"Topic{i} question about accounts")) for i in range(4)]
    out = run(records(values), llm, store, settings)
    assert out.deltas == [] and out.assigned == {}
    assert all(p.cluster_id is None and p.cluster_version is None for p in out.facet_points)
    request = [p for p in out.facet_points if p.facet == "Request"]
    assert all(abs(float(np.linalg.norm(p.vector)) - 1.0) < 1e-5 for p in request)
    # A facet without summary criteria is stored with the "not embedded" zero vector.
    assert all(not np.any(p.vector) for p in out.facet_points if p.facet == "Concerning")
    assert all(p.numeric in range(1, 6) for p in out.facet_points if p.facet == "Concerning")
    point = next(p for p in out.facet_points if p.conversation_id == "c0" and p.facet == "Request")
    assert point.id == facet_point_id("c0", "Request")
    assert point.user_hash == keyed_user_hash("u1", "k")


def test_assigned_after_a_clustering_is_published(llm, store, settings) -> None:
    topics = ["cards", "loans", "cards", "loans", "cards", "loans"]
    first = run(records([encode_message(conv_msg(f"c{i}", f"{t} question {i}")) for i, t in enumerate(topics)]),
                llm, store, settings)
    write(first, store)
    version = bootstrap_clustering(store, FACETS, settings)
    assert version == 1 and store.versions.current_version("Request") == 1
    assert store.versions.current_version("Concerning") is None
    labelled, _ = store.points.cluster_members("Request", 0, version=1)
    labelled2, _ = store.points.cluster_members("Request", 1, version=1)
    assert len(labelled) + len(labelled2) == len(topics)

    shared = SharedCentroids(["Request"], HashEmbedder.dim)
    assert shared.refresh(store.versions) == ["Request"]
    model = shared.models["Request"]
    counts_before = model.counts.copy()
    recs = records([encode_message(conv_msg("n1", "cards question new")),
                    encode_message(conv_msg("n2", "loans question new"))], partition=3, start=40)
    out = run(recs, llm, store, settings, models=shared.models)
    request = [p for p in out.facet_points if p.facet == "Request"]
    assert all(p.cluster_id in (0, 1) and p.cluster_version == 1 and p.similarity is not None for p in request)
    assert all(p.cluster_id is None for p in out.facet_points if p.facet == "Concerning")
    assert out.assigned == {"Request": 2}
    # One delta per (partition, facet), naming the polled range and each record's offset.
    (d,) = out.deltas
    assert (d.facet, d.version, d.topic, d.partition, d.first, d.last) == ("Request", 1, TOPIC, 3, 40, 41)
    assert d.offsets.tolist() == [40, 41]
    assert np.array_equal(model.counts, counts_before)  # the model moves only when deltas are applied
    assert shared.apply(through_topic(out.deltas)).records == 2
    assert shared.apply(through_topic(out.deltas)).records == 0
    assert int(model.counts.sum()) == int(counts_before.sum()) + 2


def test_a_redelivery_over_another_range_counts_each_record_once(llm, store, settings) -> None:
    """Batch [0..9] applied, its commit lost, then a redelivery [5..14] polled by a worker whose centroids
    already moved: the centroids equal a replay from scratch of the stored points, each record once."""
    shared = clustered(llm, store, settings)
    model = shared.models["Request"]
    base_sums = model.centroids.astype(np.float64) * model.counts[:, None]
    base_counts = model.counts.copy()
    topics = ["cards", "loans", "savings", "cards", "loans"]
    recs = records([encode_message(conv_msg(f"r{i}", f"{topics[i % 5]} question redelivered {i}"))
                    for i in range(15)], partition=1)
    first = run(recs[:10], llm, store, settings, models=shared.models)
    write(first, store)
    assert shared.apply(through_topic(first.deltas)).records == 10
    again = run(recs[5:], llm, store, settings, models=shared.models)  # records 5..9 a second time
    write(again, store)
    assert shared.apply(through_topic(again.deltas)).records == 5
    # From scratch: the bootstrap sums plus each record's first assignment (5..9 from the first delivery).
    points = {p.conversation_id: p for p in [*again.facet_points, *first.facet_points] if p.facet == "Request"}
    sums, counts = base_sums.copy(), base_counts.copy()
    for p in points.values():
        sums[p.cluster_id] += p.vector
        counts[p.cluster_id] += 1
    assert len(points) == 15
    np.testing.assert_array_equal(model.counts, counts)
    np.testing.assert_allclose(model.centroids, sums / counts[:, None], atol=1e-6)


def through_topic(deltas: list) -> list[ReceivedDelta]:
    """The deltas as a reader receives them from the deltas topic (encoded, then decoded and validated)."""
    return [receive(Record("clio.centroid-deltas", 0, i, d.facet.encode(), encode_deltas(d)))
            for i, d in enumerate(deltas)]


def clustered(llm, store, settings) -> SharedCentroids:
    """A published clustering of Request (two clusters) and the shared centroids loaded from it."""
    topics = ["cards", "loans", "cards", "loans", "cards", "loans"]
    first = run(records([encode_message(conv_msg(f"c{i}", f"{t} question {i}")) for i, t in enumerate(topics)],
                        partition=0, start=1000), llm, store, settings)
    write(first, store)
    assert bootstrap_clustering(store, FACETS, settings) == 1
    shared = SharedCentroids(["Request"], HashEmbedder.dim)
    assert shared.refresh(store.versions) == ["Request"]
    return shared


def test_raw_text_is_left_out_when_the_settings_say_so(llm, store, settings) -> None:
    private = settings.with_overrides(store_raw_conversations=False)
    out = run(records([encode_message(conv_msg("p", "my secret question"))]), llm, store, private)
    assert out.conversations[0].raw is None


def test_a_dead_llm_raises_instead_of_storing_empty_values(store, settings) -> None:
    dead = ScriptedLLM(lambda name, values, rng: None)
    with pytest.raises(LLMUnavailable):
        run(records([encode_message(conv_msg("x", "hello there"))]), dead, store, settings, facets=[REQUEST])


def test_decode_and_offsets_are_pure() -> None:
    recs = [Record(TOPIC, 1, 7, b"a", encode_message(conv_msg("a", "hi"))),
            Record(TOPIC, 0, 3, b"b", msgpack.packb([1, 2])),
            Record(TOPIC, 1, 5, b"c", encode_message(conv_msg("c", "yo")))]
    batch = decode_records(recs)
    assert [c.conversation.id for c in batch.conversations] == ["a", "c"]
    assert [d.code for d in batch.dead_letters] == ["not_a_map"]
    assert offset_ranges(recs) == {(TOPIC, 1): (5, 7), (TOPIC, 0): (3, 3)}


def test_file_records_become_contract_messages() -> None:
    seed_style = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    msg = record_to_message(seed_style, 4, "chats")
    body = msgpack.unpackb(msg.value)
    assert msg.key == "chats-4" and body["id"] == "chats-4" and body["conversation"] == seed_style
    mapped = record_to_message({"id": "x9", "user_id": "u", "messages": [{"from": "human", "value": "hey"}],
                                "timestamp": "2024-01-01T00:00:00Z"}, 0, "chats")
    body = msgpack.unpackb(mapped.value)
    assert mapped.key == "x9" and body["conversation"] == [{"role": "user", "content": "hey"}]
    assert body["user_id"] == "u" and body["timestamp"] == 1704067200.0


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff_delay(n, 0.5, 15.0, jitter=0.0) for n in range(1, 9)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and delays[-1] == 15.0


class CallCounter:
    """Counts the Qdrant client calls made through it (retrieve, scroll)."""

    def __init__(self, store: QdrantStore) -> None:
        self.calls: list[str] = []
        client = store.points.conn.client
        for name in ("retrieve", "scroll"):
            real = getattr(client, name)

            def counted(*a: object, _real=real, _name=name, **k: object) -> object:
                self.calls.append(_name)
                return _real(*a, **k)

            setattr(client, name, counted)


def test_a_processed_conversation_is_looked_up_in_one_call_with_the_same_facets(llm, store, settings) -> None:
    recs = records([encode_message(conv_msg("c1", "How do I reset my card PIN?")),
                    encode_message(conv_msg("c2", "Why was my transfer declined?"))])
    outcome = run(recs, llm, store, settings)
    write(outcome, store)
    exact = store.points.get_conversation("c1")
    counter = CallCounter(store)
    doc, copied = store.points.lookup_conversation("c1")
    assert copied and counter.calls == ["retrieve"]
    assert doc is not None and doc["status"] == "processed"
    for facet in ("Request", "Concerning"):
        want = {k: exact["facets"][facet][k] for k in ("id", "value", "numeric", "cluster_id", "cluster_version")}
        assert {k: doc["facets"][facet][k] for k in want} == want

    # Marked pending again (a redelivery): the copy is gone with the old payload, the facet points are read.
    store.points.mark_conversations(pending_records(decode_records(recs[1:]), settings))
    counter.calls.clear()
    doc2, copied2 = store.points.lookup_conversation("c2")
    assert not copied2 and counter.calls == ["retrieve", "scroll"]
    assert doc2 is not None and doc2["status"] == "pending" and doc2["facets"]["Request"]["value"]


def test_the_worker_asks_in_the_layout_the_settings_name(llm, store, settings) -> None:
    values = [encode_message(conv_msg(f"c{i}", f"Question number {i} about loans")) for i in range(2)]
    run(records(values), llm, store, settings.model_copy(update={"facet_layout": "shared"}),
        facets=[REQUEST, TASK, CONCERNING])
    assert llm.calls == ["facet_shared"] * 6


def test_deltas_carry_the_rows_as_assigned_even_from_an_embedder_that_does_not_normalise(llm, store,
                                                                                          settings) -> None:
    class Unnormalised(HashEmbedder):
        def encode(self, texts, *, desc=None):
            return 5.0 * super().encode(texts)

    shared = clustered(llm, store, settings)
    recs = records([encode_message(conv_msg("n1", "cards question new"))], partition=2, start=7)
    out = process_batch(recs, facets=FACETS, llm=llm, embedder=Unnormalised(), store=store.points,
                        models=shared.models, settings=settings)
    (d,) = out.deltas
    np.testing.assert_allclose(np.linalg.norm(d.vectors, axis=1), 1.0, atol=1e-5)
    assert shared.apply(through_topic(out.deltas)).records == 1
