"""Poison records aimed at the LLM path and the size limits: each is dead-lettered or processed, never stuck.

Real parts: the Tansu broker, the Qdrant server, the shared vLLM server (OpenAI back-end, SmolLM2-135M,
``--max-model-len 4096``) and MiniLM. One partition, so a record that blocked would block everything after it.

What used to happen (issue 13, defect 1 and 2):

* an oversize first turn was cut by a character ratio, so a run of emoji or CJK text kept several thousand
  tokens more than the budget; the server answered HTTP 400, every LLM error was "unavailable", and the batch
  was rewound and retried for ever, even record by record;
* a prompt the server refuses for good (here: a conversation budget above the model's context) did the same;
* a record with a 600 KB key made its dead letter larger than the producer's request limit (the key went into
  the dead letter whole, twice), so sending it failed as retryable, for ever;
* a redelivered conversation was re-asked (the content-hash reuse matched only ``processed`` conversations and
  the redelivered batch had just marked them ``pending``), and a record dead-lettered in the record-by-record
  fallback stayed ``pending`` for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from clio_stream.streaming.kafka_io import decode_dead_letter, ensure_topics
from clio_stream.llm import make_llm
from clio_stream.streaming.wire_format import encode_message
from clio_stream.settings import ClioSettings
from consumers.worker import ConsumerWorker
from tests.integration.conftest import minilm  # noqa: F401 - session fixture
from tests.streaming_helpers import (
    FACETS,
    conversation_payloads,
    facet_payloads,
    read_topic,
    reader_store,
    send,
    start_thread,
    stop_thread,
    streaming_settings,
)

log = logging.getLogger(__name__)

EMOJI_AND_SPACES = "\U0001F600\U0001F680\U0001F9E0" * 4000 + " " * 40000
CJK = "\u8bf7\u5e2e\u6211\u5199\u4e00\u5c01\u4fe1\u7ed9\u94f6\u884c\u3002" * 3000
LONG_ENGLISH = "Please help me understand why my card payment was declined at the shop today. " * 900


def _conv(cid: str, text: str) -> dict[str, Any]:
    return {"id": cid, "user_id": f"user-{cid}",
            "conversation": [{"role": "user", "content": text}, {"role": "assistant", "content": "Sure."}]}


def _good(i: int) -> dict[str, Any]:
    return _conv(f"good-{i}", ["How do I reset my card PIN?", "Why was I charged twice for one purchase?",
                               "Can I raise my daily transfer limit?"][i % 3])


def _records(convs: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(c["id"].encode(), encode_message(c)) for c in convs]


def _run_until_committed(s: ClioSettings, embedder: Any, expect: int, timeout: float) -> ConsumerWorker:
    """Run one worker until it has stored or dead-lettered ``expect`` records (or the time is up)."""
    worker = ConsumerWorker(s, facets=FACETS, llm=make_llm(s), embedder=embedder)
    thread, stop = start_thread(worker)
    deadline = time.monotonic() + timeout
    try:
        while worker.metrics.processed + worker.metrics.dead_lettered < expect and time.monotonic() < deadline:
            assert thread.is_alive(), "the worker thread died"
            time.sleep(0.5)
    finally:
        stop_thread(thread, stop)
    return worker


def test_poison_records_are_dead_lettered_or_processed_and_the_partition_moves_on(
    kafka_broker: Any, qdrant_server: Any, vllm_server: Any, minilm: Any,  # noqa: F811
    unique_name: Callable[[str], str], reliability_report: Callable[..., None],
) -> None:
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=1, max_poll_records=8, llm_backend="openai",
                           llm_base_url=vllm_server.base_url, max_message_bytes=1 << 20)
    ensure_topics(s.kafka_bootstrap, {s.topic: 1, s.dlq_topic: 1, s.deltas_topic: 1})
    hostile = [_conv("emoji-spaces", EMOJI_AND_SPACES), _conv("cjk", CJK)]
    big_key = b"k" * 600_000
    convs = [_good(0), *hostile, _good(1), _good(2)]
    send(s.kafka_bootstrap, s.topic, [*_records(convs), (big_key, b"\xc1 not msgpack")])
    t0 = time.monotonic()
    first = _run_until_committed(s, minilm, len(convs) + 1, timeout=240)
    # A budget above the model's context: truncation keeps more than the server accepts, so it refuses it.
    s_over = s.model_copy(update={"max_conversation_tokens": 6000})
    refused = [_conv("refused", LONG_ENGLISH), _good(3)]
    send(s.kafka_bootstrap, s.topic, _records(refused))
    total = len(convs) + 1 + len(refused)
    second = _run_until_committed(s_over, minilm, len(refused), timeout=240)
    elapsed = time.monotonic() - t0
    snaps = [first.metrics_snapshot(), second.metrics_snapshot()]

    dead = [decode_dead_letter(r.value) for r in read_topic(s.kafka_bootstrap, s.dlq_topic, expect=2, timeout=20)]
    store = reader_store(s)
    try:
        statuses = {cid: p.get("status") for cid, p in conversation_payloads(store).items()}
        requests = facet_payloads(store, "Request")
    finally:
        store.close()
    by_key = {bytes(d["key"])[:20]: d for d in dead}
    figures = dict(records=total, seconds=round(elapsed, 1), dead_lettered=len(dead),
                   processed=sum(v["processed"] for v in snaps), failed_batches=sum(v["failed_batches"] for v in snaps),
                   reasons=sorted(d["reason"][:60] for d in dead), statuses=dict(sorted(statuses.items())))
    reliability_report(**figures)
    log.info("poison figures: %s", figures)

    # The oversize hostile turns are cut to the budget by real tokens, so they are processed, not refused.
    for c in [*convs, refused[1]]:
        assert statuses.get(c["id"]) == "processed", (c["id"], statuses.get(c["id"]), snaps)
        assert requests.get(c["id"], {}).get("value"), f"{c['id']} has no Request value"
    # The refused prompt and the big key are dead letters with their reasons; nothing stays pending.
    assert len(dead) == 2, figures
    assert "rejected by the LLM" in by_key[b"refused"]["reason"], by_key[b"refused"]["reason"]
    assert by_key[b"k" * 20]["key_size"] == len(big_key) and len(by_key[b"k" * 20]["key"]) <= 1024
    assert statuses.get("refused") == "dead_lettered", statuses.get("refused")
    assert "pending" not in statuses.values(), statuses
    # The refused record failed as a record, not as an outage: no batch was rewound and retried.
    assert figures["failed_batches"] == 0, snaps


def test_a_redelivered_conversation_reuses_its_stored_answers(
    kafka_broker: Any, qdrant_server: Any, vllm_server: Any, minilm: Any,  # noqa: F811
    unique_name: Callable[[str], str],
) -> None:
    """A new consumer group on the same topic redelivers everything, as a crash before the commit would."""
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=1, llm_backend="openai", llm_base_url=vllm_server.base_url)
    convs = [_good(i) for i in range(6)]
    send(s.kafka_bootstrap, s.topic, _records(convs))
    first = _run_until_committed(s, minilm, len(convs), timeout=180)
    store = reader_store(s)
    try:
        before = {cid: p.get("value") for cid, p in facet_payloads(store, "Request").items()}
        again = _run_until_committed(s.model_copy(update={"consumer_group": unique_name("redeliver")}), minilm,
                                     len(convs), timeout=180)
        after = {cid: p.get("value") for cid, p in facet_payloads(store, "Request").items()}
        statuses = {cid: p.get("status") for cid, p in conversation_payloads(store).items()}
    finally:
        store.close()
    assert first.metrics.processed == again.metrics.processed == len(convs)
    assert first.metrics_snapshot()["llm_calls"] > 0
    assert again.metrics_snapshot()["llm_calls"] == 0, "a redelivered conversation was asked again"
    assert after == before and all(before.values())
    assert set(statuses.values()) == {"processed"}


def test_the_server_tokenizer_counts_like_the_model(vllm_server: Any) -> None:
    """Without a local copy of the tokenizer the OpenAI back-end asks the server's ``/tokenize``."""
    from transformers import AutoTokenizer

    from clio_stream.llm.openai_api import OpenAICompatible

    remote = OpenAICompatible(vllm_server.model, vllm_server.base_url, tokenizer_path="/nonexistent")
    local = AutoTokenizer.from_pretrained(vllm_server.model)
    for text in (CJK[:2000], EMOJI_AND_SPACES[:3000] + EMOJI_AND_SPACES[-200:], "plain words " * 50):
        assert remote.count_tokens(text) == len(local.encode(text, add_special_tokens=False))


def test_dead_letter_of_a_huge_key_fits_the_producer_limit() -> None:
    from clio_stream.streaming.kafka_io import dead_letter_key, encode_dead_letter

    key = b"x" * 600_000
    doc = msgpack.unpackb(encode_dead_letter(key=key, value=b"v" * 900_000, reason="r" * 10_000, topic="t",
                                             partition=0, offset=1), raw=False)
    kafka_key = dead_letter_key(key)
    assert kafka_key is not None and len(kafka_key) + len(msgpack.packb(doc)) < 1_000_000
    assert doc["key_size"] == len(key) and doc["value_size"] == 900_000 and len(doc["reason"]) <= 2000
    assert dead_letter_key(key) == kafka_key and dead_letter_key(b"small") == b"small"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


class FailsOnMarker:
    """The real server, except that every request about a marked conversation fails as a server error would.

    Stands in for an input that makes a server fail (a 500 for that prompt only) while it answers everything
    else and its health check: the failure looks like an outage, but only ever for one record.
    """

    MARKER = "ZX-POISON-7"

    def __init__(self, inner: Any) -> None:
        self.inner, self.model_name, self.failed = inner, inner.model_name, 0

    def generate(self, prompts: Any, sampling: Any, *, seed: Any = None, desc: Any = None) -> list[str | None]:
        from clio_stream.llm.base import RequestsFailed

        if any(self.MARKER in str(p.values.get("conversation", "")) for p in prompts):
            self.failed += 1
            raise RequestsFailed(1, [None] * len(prompts))
        return self.inner.generate(prompts, sampling, seed=seed, desc=desc)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def health(self) -> bool:
        return self.inner.health()

    def close(self) -> None:
        self.inner.close()


def test_a_record_that_fails_alone_is_dead_lettered_after_bounded_tries(
    kafka_broker: Any, qdrant_server: Any, vllm_server: Any, minilm: Any,  # noqa: F811
    unique_name: Callable[[str], str], reliability_report: Callable[..., None],
) -> None:
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=1, llm_backend="openai", llm_base_url=vllm_server.base_url,
                           poison_after_failures=3, backoff_initial_s=0.2, backoff_max_s=1.0)
    convs = [_good(0), _conv("marked", f"Please help {FailsOnMarker.MARKER} with my card"), _good(1), _good(2)]
    send(s.kafka_bootstrap, s.topic, _records(convs))
    llm = FailsOnMarker(make_llm(s))
    worker = ConsumerWorker(s, facets=FACETS, llm=llm, embedder=minilm)
    thread, stop = start_thread(worker)
    deadline = time.monotonic() + 180
    try:
        while worker.metrics.processed + worker.metrics.dead_lettered < len(convs) and time.monotonic() < deadline:
            assert thread.is_alive(), "the worker thread died"
            time.sleep(0.5)
    finally:
        stop_thread(thread, stop)
    snap = worker.metrics_snapshot()
    dead = [decode_dead_letter(r.value) for r in read_topic(s.kafka_bootstrap, s.dlq_topic, expect=1, timeout=20)]
    reliability_report(records=len(convs), processed=snap["processed"], dead_lettered=len(dead),
                       failed_batches=snap["failed_batches"], poison_after_failures=s.poison_after_failures,
                       reasons=[d["reason"][:80] for d in dead])
    assert [bytes(d["key"]) for d in dead] == [b"marked"], dead
    assert "failed on this record alone" in dead[0]["reason"]
    assert snap["processed"] == 3 and snap["failed_batches"] == s.poison_after_failures, snap
