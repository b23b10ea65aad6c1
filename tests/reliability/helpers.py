"""What the fault tests share: cheap conversations, an LLM description for the figures, a killable TCP proxy.

The conversations are real banking77 requests; ``pooled_conversations`` repeats a pool of distinct texts
under fresh ids, so the worker's reuse of facet values by content hash keeps a CPU-sized LLM out of the way
of a long stream (only the distinct texts cost LLM calls) while every conversation is still a separate record,
a separate status point and separate facet points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import os
import socket
import threading
from typing import Any

import numpy as np

from clio_stream.domain.facets import CONCERNING, REQUEST
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import ConversationRecord, FacetPoint
from tests.streaming_helpers import banking, reader_store

log = logging.getLogger(__name__)


def pooled_conversations(n: int, distinct: int, tag: str, skip: int = 200) -> list[dict[str, Any]]:
    """``n`` conversations over ``distinct`` different texts; the first ``distinct`` are all different."""
    pool = banking(distinct, skip, f"{tag}-pool")
    assert len(pool) == distinct, f"banking77 has fewer than {distinct} texts after {skip}"
    return [{"id": f"{tag}-{i:05d}", "user_id": f"user-{i % 7}", "conversation": pool[i % distinct]["conversation"]}
            for i in range(n)]


def llm_description(base_url: str) -> str:
    """What answered the facet questions, for the figures."""
    where = "shared server (CLIO_TEST_VLLM_URL)" if os.environ.get("CLIO_TEST_VLLM_URL") else "session server"
    return f"vLLM OpenAI server, SmolLM2-135M-Instruct, CPU, {where} at {base_url}"


class TcpProxy:
    """A loopback TCP forwarder to ``target`` that can be taken down and brought back on the same port.

    Stands in for an LLM server outage when the tests share a server they must not stop: while down, the
    port refuses connections and every open connection is cut, which is what a client of a dead server sees.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        """Listen (again) on the proxy's port."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="tcp-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


def seed_store(s: ClioSettings, n: int, skip: int, tag: str) -> list[dict[str, Any]]:
    """Store ``n`` processed conversations directly (facet values embedded with MiniLM), as workers would.

    No worker and no LLM: the test is about the re-clustering job, and facet extraction would only add minutes.
    """
    from clio_stream.embedding import Embedder

    convs = banking(n, skip, tag)
    texts = [c["conversation"][0]["content"] for c in convs]
    embedder = Embedder("all-MiniLM-L6-v2", batch_size=64)
    vectors = np.asarray(embedder.encode(texts), dtype=np.float32)
    zero = np.zeros(vectors.shape[1], dtype=np.float32)
    points, records = [], []
    for c, text, vec in zip(convs, texts, vectors):
        points.append(FacetPoint(c["id"], REQUEST.name, vec, value=text, user_hash=c["user_id"], timestamp=0.0))
        points.append(FacetPoint(c["id"], CONCERNING.name, zero, value="1", numeric=1, user_hash=c["user_id"],
                                 timestamp=0.0))
        records.append(ConversationRecord(c["id"], "processed", user_hash=c["user_id"], timestamp=0.0))
    with reader_store(s) as store:
        store.ensure_collections(vectors.shape[1])
        store.points.upsert_facets(points)
        store.points.mark_conversations(records)
    return convs


@dataclass(frozen=True)
class DeltaTally:
    """A replay of the deltas topic from scratch against the stored values (0 double-applied deltas: added == valued)."""

    delta_messages: int
    rejected: int
    valued: int  # stored Request values outside ``exclude``
    added: int  # records the replayed deltas added to the bootstrap clustering


def replayed_delta_tally(store: Any, s: ClioSettings, bootstrap: Any, exclude: set[str],
                         max_records: int = 100_000) -> DeltaTally:
    """Replay every delta with a fresh replica of the bootstrap clustering and count against the store."""
    from consumers.centroids import SharedCentroids
    from consumers.deltas_io import receive
    from tests.streaming_helpers import facet_payloads, read_topic

    replica = SharedCentroids([REQUEST.name], int(bootstrap.dim))
    assert replica.refresh(store.versions) == [REQUEST.name]
    records = read_topic(s.kafka_bootstrap, s.deltas_topic, max_records, timeout=10)
    report = replica.apply([receive(r) for r in records])
    valued = sum(1 for cid, p in facet_payloads(store, REQUEST.name).items() if cid not in exclude and p.get("value"))
    added = int(replica.models[REQUEST.name].counts.sum() - bootstrap.counts.sum())
    return DeltaTally(len(records), len(report.rejected), valued, added)
