"""A bounded, uniform sample of one facet's window: what the re-clustering job fits k-means on and names from.

The sample is the window's first ``recluster_sample_size`` embedded values in point-id order. Point ids are
uuid5 hashes (``storage.vector_pages``), so that is a uniform random sample without replacement, drawn by the
store's own scroll with no count and no second pass. It is chosen over Qdrant's random-sample query because it
is *stable*: run after run the same points stay in it (a point leaves only when newer points hash below it),
so matching a new clustering to the previous version's sampled members (``living.matching``) compares mostly
the same conversations, ids and names survive, and a re-run on unchanged data reproduces the same sample.
A random draw per run would share few members with the previous one and make every cluster look changed.

Besides the facet's own values, the sampled conversations' other facets (value and numeric answer) are read
by their deterministic point ids: naming and the published result need them, the fit does not.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clio_stream.domain.facets import Facet
from clio_stream.domain.vectors import normalise_rows
from clio_stream.living.stored import Stored, StoredConversation, StoredFacet
from clio_stream.living.window import Window
from clio_stream.storage.records import facet_point_id
from clio_stream.storage.store import QdrantStore
from clio_stream.storage.vector_pages import IdRange, read_page

FIELDS = ("value", "conversation_id", "user_hash", "timestamp", "numeric")
RETRIEVE_BATCH = 1000


def sample_facet(store: QdrantStore, facet: Facet, window: Window, size: int, dim: int) -> StoredFacet:
    """The first ``size`` embedded values of ``facet`` in the window, in point-id order, as unit vectors."""
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    convs: list[str] = []
    values: list[str] = []
    cursor: str | None = None
    flt = window.facet_filter(facet.name)
    while len(ids) < size:
        page = read_page(store, flt, cursor, IdRange(), min(size - len(ids), 4096), FIELDS, dim)
        norms = np.linalg.norm(page.vectors, axis=1) if len(page) else np.zeros(0)
        for pid, vec, norm, payload in zip(page.ids, page.vectors, norms, page.payloads):
            if payload.get("conversation_id") and payload.get("value") and norm > 0 and len(ids) < size:
                ids.append(pid)
                vecs.append(vec)
                convs.append(str(payload["conversation_id"]))
                values.append(str(payload["value"]))
        if page.next is None:
            break
        cursor = page.next
    matrix = np.asarray(vecs, dtype=np.float32).reshape(len(ids), dim)
    return StoredFacet(ids, normalise_rows(matrix), convs, values)


def sampled_conversations(store: QdrantStore, conversation_ids: Sequence[str],
                          facets: Sequence[Facet]) -> dict[str, StoredConversation]:
    """Every facet's stored payload of the given conversations (user, time, value and numeric answer)."""
    out: dict[str, StoredConversation] = {}
    wanted = list(dict.fromkeys(conversation_ids))
    for start in range(0, len(wanted), RETRIEVE_BATCH):
        chunk = wanted[start : start + RETRIEVE_BATCH]
        pids = [facet_point_id(cid, f.name) for cid in chunk for f in facets]
        with store.guard("retrieve sampled conversations"):
            found = store.client.retrieve(store.facets, pids, with_payload=list(FIELDS) + ["facet"],
                                          with_vectors=False)
        for r in found:
            p = r.payload or {}
            cid, name = p.get("conversation_id"), p.get("facet")
            if not cid or not name:
                continue
            entry = out.setdefault(str(cid), StoredConversation(p.get("user_hash"), p.get("timestamp")))
            entry.values[str(name)] = (p.get("value"), p.get("numeric"))
    return out


def sample_store(store: QdrantStore, facets: Sequence[Facet], window: Window, size: int) -> Stored:
    """Each hierarchy facet's sample (with its window's point count), and every facet of the conversations in
    any of them."""
    dim = store.vector_size()
    samples: dict[str, StoredFacet] = {}
    for f in facets:
        if f.has_hierarchy:
            samples[f.name] = sample_facet(store, f, window, size, dim)
            samples[f.name].window_points = store.points.count_window(window.facet_filter(f.name)) \
                if len(samples[f.name].point_ids) >= size else len(samples[f.name].point_ids)
    cids = [cid for s in samples.values() for cid in s.conversation_ids]
    return Stored(samples, sampled_conversations(store, cids, facets), window)
