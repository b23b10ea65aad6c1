"""Hostile and malformed records on the centroid-deltas topic: rejected with a reason, the rest still applied."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from clio_stream.domain.vectors import normalise_rows
from clio_stream.online.deltas import DELTA_FORMAT, CentroidDeltas
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from consumers.centroids import SharedCentroids
from consumers.decoding import Record
from consumers.deltas_io import encode_deltas, receive
from consumers.worker import ConsumerWorker
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

K, DIM, FACET, TOPIC = 3, 8, "Request", "clio.conversations"


def shared_model(version: int = 1) -> SharedCentroids:
    rng = np.random.default_rng(0)
    shared = SharedCentroids([FACET, "Language"], DIM)
    shared.models[FACET] = OnlineKMeans(normalise_rows(rng.standard_normal((K, DIM))), counts=[5, 5, 5],
                                        version=version, facet=FACET)
    return shared


def good_doc(offset: int, cluster: int = 0, partition: int = 0) -> dict[str, Any]:
    vec = normalise_rows(np.random.default_rng(offset).standard_normal((1, DIM)))
    return CentroidDeltas(FACET, 1, TOPIC, partition, offset, offset, np.array([offset]), np.array([cluster]), vec,
                          np.array([False])).to_dict()


def vectors_field(rows: np.ndarray, dtype: str = "float32") -> dict[str, Any]:
    arr = np.ascontiguousarray(rows, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "shape": list(arr.shape), "b64": base64.b64encode(arr.tobytes()).decode()}


def with_(doc: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**doc, **changes}).encode()


def hostile_values() -> list[tuple[str, bytes | None, str]]:
    """(kind, record value, words the rejection reason must contain)."""
    g = good_doc(100)
    unit = np.asarray(normalise_rows(np.ones((1, DIM))))
    three = normalise_rows(np.ones((3, DIM)))
    nan, inf = unit.copy(), unit.copy()
    nan[0, 0], inf[0, 1] = np.nan, np.inf
    return [
        ("length mismatch", with_(g, clusters=[0, 1]), "lengths differ"),
        ("vector rows mismatch", with_(g, vectors=vectors_field(three)), "shape"),
        ("empty lists", with_(g, offsets=[], clusters=[], outliers=[], vectors=vectors_field(np.zeros((0, DIM)))),
         "0 records"),
        ("NaN vector", with_(g, vectors=vectors_field(nan)), "NaN"),
        ("inf vector", with_(g, vectors=vectors_field(inf)), "NaN or infinity"),
        ("huge norm", with_(g, vectors=vectors_field(unit * 1e30)), "unit length"),
        ("zero vector", with_(g, vectors=vectors_field(np.zeros((1, DIM)))), "unit length"),
        ("one record counted many times", with_(g, offsets=[100] * 3, clusters=[0] * 3, outliers=[False] * 3,
                                                vectors=vectors_field(three)), "strictly increasing"),
        ("old format with huge counts", with_(g, format="clio-centroid-deltas/1", counts=[10**15]), "format"),
        ("huge range", with_(g, first=0, last=10**15), "spans more"),
        ("offset outside its range", with_(g, first=0, last=50), "outside the range"),
        ("negative cluster", with_(g, clusters=[-1]), "clusters -1 below 0"),
        ("cluster out of range", with_(g, clusters=[K]), "outside [0, 3)"),
        ("wrong dim", with_(g, dim=DIM * 2, vectors=vectors_field(normalise_rows(np.ones((1, DIM * 2))))),
         "dimension"),
        ("float64 vectors", with_(g, vectors=vectors_field(unit, "float64")), "float32"),
        ("bool version", with_(g, version=True), "version is not an integer"),
        ("float offset", with_(g, offsets=[100.5]), "offsets is not an integer"),
        ("unknown facet", with_(g, facet="Nope"), "unknown facet"),
        ("missing fields", json.dumps({"format": DELTA_FORMAT}).encode(), "missing fields"),
        ("garbage bytes", b"\xff\x00{not json", "not JSON"),
        ("truncated JSON", encode_deltas(CentroidDeltas.from_dict(g))[:-7], "not JSON"),
        ("JSON list", b"[]", "not a JSON object"),
        ("JSON null", b"null", "not a JSON object"),
        ("tombstone", None, "empty record"),
        ("bad base64", with_(g, vectors={**g["vectors"], "b64": "!!!!"}), "base64"),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ]


def as_records(values: list[bytes | None]) -> list[Record]:
    return [Record("clio.centroid-deltas", 0, i, FACET.encode(), v) for i, v in enumerate(values)]


def test_every_hostile_delta_is_rejected_with_its_reason_and_the_good_ones_still_apply() -> None:
    shared = shared_model()
    model = shared.models[FACET]
    before_counts = model.counts.copy()
    hostile = hostile_values()
    # Good deltas before, between and after the hostile ones, in one drained list.
    values: list[bytes | None] = [with_(good_doc(1, 0))]
    for i, (_, value, _) in enumerate(hostile):
        values.append(value)
        if i == len(hostile) // 2:
            values.append(with_(good_doc(2, 1)))
    values.append(with_(good_doc(3, 2)))
    report = shared.apply([receive(r) for r in as_records(values)])
    assert (report.applied, report.records) == (3, 3)
    reasons = {item.record.value: item.reason for item in report.rejected}
    assert len(report.rejected) == len(hostile)
    for kind, value, words in hostile:
        assert words in (reasons.get(value) or ""), f"{kind}: {reasons.get(value)!r}"
    np.testing.assert_array_equal(model.counts, before_counts + np.array([1, 1, 1]))
    assert np.all(np.isfinite(model.centroids))
    # Assignment still works and gives finite similarities (NaN centroids would put everything in cluster 0).
    probe = normalise_rows(np.random.default_rng(9).standard_normal((20, DIM)))
    got = model.assign_many(probe)
    assert np.all(np.isfinite(got.similarities)) and len(set(got.labels.tolist())) > 1


def test_a_drained_list_merges_as_its_deltas_would_one_by_one() -> None:
    # Good deltas, a redelivery of one of them, a stale one and a bad one in one drained list: the bad one
    # gets its own reason, the redelivery and the stale one add nothing, the rest merge once each.
    values = [with_(good_doc(1, 0)), with_(good_doc(2, 1)), with_(good_doc(1, 0)),
              with_(good_doc(4, 2), version=0), with_(good_doc(5, 0), clusters=[K]), with_(good_doc(6, 2))]
    shared, reference = shared_model(), shared_model()
    report = shared.apply([receive(r) for r in as_records(values)])
    assert (report.applied, report.records) == (3, 3)
    rejected = [(item.record.offset, item.reason) for item in report.rejected]
    assert rejected == [(4, f"cluster index {K} outside [0, {K})")]
    model = reference.models[FACET]
    for value in values[:4] + values[5:]:
        model.apply_deltas(CentroidDeltas.from_dict(json.loads(value)))
    np.testing.assert_array_equal(shared.models[FACET].counts, model.counts)
    np.testing.assert_allclose(shared.models[FACET].centroids, model.centroids, atol=1e-7)


def test_a_stale_version_is_skipped_not_rejected() -> None:
    shared = shared_model(version=2)
    report = shared.apply([receive(r) for r in as_records([with_(good_doc(1))])])
    assert (report.applied, report.rejected) == (0, [])


def test_random_bytes_never_raise_out_of_the_reader() -> None:
    rng = random.Random(3)
    good = with_(good_doc(1))
    for _ in range(300):
        raw = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        item = receive(Record("d", 0, 0, None, bytes(raw)))  # must not raise
        assert (item.deltas is None) == (item.reason is not None)


class _Reader:
    """A deltas reader that hands out a fixed list (what the background thread would have queued)."""

    def __init__(self, values: list[bytes | None]) -> None:
        self.values = values

    def drain(self) -> list:
        return [receive(r) for r in as_records(self.values)]

    def rewind(self) -> None:
        return None


class _DeadLetters:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)

    def flush(self, timeout: float | None = None) -> None:
        return None


@pytest.fixture
def store() -> Iterator[QdrantStore]:
    s = QdrantStore(":memory:", keep_raw=True)
    s.ensure_collections(DIM)
    yield s
    s.close()


def test_the_worker_dead_letters_rejected_deltas_once_and_counts_them(store) -> None:
    worker = ConsumerWorker(ClioSettings(show_progress=False), llm=ScriptedLLM(sensible_script),
                            embedder=HashEmbedder(), store=store)
    worker.centroids = shared_model()
    hostile = hostile_values()
    worker._deltas = _Reader([with_(good_doc(1)), *(v for _, v, _ in hostile), with_(good_doc(2))])  # type: ignore[assignment]
    worker._dlq = _DeadLetters()  # type: ignore[assignment]
    worker._sync_centroids()
    worker._sync_centroids()  # a rewind replays the topic: no second dead letter
    snap = worker.metrics_snapshot()
    assert snap["deltas_rejected"] == 2 * len(hostile) and snap["deltas_applied"] == 2
    sent = worker._dlq.sent  # type: ignore[attr-defined]
    assert len(sent) == len(hostile)
    assert all(s["reason"].startswith("centroid delta rejected: ") for s in sent)
    assert [s["value"] for s in sent] == [v for _, v, _ in hostile]
    assert {s["topic"] for s in sent} == {"clio.centroid-deltas"}
