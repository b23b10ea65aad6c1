"""The worker's seams without Kafka: poison isolation, broker reachability, drift per facet."""

from __future__ import annotations

from collections.abc import Sequence

import msgpack
import pytest

from clio_stream.online.drift import DriftMonitor
from clio_stream.settings import ClioSettings
from clio_stream.storage.errors import StoreError
from consumers.decoding import DecodedBatch, Record, RecordLike, decode_records
from consumers.health import BrokerWatch
from consumers import poison
from consumers.poison import process_isolating_poison
from consumers.llm_guard import LLMUnavailable, RecordRejected
from consumers.processing import BatchOutcome


def batch(n: int) -> list[Record]:
    return [Record("t", 0, i, f"c{i}".encode(), msgpack.packb({"id": f"c{i}", "conversation": [
        {"role": "user", "content": f"hello {i}"}]})) for i in range(n)]


class Core:
    """A stand-in for ``process_batch``: the whole batch fails with ``batch_error``; single records by ``errors``."""

    def __init__(self, batch_error: Exception | None, errors: dict[int, Exception]) -> None:
        self.batch_error, self.errors, self.calls = batch_error, errors, []

    def __call__(self, records: Sequence[RecordLike], decoded: DecodedBatch | None) -> BatchOutcome:
        self.calls.append([r.offset for r in records])
        if len(records) > 1 and self.batch_error is not None:
            raise self.batch_error
        if len(records) == 1 and records[0].offset in self.errors:
            raise self.errors[records[0].offset]
        return BatchOutcome([], [], [], [], {("t", 0): (records[0].offset, records[-1].offset)}, llm_calls=1)


def run(core: Core, *, isolate: bool = False, healthy: bool = True, n: int = 4) -> BatchOutcome:
    recs = batch(n)
    return process_isolating_poison(recs, decode_records(recs), core, isolate=isolate, failures=3,
                                    llm_healthy=lambda: healthy, settings=ClioSettings())


def test_a_healthy_batch_is_processed_whole() -> None:
    core = Core(None, {})
    assert run(core).llm_calls == 1 and core.calls == [[0, 1, 2, 3]]


def test_a_poison_record_is_dead_lettered_and_the_rest_processed_one_by_one() -> None:
    core = Core(ValueError("bug"), {1: ValueError("bug"), 2: RecordRejected("refused")})
    out = run(core)
    assert core.calls == [[0, 1, 2, 3], [0], [1], [2], [3]]
    assert [(d.record.offset, d.code) for d in out.dead_letters] == [(1, "processing_failed"), (2, "llm_rejected")]
    assert out.llm_calls == 2 and out.offsets == {("t", 0): (0, 3)}  # the whole batch is committed
    assert sorted(r.conversation_id for r in out.dead_lettered) == ["c1", "c2"]  # no longer pending


@pytest.mark.parametrize("outage", [StoreError("qdrant down"), LLMUnavailable("llm down")])
def test_an_outage_is_never_dead_lettered(outage: Exception) -> None:
    with pytest.raises(type(outage)):
        run(Core(outage, {}))
    with pytest.raises(type(outage)):
        run(Core(ValueError("bug"), {0: outage}))


def test_isolation_dead_letters_a_record_the_llm_fails_on_while_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poison, "ALONE_PAUSE_S", 0.0)
    core = Core(None, {2: LLMUnavailable("500")})
    out = run(core, isolate=True)
    assert core.calls == [[0], [1], [2], [2], [2], [3]]  # no whole-batch attempt; the failing record tried 3 times
    assert [(d.record.offset, d.code) for d in out.dead_letters] == [(2, "llm_failed_repeatedly")]
    assert "alone 3 times after 3 tries" in out.dead_letters[0].reason
    with pytest.raises(LLMUnavailable):  # the LLM itself is down: an outage, retried later
        run(Core(None, {2: LLMUnavailable("500")}), isolate=True, healthy=False)


def test_one_failure_of_a_record_alone_as_the_llm_comes_back_is_not_poison(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server just restarted answers its health check before every request succeeds: the record's first try
    alone fails, the next succeeds, and nothing may be dead-lettered for the outage (seen in test_outages)."""
    monkeypatch.setattr(poison, "ALONE_PAUSE_S", 0.0)

    class FailsOnce(Core):
        def __call__(self, records: Sequence[RecordLike], decoded: DecodedBatch | None) -> BatchOutcome:
            if len(records) == 1 and self.errors.get(records[0].offset) is not None:
                self.calls.append([records[0].offset])
                raise self.errors.pop(records[0].offset)
            return super().__call__(records, decoded)

    core = FailsOnce(None, {1: LLMUnavailable("connection reset")})
    out = run(core, isolate=True)
    assert out.dead_letters == [] and core.calls == [[0], [1], [1], [2], [3]]


def test_broker_watch_reports_unreachable_after_the_grace_and_back_once() -> None:
    w = BrokerWatch(unreachable_s=5.0)
    assert w.observe(False, 0.0) is None
    assert w.observe(True, 10.0) is None  # first miss starts the clock
    assert w.observe(True, 14.0) is None
    assert w.observe(True, 15.0) == "unreachable"
    assert w.observe(False, 16.0) == "back"
    assert w.observe(False, 17.0) is None
    w.observe(True, 20.0)
    w.reset()  # records arrived
    assert w.observe(True, 30.0) is None and w.lost_at == 30.0


def test_drift_watch_groups_points_by_facet_and_version() -> None:
    m = DriftMonitor(delta=0.002, min_increase=0.05)
    stable = [("Request", 1, 0.8)] * 1500 + [("Task", 1, 0.7)] * 300
    assert m.watch(stable, now=1.0) == []
    assert m.watch([("Request", 1, 0.3)] * 400 + [("Task", 1, 0.7)] * 50, now=2.0) == ["Request"]
    snap = m.snapshot()
    assert snap["Request"]["seen"] == 1900 and snap["Task"]["seen"] == 350
    assert snap["Request"]["mean_before"] == pytest.approx(0.2, abs=0.02)  # distance = 1 - similarity
