"""Cluster labels of facet points: one payload field per clustering version, written, indexed and dropped here.

Writing version N's labels into N's own field leaves N-1's readable, so readers that filter on the version
they serve never see a half-relabelled cluster (see :func:`clio_stream.storage.records.label_field`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from qdrant_client import grpc, models

from clio_stream.storage.qdrant import QdrantConnection, eq, is_empty
from clio_stream.storage.records import label_field


def label_filter(*, facet: str | None = None, cluster_id: int | None = None, version: int | None = None,
                 user_hash: str | None = None) -> models.Filter | None:
    """Points of ``facet`` (and ``user_hash``) in ``cluster_id`` under ``version`` (see ``label_field``).

    ``version`` without a cluster: every point labelled under it; a cluster without a version: the latest label.
    """
    must: list[Any] = [eq(k, v) for k, v in (("facet", facet), ("user_hash", user_hash)) if v is not None]
    if version is not None and cluster_id is not None:
        must.append(eq(label_field(version), int(cluster_id)))
    elif cluster_id is not None:
        must.append(eq("cluster_id", int(cluster_id)))
    flt = models.Filter(must=must) if must else None
    if version is not None and cluster_id is None:
        flt = models.Filter(must=must, must_not=[is_empty(label_field(version))])
    return flt


class Labels:
    """The version-scoped cluster labels of the facet collection."""

    def __init__(self, conn: QdrantConnection) -> None:
        self.conn = conn

    def write(
        self,
        facet: str,
        labels: Mapping[str, int],
        version: int,
        *,
        similarities: Mapping[str, float] | None = None,
        outliers: Mapping[str, bool] | None = None,
        ops_per_request: int = 500,
        latest: bool = True,
        wait: bool = True,
    ) -> int:
        """Write cluster ids (and optionally similarity / outlier) of ``facet``'s points under ``version``.

        The label goes into the version's own field (``label_field``) and into ``cluster_id`` /
        ``cluster_version`` (the latest label); other versions' fields are left alone. Points are selected by
        id through a filter (a has-id condition), so an id deleted in the meantime (a user's deletion) is
        skipped instead of failing the whole batch (Qdrant refuses a batch naming a missing point id). Facet
        point ids are unique per (conversation, facet) (``records.facet_point_id``), so the ids alone select
        ``facet``'s points: no second condition for Qdrant to check on every point. Without per-point extras,
        points of one cluster share one operation (sent as gRPC messages built directly against a server).
        ``latest=False`` writes the version's field only (the assignment pass: the latest-label fields are
        indexed, and updating indexes costs most of a label write; they stay the online assignment's).
        ``wait=False`` returns once Qdrant has the operations in its write-ahead log (applied in order: a later
        write with ``wait=True`` returns after all of them). Returns the number of ids given.
        """
        if similarities is None and outliers is None and not self.conn.embedded and self.conn.prefer_grpc:
            return self._write_grouped_grpc(labels, version, ops_per_request=ops_per_request, latest=latest,
                                            wait=wait)
        ops: list[models.SetPayloadOperation] = []
        if similarities is None and outliers is None:
            ops = [_set_payload_op(ids, payload) for payload, ids in _cluster_groups(labels, version, latest)]
        else:
            for pid, cid in labels.items():
                payload: dict[str, Any] = {label_field(version): int(cid), "cluster_id": int(cid),
                                           "cluster_version": int(version)}
                if similarities is not None and pid in similarities:
                    payload["similarity"] = float(similarities[pid])
                if outliers is not None and pid in outliers:
                    payload["outlier"] = bool(outliers[pid])
                ops.append(_set_payload_op([str(pid)], payload))
        for start in range(0, len(ops), ops_per_request):
            with self.conn.guard("set labels"):
                self.conn.client.batch_update_points(self.conn.facets, ops[start : start + ops_per_request],
                                                     wait=wait)
        return len(labels)

    def _write_grouped_grpc(self, labels: Mapping[str, int], version: int, *, ops_per_request: int, latest: bool,
                            wait: bool) -> int:
        """``write`` without per-point extras, as the client's own gRPC messages: one operation per cluster
        (1,000 ids at most), built directly instead of as REST models converted one by one (which cost the
        assignment pass about a tenth of its time). Same selection (a has-id filter) and order."""
        ops: list[grpc.PointsUpdateOperation] = []
        for payload, ids in _cluster_groups(labels, version, latest):
            has_id = grpc.HasIdCondition(has_id=[_grpc_id(p) for p in ids])
            selector = grpc.PointsSelector(filter=grpc.Filter(must=[grpc.Condition(has_id=has_id)]))
            values = {key: grpc.Value(integer_value=v) for key, v in payload.items()}
            ops.append(grpc.PointsUpdateOperation(set_payload=grpc.PointsUpdateOperation.SetPayload(
                payload=values, points_selector=selector)))
        for start in range(0, len(ops), ops_per_request):
            request = grpc.UpdateBatchPoints(collection_name=self.conn.facets, wait=wait,
                                             operations=ops[start : start + ops_per_request])
            with self.conn.guard("set labels"):
                self.conn.client.grpc_points.UpdateBatch(request, timeout=self.conn.timeout_s)
        return len(labels)

    def barrier(self) -> None:
        """Return once every label write sent before has been applied (writes are applied in order)."""
        nothing = models.Filter(must=[eq("facet", "\x00none")])
        with self.conn.guard("label barrier"):
            self.conn.client.set_payload(self.conn.facets, payload={"barrier": True}, points=nothing, wait=True)

    def distinct_users(self, facet: str, version: int, clusters: Sequence[int], *, most: int) -> int:
        """Distinct user hashes among ``facet``'s points labelled under ``version`` with one of ``clusters``.

        Counted by Qdrant (its facet counts over the user hash index), exactly up to ``most``; ``most + 1``
        means "more than ``most``" (the answer holds at most that many values). Points without a user hash
        are not counted here.
        """
        if not clusters or most <= 0:
            return 0
        flt = models.Filter(must=[eq("facet", facet), models.FieldCondition(
            key=label_field(version), match=models.MatchAny(any=[int(c) for c in clusters]))])
        with self.conn.guard("count distinct users"):
            hits = self.conn.client.facet(self.conn.facets, key="user_hash", facet_filter=flt, limit=int(most) + 1,
                                          exact=True).hits
        return len(hits)

    def index(self, version: int) -> None:
        """Index ``version``'s label field (server only), so filtering a cluster's members stays an index lookup."""
        if self.conn.embedded:
            return
        with self.conn.guard("create label index"):
            self.conn.client.create_payload_index(self.conn.facets, label_field(version),
                                                  field_schema=models.PayloadSchemaType.INTEGER, wait=True)

    def drop(self, versions: Sequence[int]) -> None:
        """Remove the label fields (and their indexes) of ``versions`` from every facet point."""
        if not versions:
            return
        keys = [label_field(v) for v in versions]
        with self.conn.guard("drop labels"):
            has_any = models.Filter(should=[models.Filter(must_not=[is_empty(k)]) for k in keys])
            self.conn.client.delete_payload(self.conn.facets, keys=keys, points=has_any, wait=True)
        if self.conn.embedded:
            return
        existing = set((self.conn.facet_collection_info().payload_schema or {}).keys())
        for key in keys:
            if key in existing:
                with self.conn.guard("drop label index"):
                    self.conn.client.delete_payload_index(self.conn.facets, key, wait=True)


GROUP_IDS = 1000  # ids in one grouped operation


def _cluster_groups(labels: Mapping[str, int], version: int,
                    latest: bool) -> Iterator[tuple[dict[str, int], list[str]]]:
    """The grouped write's operations: the points of one cluster share one payload, ``GROUP_IDS`` ids at most."""
    by_cluster: dict[int, list[str]] = defaultdict(list)
    for pid, cid in labels.items():
        by_cluster[int(cid)].append(str(pid))
    for cid, ids in by_cluster.items():
        latest_fields = {"cluster_id": cid, "cluster_version": int(version)} if latest else {}
        payload = {label_field(version): cid, **latest_fields}
        for start in range(0, len(ids), GROUP_IDS):
            yield payload, ids[start : start + GROUP_IDS]


def _set_payload_op(ids: list[str], payload: dict[str, Any]) -> models.SetPayloadOperation:
    flt = models.Filter(must=[models.HasIdCondition(has_id=ids)])
    return models.SetPayloadOperation(set_payload=models.SetPayload(payload=payload, filter=flt))


def _grpc_id(pid: str) -> grpc.PointId:
    return grpc.PointId(num=int(pid)) if pid.isdigit() else grpc.PointId(uuid=pid)
