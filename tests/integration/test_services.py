"""Real broker (Tansu) and real Qdrant: process management and the Kafka helpers.

Timings on a 2-core machine: each consumer-group join takes ~3 s on Tansu
(half the 6 s session timeout), so this module takes ~40 s.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from clio_stream.streaming.kafka_io import (
    committed_lags,
    DLQ_FIELDS,
    DeadLetterWriter,
    consumer_lag,
    decode_dead_letter,
    ensure_topics,
    make_consumer,
    make_producer,
    partition_lags,
)
from clio_stream.streaming.wire_format import InvalidMessage, decode_message, encode_message
from clio_stream.devstack import binaries
from clio_stream.devstack.processes import (
    ManagedProcess,
    ProcessStartError,
    free_port,
    http_probe,
    start_broker,
)

pytestmark = pytest.mark.integration

JOIN_TIMEOUT_S = 30.0


def sample(i: int) -> dict:
    return {
        "id": f"conv-{i}",
        "user_id": f"user-{i % 7}",
        "conversation": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ],
        "timestamp": 1_714_564_800 + i,
        "metadata": {"n": i},
    }


def produce(bootstrap: str, topic: str, ids: range) -> None:
    producer = make_producer(bootstrap)
    try:
        futures = [
            producer.send(topic, key=f"conv-{i}", value=encode_message(sample(i))) for i in ids
        ]
        producer.flush(30)
        for f in futures:
            f.get(timeout=10)  # raises if the broker refused a record
    finally:
        producer.close()


def drain(consumer: KafkaConsumer, want: int, timeout_s: float = JOIN_TIMEOUT_S) -> list:
    """Poll until ``want`` records came back (the first poll includes the group join)."""
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(records)
    return out


# --------------------------------------------------------------- processes --


def test_binaries_are_cached_and_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = binaries.tansu_binary()
    assert first == binaries.tansu_binary()  # second call: cache hit, same file
    assert first.parent == binaries.cache_bin_dir()
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CLIO_TANSU_BIN", str(fake))
    assert binaries.tansu_binary() == fake
    monkeypatch.setenv("CLIO_TANSU_BIN", str(tmp_path / "missing"))
    with pytest.raises(binaries.BinaryUnavailable, match="not an executable"):
        binaries.tansu_binary()


def test_early_exit_reports_log_tail(tmp_path: Path) -> None:
    mp = ManagedProcess(
        "failing",
        [sys.executable, "-c", "import sys; print('bind: address in use'); sys.exit(3)"],
        log_path=tmp_path / "failing.log",
        ready_probe=lambda: False,
        ready_timeout=10,
    )
    with pytest.raises(ProcessStartError, match=r"exited early with code 3[\s\S]*address in use"):
        mp.start()
    assert not mp.alive


def test_not_ready_times_out_and_stops(tmp_path: Path) -> None:
    mp = ManagedProcess(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        log_path=tmp_path / "sleeper.log",
        ready_probe=lambda: False,
        ready_timeout=0.5,
    )
    with pytest.raises(ProcessStartError, match="not ready after"):
        mp.start()
    assert not mp.alive  # a failed start does not leave the process behind


def test_stop_escalates_to_sigkill_and_kill9(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(60)"
    )
    log_path = tmp_path / "stubborn.log"
    mp = ManagedProcess(
        "stubborn",
        [sys.executable, "-c", stubborn],
        log_path=log_path,
        ready_probe=lambda: "\nup\n" in log_path.read_text(),
        stop_timeout=0.5,
    )
    with mp:
        assert mp.alive and mp.pid
        t0 = time.monotonic()
    assert not mp.alive
    assert mp.returncode == -9  # SIGTERM was ignored, SIGKILL ended it
    assert time.monotonic() - t0 < 5
    assert mp.stop() == -9  # idempotent

    mp2 = ManagedProcess("victim", [sys.executable, "-c", "import time; time.sleep(60)"],
                         log_path=tmp_path / "victim.log")
    mp2.start()
    mp2.kill9()
    assert not mp2.alive and mp2.returncode == -9


def test_broker_on_busy_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ProcessStartError, match=f"127.0.0.1:{port} is already in use"):
            start_broker(port=port, log_dir=tmp_path)


def test_broker_start_stop_restart(tmp_path: Path) -> None:
    port = free_port()
    with start_broker(port=port, log_dir=tmp_path, die_with_parent=True) as mp:
        assert mp.alive and mp.ready_after_s is not None and mp.ready_after_s < 5
        ensure_topics(f"127.0.0.1:{port}", {"t": 1})
        mp.restart()
        assert mp.alive
        # In-memory storage: the restart lost the topic, and it can be made again.
        assert ensure_topics(f"127.0.0.1:{port}", {"t": 1}) == ["t"]
    assert not mp.alive
    assert "listening on" in mp.log_tail()


# ------------------------------------------------------------------- kafka --


def test_ensure_topics_is_idempotent(kafka_broker, unique_name: Callable[[str], str]) -> None:
    a, b = unique_name("ensure-a"), unique_name("ensure-b")
    assert sorted(ensure_topics(kafka_broker.bootstrap, {a: 4, b: 1})) == sorted([a, b])
    assert ensure_topics(kafka_broker.bootstrap, {a: 4, b: 1}) == []
    assert ensure_topics(kafka_broker.bootstrap, {a: 2}) == []  # not resized, only warned


def test_produce_and_consume_in_group(kafka_broker, unique_name) -> None:
    topic, group = unique_name("conv"), unique_name("grp")
    ensure_topics(kafka_broker.bootstrap, {topic: 3})
    produce(kafka_broker.bootstrap, topic, range(100))

    consumer = make_consumer(kafka_broker.bootstrap, group, [topic])
    try:
        t0 = time.monotonic()
        records = drain(consumer, 100)
        elapsed = time.monotonic() - t0
        consumer.commit()
    finally:
        consumer.close()

    assert len(records) == 100, f"got {len(records)} in {elapsed:.1f}s"
    seen: dict[bytes, int] = {}
    for r in records:
        msg = decode_message(r.key, r.value, require_key_match=True)
        assert r.key == msg.id.encode()
        assert seen.setdefault(r.key, r.partition) == r.partition  # a key stays on its partition
    assert {r.key for r in records} == {f"conv-{i}".encode() for i in range(100)}
    assert len({r.partition for r in records}) == 3
    # Order within a partition is production order.
    for p in range(3):
        offsets = [r.offset for r in records if r.partition == p]
        assert offsets == sorted(offsets)


def test_resume_at_committed_offset(kafka_broker, unique_name) -> None:
    topic, group = unique_name("resume"), unique_name("grp")
    ensure_topics(kafka_broker.bootstrap, {topic: 2})
    produce(kafka_broker.bootstrap, topic, range(100))

    first = make_consumer(kafka_broker.bootstrap, group, [topic], max_poll_records=15)
    done: list = []
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while len(done) < 40 and time.monotonic() < deadline:
            for records in first.poll(timeout_ms=500).values():
                done.extend(records)  # "processed" everything poll returned...
        first.commit()  # ...so committing the positions commits exactly `done`
    finally:
        first.close(autocommit=False)
    assert 40 <= len(done) < 100

    second = make_consumer(kafka_broker.bootstrap, group, [topic])
    try:
        rest = drain(second, 100 - len(done))
        extra = drain(second, 1, timeout_s=1.0)  # nothing more: no redelivery
    finally:
        second.close(autocommit=False)
    first_ids = {r.key for r in done}
    rest_ids = {r.key for r in rest}
    assert not extra
    assert not first_ids & rest_ids
    assert len(first_ids | rest_ids) == 100


def test_two_consumers_share_partitions(kafka_broker, unique_name) -> None:
    topic, group = unique_name("share"), unique_name("grp")
    ensure_topics(kafka_broker.bootstrap, {topic: 4})
    c1 = make_consumer(kafka_broker.bootstrap, group, [topic])
    c2 = make_consumer(kafka_broker.bootstrap, group, [topic])
    try:
        t0 = time.monotonic()
        a1: set[int] = set()
        a2: set[int] = set()
        while time.monotonic() - t0 < 2 * JOIN_TIMEOUT_S:
            c1.poll(timeout_ms=200)
            c2.poll(timeout_ms=200)
            a1 = {tp.partition for tp in c1.assignment()}
            a2 = {tp.partition for tp in c2.assignment()}
            if a1 and a2 and not a1 & a2 and a1 | a2 == {0, 1, 2, 3}:
                break
        elapsed = time.monotonic() - t0
    finally:
        c1.close(autocommit=False)
        c2.close(autocommit=False)
    assert a1 and a2, f"c1={a1} c2={a2} after {elapsed:.1f}s"
    assert not a1 & a2 and a1 | a2 == {0, 1, 2, 3}


def test_slow_worker_keeps_its_partitions(kafka_broker, unique_name) -> None:
    """~2 s of work between polls (an LLM batch): kafka-python 2.3.3 still joins and keeps
    the assignment (3.0.12 never completes the join in this pattern against Tansu)."""
    topic, group = unique_name("slow"), unique_name("grp")
    ensure_topics(kafka_broker.bootstrap, {topic: 2})
    produce(kafka_broker.bootstrap, topic, range(9))
    consumer = make_consumer(kafka_broker.bootstrap, group, [topic], max_poll_records=3)
    got: list = []
    assignments: list[frozenset[TopicPartition]] = []
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while len(got) < 9 and time.monotonic() < deadline:
            batch = [r for rs in consumer.poll(timeout_ms=500).values() for r in rs]
            if consumer.assignment():
                assignments.append(frozenset(consumer.assignment()))
            if batch:
                time.sleep(2.0)  # the "work"
                got.extend(batch)
                consumer.commit()
    finally:
        consumer.close(autocommit=False)
    assert len(got) == 9
    assert len(set(assignments)) == 1 and len(assignments[0]) == 2  # never lost or changed


def test_dead_letter_round_trip(kafka_broker, unique_name) -> None:
    topic, dlq = unique_name("src"), unique_name("dlq")
    ensure_topics(kafka_broker.bootstrap, {topic: 1, dlq: 1})
    producer = make_producer(kafka_broker.bootstrap)
    producer.send(topic, key=b"bad-1", value=b"\xc1 not msgpack")
    producer.send(topic, key=None, value=encode_message({"id": "x", "conversation": []}))
    producer.flush(10)
    producer.close()

    src = make_consumer(kafka_broker.bootstrap, None)
    src.assign([TopicPartition(topic, 0)])
    records = drain(src, 2, timeout_s=10)
    src.close()
    assert len(records) == 2

    before = time.time()
    with DeadLetterWriter(kafka_broker.bootstrap, topic=dlq) as writer:
        for r in records:
            with pytest.raises(InvalidMessage) as info:
                decode_message(r.key, r.value)
            writer.send_record(r, info.value.reason)
        writer.flush(10)
        assert writer.sent == 2

    out = make_consumer(kafka_broker.bootstrap, None)
    out.assign([TopicPartition(dlq, 0)])
    dead = drain(out, 2, timeout_s=10)
    out.close()
    assert [d.key for d in dead] == [b"bad-1", None]  # original key kept
    letters = [decode_dead_letter(d.value) for d in dead]
    for letter, r in zip(letters, records, strict=True):
        assert set(letter) == set(DLQ_FIELDS)
        assert letter["key"] == r.key and letter["value"] == r.value
        assert (letter["topic"], letter["partition"], letter["offset"]) == (topic, 0, r.offset)
        assert before - 1 <= letter["time"] <= time.time() + 1
    assert "not msgpack" in letters[0]["reason"]
    assert letters[1]["reason"] == "empty conversation"


def test_consumer_lag_matches_unconsumed(kafka_broker, unique_name) -> None:
    topic = unique_name("lag")
    ensure_topics(kafka_broker.bootstrap, {topic: 2})
    produce(kafka_broker.bootstrap, topic, range(60))

    consumer = make_consumer(kafka_broker.bootstrap, unique_name("grp"), [topic], max_poll_records=7)
    consumed = 0
    checks = 0
    try:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while consumed < 60 and time.monotonic() < deadline:
            consumed += sum(len(v) for v in consumer.poll(timeout_ms=500).values())
            lags = partition_lags(consumer)
            if lags and all(v is not None for v in lags.values()):
                assert consumer_lag(consumer) == 60 - consumed
                checks += 1
        assert consumed == 60
        assert consumer_lag(consumer) == 0
        # New records show up as lag once a fetch of their partition has seen them;
        # until then the lag is an underestimate, never an overestimate.
        produce(kafka_broker.bootstrap, topic, range(60, 70))
        got, exact = 0, 0
        deadline = time.monotonic() + 10
        while got < 10 and time.monotonic() < deadline:
            got += sum(len(v) for v in consumer.poll(timeout_ms=500).values())
            lag = consumer_lag(consumer)
            assert lag <= 10 - got
            exact += lag == 10 - got
        assert got == 10 and consumer_lag(consumer) == 0 and exact >= 1
    finally:
        consumer.close(autocommit=False)
    assert checks >= 3


# ------------------------------------------------------------------ qdrant --


@pytest.mark.parametrize("prefer_grpc", [False, True], ids=["http", "grpc"])
def test_qdrant_create_upsert_search(qdrant_server, unique_name, prefer_grpc: bool) -> None:
    from qdrant_client import QdrantClient, models

    client = QdrantClient(
        host=qdrant_server.host,
        port=qdrant_server.http_port,
        grpc_port=qdrant_server.grpc_port,
        prefer_grpc=prefer_grpc,
        timeout=10,
    )
    name = unique_name("coll")
    try:
        client.create_collection(
            name, vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE)
        )
        client.upsert(
            name,
            points=[
                models.PointStruct(id=1, vector=[1, 0, 0, 0], payload={"facet": "a"}),
                models.PointStruct(id=2, vector=[0, 1, 0, 0], payload={"facet": "b"}),
                models.PointStruct(id=3, vector=[0.9, 0.1, 0, 0], payload={"facet": "b"}),
            ],
            wait=True,
        )
        hits = client.query_points(name, query=[1, 0, 0, 0], limit=2).points
        assert [h.id for h in hits] == [1, 3]
        filtered = client.query_points(
            name,
            query=[1, 0, 0, 0],
            limit=2,
            query_filter=models.Filter(
                must=[models.FieldCondition(key="facet", match=models.MatchValue(value="b"))]
            ),
        ).points
        assert [h.id for h in filtered] == [3, 2]
        assert client.count(name).count == 3
    finally:
        client.delete_collection(name)
        client.close()


def test_qdrant_process_is_ready(qdrant_server) -> None:
    assert http_probe(f"{qdrant_server.url}/readyz")()
    assert http_probe(f"{qdrant_server.url}/healthz")()
    if qdrant_server.process is not None:
        assert qdrant_server.process.alive
        assert qdrant_server.process.ready_after_s is not None


def test_committed_lag_counts_fetched_records_until_they_are_committed(kafka_broker, unique_name) -> None:
    """The backlog a worker reports is high-water minus the group's committed offset, fetched records included."""
    topic = unique_name("clag")
    ensure_topics(kafka_broker.bootstrap, {topic: 1})
    produce(kafka_broker.bootstrap, topic, range(30))
    group = unique_name("grp")
    consumer = make_consumer(kafka_broker.bootstrap, group, [topic], max_poll_records=10)
    tp = TopicPartition(topic, 0)
    committed: dict[TopicPartition, int | None] = {}
    try:
        got: list = []
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while len(got) < 10 and time.monotonic() < deadline:
            got += [r for rs in consumer.poll(timeout_ms=500).values() for r in rs]
        assert len(got) >= 10
        assert committed_lags(consumer, committed) == {tp: None}  # nothing committed by this group yet
        committed.clear()
        consumer.commit({tp: OffsetAndMetadata(5, "", -1)})  # stored up to offset 4 only
        assert committed_lags(consumer, committed) == {tp: 25}  # asked of the coordinator once
        assert partition_lags(consumer)[tp] == 30 - len(got)  # the fetch position already passed them
        committed[tp] = len(got)  # the worker's own commit, kept in its cache
        assert committed_lags(consumer, committed) == {tp: 30 - len(got)}
    finally:
        consumer.close(autocommit=False)
