"""`clio-stream dlq list|show|replay` against the real broker: what an operator does after a fix.

Dead letters are written by the worker's own writer (``DeadLetterWriter``), read back without a consumer
group, and replayed byte for byte to their source topic; a dead letter whose value was cut on the way in is
reported and never sent half.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest

from clio_stream.cli.main import main as cli_main
from clio_stream.streaming.kafka_io import DeadLetterWriter, ensure_topics, make_consumer


def _dead_letters(bootstrap: str, source: str, dlq: str) -> list[tuple[bytes, bytes, str]]:
    ensure_topics(bootstrap, {source: 2, dlq: 2})
    records = [(f"conv-{i}".encode(), f"payload-{i}".encode() * 3, "llm_rejected: prompt too long" if i % 2 else
                "undecodable: not msgpack") for i in range(6)]
    with DeadLetterWriter(bootstrap, topic=dlq) as writer:
        for i, (key, value, reason) in enumerate(records):
            writer.send(key=key, value=value, reason=reason, topic=source, partition=i % 2, offset=100 + i)
        # one record too big for its dead letter: cut, so it must never be replayed
        writer.send(key=b"conv-big", value=b"x" * (300 * 1024), reason="record_too_large", topic=source,
                    partition=0, offset=999)
        writer.flush()
    return records


def _source_records(bootstrap: str, topic: str, expect: int) -> list[tuple[bytes, bytes]]:
    consumer = make_consumer(bootstrap, f"check-{uuid.uuid4().hex[:6]}", [topic])
    got: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(40):
            for recs in consumer.poll(timeout_ms=500).values():
                got.extend((r.key, r.value) for r in recs)
            if len(got) >= expect:
                break
    finally:
        consumer.close()
    return got


@pytest.mark.integration
def test_list_show_and_replay_the_dead_letter_topic(kafka_broker, capsys) -> None:
    bootstrap = kafka_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    source, dlq = f"src-{tag}", f"dlq-{tag}"
    records = _dead_letters(bootstrap, source, dlq)
    common = ["--kafka-bootstrap", bootstrap, "--dlq-topic", dlq]

    assert cli_main(["dlq", "list", *common]) == 0
    listing = capsys.readouterr().out.splitlines()[1:]
    assert len(listing) == 7
    assert sum("llm_rejected" in line for line in listing) == 3
    assert sum("(cut)" in line for line in listing) == 1

    assert cli_main(["dlq", "list", *common, "--reason", "undecodable"]) == 0
    only = capsys.readouterr().out.splitlines()[1:]
    assert len(only) == 3 and all("undecodable" in line for line in only)
    position = only[0].split()[0]

    assert cli_main(["dlq", "show", *common, position]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["dlq_position"] == position and shown["reason"] == "undecodable: not msgpack"
    assert (base64.b64decode(shown["key_base64"]), base64.b64decode(shown["value_base64"])) in {
        (k, v) for k, v, _ in records}

    assert cli_main(["dlq", "replay", *common]) == 2  # refuses to replay everything unasked
    capsys.readouterr()
    assert cli_main(["dlq", "replay", *common, "--reason", "llm_rejected", "--dry-run"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry == {"replayed": 3, "dry_run": True, "skipped_truncated": [], "skipped_unreadable": []}
    assert _source_records(bootstrap, source, expect=1) == []  # a dry run sends nothing

    assert cli_main(["dlq", "replay", *common, "--all"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["replayed"] == 6 and len(report["skipped_truncated"]) == 1
    replayed = _source_records(bootstrap, source, expect=6)
    assert sorted(replayed) == sorted((k, v) for k, v, _ in records)  # byte for byte, the cut one not at all
