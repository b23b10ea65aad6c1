"""Facet points read back in pages of point-id order, with their vectors as one float32 matrix.

Qdrant scrolls in point-id order, and facet point ids are uuid5 hashes of (conversation, facet)
(``storage.records.facet_point_id``), so id order is a random order fixed by the data. Two things follow,
and the re-clustering job relies on both:

* the first n points of a facet's window are a uniform random sample of it, and the same sample from run to
  run while the window changes little (a point leaves it only when newer points hash below it):
  ``living.sample``;
* equal slices of the id space (``IdRange.shard``) split the window into shards of about equal size, each
  read on its own, with the next point id as the cursor: ``living.assign_pass`` resumes a shard at its page.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from qdrant_client import grpc, models
from qdrant_client.conversions.conversion import RestToGrpc, value_to_json

from clio_stream.storage.qdrant import QdrantConnection

ID_SPACE = 1 << 128
SCROLL_LIMIT = 2048  # points per scroll request (a page may take several)


def _canonical(pid: str) -> str:
    return str(uuid.UUID(pid))


@dataclass(frozen=True)
class IdRange:
    """Point ids ``start <= id < stop`` (canonical uuid strings compare like the integers Qdrant orders by)."""

    start: str | None = None  # None: from the first point
    stop: str | None = None  # None: to the last point

    @classmethod
    def shard(cls, index: int, shards: int) -> IdRange:
        """Slice ``index`` of ``shards`` equal slices of the uuid space."""
        if not 0 <= index < shards:
            raise ValueError(f"shard {index} is not one of 0..{shards - 1}")
        lo, hi = ID_SPACE * index // shards, ID_SPACE * (index + 1) // shards
        return cls(None if index == 0 else str(uuid.UUID(int=lo)),
                   None if index == shards - 1 else str(uuid.UUID(int=hi)))

    def before_stop(self, pid: str) -> bool:
        return self.stop is None or _canonical(pid) < self.stop


@dataclass
class Page:
    """Points of one page: ids, vectors as stored (not normalised), the payload fields asked for."""

    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any]]
    next: str | None  # the id the next page starts at; None: the range is done

    def __len__(self) -> int:
        return len(self.ids)


def read_page(conn: QdrantConnection, flt: models.Filter | None, cursor: str | None, ids: IdRange, size: int,
              fields: Sequence[str], dim: int) -> Page:
    """Up to ``size`` points matching ``flt`` from ``cursor`` (else the range's start), within ``ids``.

    Against a server over gRPC the answer is read straight from the protobuf messages into one matrix
    (``_grpc_page``): the client's own conversion makes a Python float of every coordinate first.
    """
    if not conn.embedded and conn.prefer_grpc:
        return _grpc_page(conn, flt, cursor, ids, size, fields, dim)
    got_ids: list[str] = []
    vectors: list[Any] = []
    payloads: list[dict[str, Any]] = []
    offset: Any = cursor if cursor is not None else ids.start
    first = True
    while len(got_ids) < size and (first or offset is not None):
        first = False
        with conn.guard("scroll page"):
            records, offset = conn.client.scroll(conn.facets, scroll_filter=flt, limit=min(SCROLL_LIMIT, size - len(got_ids)),
                                                 offset=offset, with_payload=list(fields), with_vectors=True)
        for r in records:
            pid = str(r.id)
            if not ids.before_stop(pid):
                offset = None
                break
            got_ids.append(pid)
            vectors.append(r.vector)
            payloads.append(dict(r.payload or {}))
        if offset is not None and not ids.before_stop(str(offset)):
            offset = None
    matrix = np.asarray(vectors, dtype=np.float32).reshape(len(got_ids), dim) if got_ids else np.zeros((0, dim),
                                                                                                    np.float32)
    return Page(got_ids, matrix, payloads, None if offset is None else str(offset))


def _grpc_page(conn: QdrantConnection, flt: models.Filter | None, cursor: str | None, ids: IdRange, size: int,
               fields: Sequence[str], dim: int) -> Page:
    got_ids: list[str] = []
    matrix = np.empty((size, dim), np.float32)
    payloads: list[dict[str, Any]] = []
    offset = cursor if cursor is not None else ids.start
    grpc_filter = RestToGrpc.convert_filter(flt) if flt is not None else None
    first = True
    while len(got_ids) < size and (first or offset is not None):
        first = False
        request = grpc.ScrollPoints(
            collection_name=conn.facets, filter=grpc_filter, limit=min(SCROLL_LIMIT, size - len(got_ids)),
            offset=grpc.PointId(uuid=offset) if offset is not None else None,
            with_vectors=grpc.WithVectorsSelector(enable=True),
            with_payload=grpc.WithPayloadSelector(include=grpc.PayloadIncludeSelector(fields=list(fields))))
        with conn.guard("scroll page"):
            answer = conn.client.grpc_points.Scroll(request, timeout=conn.timeout_s)
        offset = None
        for point in answer.result:
            pid = point.id.uuid or str(point.id.num)
            if not ids.before_stop(pid):
                break
            vector = point.vectors.vector
            matrix[len(got_ids)] = vector.dense.data if vector.HasField("dense") else vector.data
            got_ids.append(pid)
            payloads.append({k: _scalar(v) for k, v in point.payload.items()})
        else:
            if answer.HasField("next_page_offset"):
                nxt = answer.next_page_offset.uuid or str(answer.next_page_offset.num)
                offset = nxt if ids.before_stop(nxt) else None
    return Page(got_ids, matrix[: len(got_ids)].copy(), payloads, offset)


_SCALARS = ("string_value", "double_value", "integer_value", "bool_value")


def _scalar(value: Any) -> Any:
    """A payload value of a protobuf answer as Python (scalars directly; lists and maps the client's way)."""
    kind = value.WhichOneof("kind")
    if kind in _SCALARS:
        return getattr(value, kind)
    return None if kind == "null_value" or kind is None else value_to_json(value)


def pages(conn: QdrantConnection, flt: models.Filter | None, ids: IdRange, size: int, fields: Sequence[str],
          dim: int, cursor: str | None = None) -> Iterator[Page]:
    """Every page of ``ids`` matching ``flt``, from ``cursor`` on."""
    while True:
        page = read_page(conn, flt, cursor, ids, size, fields, dim)
        if len(page) or page.next is None:
            yield page
        if page.next is None:
            return
        cursor = page.next
