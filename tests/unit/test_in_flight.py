"""Batches in flight (consumers/in_flight.py): handed back in poll order, bounded, given up with where to seek."""

from __future__ import annotations

import threading

from consumers.decoding import Record
from consumers.in_flight import InFlight, rewind_targets
from consumers.processing import BatchOutcome


def records(partition: int, first: int, n: int) -> list[Record]:
    return [Record("t", partition, first + i, None, b"") for i in range(n)]


def outcome(recs: list[Record]) -> BatchOutcome:
    return BatchOutcome([], [], [], [], {("t", recs[0].partition): (recs[0].offset, recs[-1].offset)})


def test_batches_come_back_in_launch_order_even_when_a_later_one_finishes_first() -> None:
    gate = threading.Event()
    flight = InFlight(limit=3)
    first = records(0, 0, 4)
    second = records(0, 4, 4)

    def slow() -> BatchOutcome:
        gate.wait(10)
        return outcome(first)

    a = flight.launch(first, slow)
    b = flight.launch(second, lambda: outcome(second))
    assert b.done.wait(5) and not a.done.is_set()
    assert flight.take_done() is None  # the second is done, but the first is not: nothing may be written yet
    gate.set()
    assert a.done.wait(5)
    assert flight.take_done() is a and flight.take_done() is b and flight.take_done() is None


def test_a_failure_is_kept_for_the_worker_and_the_limit_counts_abandoned_batches_still_running() -> None:
    gate = threading.Event()
    flight = InFlight(limit=2)

    def boom() -> BatchOutcome:
        raise RuntimeError("llm down")

    def stuck() -> BatchOutcome:
        gate.wait(10)
        return outcome(records(1, 0, 1))

    failed = flight.launch(records(0, 10, 2), boom)
    flight.launch(records(1, 0, 1), stuck)
    assert not flight.has_room()
    assert failed.done.wait(5) and isinstance(failed.error, RuntimeError)
    dropped = flight.abandon_all()
    assert [b.abandoned for b in dropped] == [True, True] and len(flight) == 0
    assert flight.has_room()
    again = flight.launch(records(0, 10, 2), lambda: (gate.wait(10), outcome(records(0, 10, 2)))[1])
    assert not flight.has_room()  # the stuck one still runs (an LLM call cannot be recalled) and counts
    gate.set()
    assert flight.wait_for_abandoned(5) and again.done.wait(5) and flight.take_done() is again
    assert flight.has_room()


def test_rewind_targets_are_the_earliest_first_offset_per_partition() -> None:
    flight = InFlight(limit=4)
    batches = [flight.failed(records(0, 8, 4), RuntimeError("x")), flight.failed(records(0, 12, 4), RuntimeError("x")),
               flight.failed(records(0, 16, 2) + records(1, 3, 2), RuntimeError("x"))]
    assert rewind_targets(batches[1:]) == {("t", 0): 12, ("t", 1): 3}
    assert rewind_targets(batches) == {("t", 0): 8, ("t", 1): 3}
