"""What the re-clustering fault tests share: a small corpus, the job's settings, and what readers see.

"What readers see" is asked of the readers themselves: the store's version
pointers (the workers), the publish pointer (the static site) and the API's
member pages (``GET /v1/facets/{facet}/clusters/{leaf}/conversations``) for every
leaf of the version it serves, so "0 lost / 0 duplicated" is counted as a
user of the API would count it.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clio_stream.domain.facets import main_facets
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.storage.published import PublishedVersions
from clio_stream.settings import ClioSettings
from clio_stream.storage.records import FacetPoint
from clio_stream.storage.store import QdrantStore
from tests.unit.fakes import HashEmbedder

TOPICS = ["cooking", "python", "travel", "poetry", "taxes", "gardening"]
TREE = [f.name for f in main_facets if f.has_hierarchy]
ANALYST_KEY = "analyst-key-for-fault-tests"
REPO = Path(__file__).resolve().parents[1]


PAGE_SIZE = 16  # pages of the assignment pass: a facet of this corpus takes several


def job_settings(**overrides: Any) -> ClioSettings:
    """Settings of the job under test: the fast, fake-LLM ones the unit tests use, with small pages."""
    return ClioSettings(**{"show_progress": False, "n_name_description_samples_per_cluster": 1,
                           "n_rename_samples": 1, "n_categorize_samples": 1, "llm_max_retries": 0,
                           "min_top_level_size": 2, "min_cluster_users": 1, "min_cluster_conversations": 1,
                           "api_keys": f"analyst:{ANALYST_KEY}", "recluster_page_size": PAGE_SIZE, **overrides})


def points(emb: HashEmbedder, start: int, n: int, models: dict[str, OnlineKMeans] | None = None,
           time_of: Callable[[int], float | None] | None = None) -> list[FacetPoint]:
    """Conversations ``start..start+n`` over TOPICS; with ``models``, labelled as a worker on them would label;
    ``time_of``: conversation ``i``'s time (default: none)."""
    out = []
    for i in range(start, start + n):
        topic = TOPICS[i % len(TOPICS)]
        for f in main_facets:
            value = {"Request": f"The user's overall request for the assistant is to {topic} help {i % 3}",
                     "Task": f"The task is to {topic} task", "Language": "English", "Concerning": "1"}[f.name]
            vec = emb.encode([value])[0] if f.has_hierarchy else np.zeros(emb.dim, dtype=np.float32)
            p = FacetPoint(conversation_id=f"c{i}", facet=f.name, vector=vec, value=value,
                           numeric=1 + i % 5 if f.numeric else None, user_hash=f"u{i % 15}",
                           timestamp=time_of(i) if time_of is not None else None)
            model = (models or {}).get(f.name)
            if model is not None:
                a = model.assign_many(vec)[0]
                p.cluster_id, p.cluster_version = a.cluster, model.version
                p.similarity, p.outlier = a.similarity, a.is_outlier
            out.append(p)
    return out


def worker_models(store: QdrantStore) -> dict[str, OnlineKMeans]:
    """The models a worker would load now (the current version pointers' centroids)."""
    out = {}
    for name in TREE:
        doc = store.versions.get_centroids(name)
        if doc is not None:
            out[name] = OnlineKMeans.from_state(doc)
    return out


@dataclass
class Served:
    """What every reader follows, and what the API pages for it."""

    store: dict[str, int | None]  # facet -> version pointer
    published: str | None  # the publish pointer
    api: str | None  # the version the API's member pages answer for
    members: dict[str, Counter]  # facet -> conversation id -> how many leaves of that version list it


def served(store: QdrantStore, publish_dir: Path, settings: ClioSettings) -> Served:
    """Ask the readers."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    current = PublishedVersions.at(publish_dir).load_current()
    members: dict[str, Counter] = {}
    api_version = None
    if current is not None:
        app = create_app(settings.with_overrides(publish_dir=publish_dir, api_max_page_size=1000), store=store)
        with TestClient(app) as client:
            for facet, h in current.result.hierarchies.items():
                seen: Counter = Counter()
                for leaf in h.leaves():
                    cursor = None
                    while True:
                        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
                        r = client.get(f"/v1/facets/{facet}/clusters/{leaf.id}/conversations", params=params,
                                       headers={"Authorization": f"Bearer {ANALYST_KEY}"})
                        assert r.status_code == 200, r.text
                        body = r.json()
                        api_version = body["version"]
                        seen.update(item["conversation_id"] for item in body["items"])
                        cursor = body["next_cursor"]
                        if cursor is None:
                            break
                members[facet] = seen
    return Served(store={f: store.versions.current_version(f) for f in TREE},
                  published=PublishedVersions.at(publish_dir).read_pointer(),
                  api=api_version, members=members)


def conversation_leaf(store: QdrantStore, publish_dir: Path, settings: ClioSettings, cid: str,
                      facet: str) -> tuple[str | None, int | None]:
    """The leaf id and clustering version ``GET /v1/conversations/{cid}`` answers for ``facet``."""
    from fastapi.testclient import TestClient

    from api.app import create_app

    app = create_app(settings.with_overrides(publish_dir=publish_dir), store=store)
    with TestClient(app) as client:
        r = client.get(f"/v1/conversations/{cid}", headers={"Authorization": f"Bearer {ANALYST_KEY}"})
    assert r.status_code == 200, r.text
    answer = r.json()["facets"][facet]
    return answer.get("cluster_id"), answer.get("cluster_version")


def stored_conversations(store: QdrantStore, facet: str) -> set[str]:
    """Conversations with an embedded value of ``facet`` in the store (what a version must list)."""
    out = set()
    for _, vectors, payloads in store.points.scroll_vectors(facet):
        for vec, p in zip(vectors, payloads):
            if p.get("value") and np.linalg.norm(vec) > 0:
                out.add(p["conversation_id"])
    return out


def assert_complete(s: Served, store: QdrantStore) -> None:
    """The API's version lists every stored conversation exactly once per facet: 0 lost, 0 duplicated."""
    for facet in TREE:
        counts = s.members.get(facet, Counter())
        duplicated = sorted(c for c, k in counts.items() if k > 1)
        lost = sorted(stored_conversations(store, facet) - set(counts))
        assert not duplicated and not lost, (facet, s.api, lost[:5], duplicated[:5])


def driver_argv(url: str, grpc_port: int, prefix: str, publish_dir: Path, lock_ttl_s: float) -> list[str]:
    """The command line of ``tests.recluster_driver`` (one re-clustering run as its own process)."""
    return [sys.executable, "-m", "tests.recluster_driver", url, str(grpc_port), prefix, str(publish_dir),
            str(lock_ttl_s)]
