"""A consumer killed at every step of its write order: nothing lost, nothing counted twice, the partition moves on.

``consumers.worker.WRITE_STEPS`` names the steps of one batch (mark pending, process, upsert the facet points,
mark them processed, send the dead letters, send the centroid deltas, commit), each announced to
``clio_stream.ops.faults``. For every step a real ``clio-stream consume`` process is started with
``CLIO_FAULT_AT=<step>:exit`` and ends itself there with ``os._exit`` (no cleanup: a SIGKILL as far as Kafka
and Qdrant can tell); a second process without the fault then takes over the partition.

Real parts: the Tansu broker, the Qdrant server, the shared vLLM server and MiniLM. A clustering exists before
the stream, so every batch ships centroid deltas. Checked after each kill, from what the store and the topics
hold: every conversation stored once with its facets, the record that cannot be decoded dead-lettered, every
offset committed, and a replica replaying the deltas topic from scratch counting each stored value once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clio_stream.domain.facets import REQUEST
from clio_stream.streaming.kafka_io import decode_dead_letter, ensure_topics
from clio_stream.streaming.wire_format import encode_message
from clio_stream.online.kmeans import OnlineKMeans
from consumers.bootstrap import bootstrap_clustering
from consumers.worker import WRITE_STEPS
from tests.reliability.helpers import pooled_conversations, replayed_delta_tally, seed_store
from tests.streaming_helpers import (
    FACETS,
    committed,
    consume_process,
    conversation_payloads,
    read_topic,
    reader_store,
    send,
    stored_pairs,
    streaming_settings,
    wait_for,
)

log = logging.getLogger(__name__)
BAD_KEY = b"kill-bad-record"


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_consumer_killed_at_each_step_loses_and_double_counts_nothing(
    step: str, kafka_broker: Any, qdrant_server: Any, vllm_server: Any, unique_name: Callable[[str], str],
    tmp_path: Path, reliability_report: Callable[..., None],
) -> None:
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=1, max_poll_records=4, n_base_clusters=lambda n: 3)
    ensure_topics(s.kafka_bootstrap, {s.topic: 1, s.dlq_topic: 1, s.deltas_topic: 1})
    seed_ids = {c["id"] for c in seed_store(s, 12, 700, unique_name("seed"))}
    with reader_store(s) as seeded:
        assert bootstrap_clustering(seeded, FACETS, s) == 1
        bootstrap = OnlineKMeans.from_state(seeded.versions.get_centroids(REQUEST.name, 1))  # type: ignore[arg-type]
    convs = pooled_conversations(10, 4, unique_name("kill"))
    records = [(c["id"].encode(), encode_message(c)) for c in convs]
    records.insert(1, (BAD_KEY, b"\xc1 not msgpack"))  # in the first batch, so its dead letter is in flight
    send(s.kafka_bootstrap, s.topic, records)

    t0 = time.monotonic()
    victim = consume_process(s, "victim", vllm_server.base_url, tmp_path, CLIO_FAULT_AT=f"{step}:exit")
    victim.start()
    wait_for(lambda: not victim.alive, 300, f"the victim to end itself at {step}", every=0.5)
    assert victim.returncode == 137, victim.log_tail()
    committed_at_kill = committed(s.kafka_bootstrap, s.consumer_group, s.topic)
    survivor = consume_process(s, "survivor", vllm_server.base_url, tmp_path)
    survivor.start()
    store = reader_store(s)
    try:
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(records), 300,
                 "the survivor to commit every record")
        assert survivor.stop() == 0, survivor.log_tail()
        seconds = time.monotonic() - t0

        pairs = {k: n for k, n in stored_pairs(store).items() if k[0] not in seed_ids}
        want = {(c["id"], f.name) for c in convs for f in FACETS}
        statuses = {cid: p.get("status") for cid, p in conversation_payloads(store).items() if cid not in seed_ids}
        dead = [decode_dead_letter(r.value) for r in read_topic(s.kafka_bootstrap, s.dlq_topic, 2, timeout=10)]
        tally = replayed_delta_tally(store, s, bootstrap, seed_ids, max_records=10_000)
    finally:
        survivor.stop()
        victim.stop()
        store.close()
    figures = dict(step=step, records=len(records), committed_at_kill=committed_at_kill,
                   lost_points=len(want - set(pairs)), unexpected_points=len(set(pairs) - want),
                   duplicated_points=sum(n - 1 for n in pairs.values() if n > 1),
                   not_processed=sum(1 for c in convs if statuses.get(c["id"]) != "processed"),
                   dead_letters=len(dead), delta_messages=tally.delta_messages, deltas_rejected=tally.rejected,
                   request_values_stored=tally.valued, records_added_by_replayed_deltas=tally.added, seconds=round(seconds, 1))
    reliability_report(**figures)
    log.info("consumer killed at %s: %s", step, figures)
    assert figures["lost_points"] == figures["unexpected_points"] == figures["duplicated_points"] == 0, figures
    assert figures["not_processed"] == 0, statuses
    # At least once: a kill after the dead letter was sent and before the commit sends it again.
    assert 1 <= len(dead) <= 2 and {bytes(d["key"]) for d in dead} == {BAD_KEY}, dead
    assert tally.rejected == 0 and tally.added == tally.valued, (tally, "a delta was applied twice or lost")
