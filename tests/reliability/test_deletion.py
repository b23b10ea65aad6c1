"""Deleting one user: nothing with the user's text, ids or hash may remain in Qdrant, published versions or caches.

Set-up, all real: a Qdrant server holding every conversation's facet and
conversation points (raw text kept), two published versions of a result that
includes the doomed user's conversations (site with raw messages), a batch
output folder written by ``run_clio`` (result.json, site, checkpoints), and the
API over the store with the current version already loaded in memory. Then
``clio-stream delete-user`` runs as a separate process, and everything is
searched byte by byte (gzip chunks decompressed) for the user's traces, and
the API, which loaded the version before the deletion, is crawled again.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from clio_stream.deletion import UserMatch, scrub_result
from clio_stream.facets import main_facets
from clio_stream.pipeline import run_clio
from clio_stream.privacy import keyed_user_hash
from clio_stream.publish import publish_version
from clio_stream.settings import ClioSettings
from clio_stream.store import ConversationRecord, FacetPoint, QdrantStore
from clio_stream.types import ClioResult, Conversation, ConversationFacets, FacetValue, Message
from tests.fixtures_site import CONCERNING, LANGUAGE, REQUEST, make_site_fixture
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]

DIM = 8
HASH_KEY = "deletion-test-hash-key"
DOOMED = "user-doomed-7741"
TRACE = "Quillon Ravensworth"  # appears only in the doomed user's conversations
DOOMED_LEAF = "request-r2-m0-l1"  # "Baking bread": 3 members before the doomed user joins
KEYS = {"analyst": "analyst-" + "a" * 24, "admin": "admin-" + "d" * 24}


@dataclass
class World:
    settings: ClioSettings
    store: QdrantStore
    publish_dir: Path
    batch_dir: Path
    doomed_ids: list[str]
    client: TestClient


def _doomed_conversations(n: int) -> list[Conversation]:
    return [Conversation(id=f"doomed-{i}", user_id=DOOMED, timestamp=1.7e9 + 3600 * i,
                         messages=[Message(role="user", content=f"Bread recipe for {TRACE}'s bakery, batch {i}"),
                                   Message(role="assistant", content=f"Here is a sourdough plan, {TRACE}.")])
            for i in range(n)]


def _with_doomed(result: ClioResult, doomed: list[Conversation]) -> ClioResult:
    """The fixture result with the doomed user's conversations in one visible leaf (and its ancestors)."""
    result = result.model_copy(deep=True)
    h = result.hierarchies[REQUEST]
    for conv in doomed:
        result.conversations.append(conv)
        result.facet_values.append(ConversationFacets(conversation_id=conv.id, values={
            REQUEST: FacetValue(facet=REQUEST, value=f"The user asked for bread recipes for {TRACE}."),
            LANGUAGE: FacetValue(facet=LANGUAGE, value="English"),
            CONCERNING: FacetValue(facet=CONCERNING, value="1", numeric=1)}))
        node_id: str | None = DOOMED_LEAF
        while node_id is not None:
            node = h.nodes[node_id]
            node.conversation_ids.append(conv.id)
            node.numeric[CONCERNING].histogram[0] += 1
            node.numeric[CONCERNING].count += 1
            node_id = node.parent_id
    for node in h.nodes.values():
        users = {c.id: c.user_id for c in result.conversations}
        node.distinct_users = len({users[c] for c in node.conversation_ids})
    return result


def _store_points(store: QdrantStore, result: ClioResult) -> None:
    rng = np.random.default_rng(0)
    values = {fv.conversation_id: fv.values for fv in result.facet_values}
    points, records = [], []
    for conv in result.conversations:
        user_hash = keyed_user_hash(conv.user_id or "", HASH_KEY)
        for facet, fv in values[conv.id].items():
            points.append(FacetPoint(conversation_id=conv.id, facet=facet, vector=rng.normal(size=DIM),
                                     value=fv.value, numeric=fv.numeric, user_hash=user_hash,
                                     timestamp=conv.timestamp, content_hash=f"h-{conv.id}"))
        records.append(ConversationRecord(conversation_id=conv.id, status="processed", user_hash=user_hash,
                                          timestamp=conv.timestamp, content_hash=f"h-{conv.id}",
                                          raw=[m.model_dump() for m in conv.messages]))
    store.upsert_facets(points)
    store.mark_conversations(records)


def _batch_run(out: Path, doomed: list[Conversation]) -> None:
    """A real ``run_clio`` output folder (scripted model, hash embedder) that includes the doomed user."""
    topics = ["cooking", "python", "travel", "poetry", "taxes", "chess"]
    data: list[Any] = [{"id": f"b{i}", "user_id": f"bu{i % 9}", "conversation": [
        {"role": "user", "content": f"{topics[i % len(topics)]} question number {i}"},
        {"role": "assistant", "content": "an answer"}]} for i in range(36)]
    data += [{"id": c.id, "user_id": c.user_id, "conversation": [m.model_dump() for m in c.messages]} for c in doomed]
    settings = ClioSettings(show_progress=False, n_name_description_samples_per_cluster=1, n_categorize_samples=1,
                            n_rename_samples=1, llm_max_retries=1, min_top_level_size=2,
                            user_id_hash_key=HASH_KEY, show_conversations=True)
    run_clio(main_facets, ScriptedLLM(sensible_script), HashEmbedder(), data, output_dir=out, settings=settings)


def _texts_under(root: Path) -> dict[str, str]:
    """Every file under ``root`` as text, gzip members decompressed."""
    out: dict[str, str] = {}
    for path in root.rglob("*"):
        if path.is_file():
            raw = path.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            out[str(path.relative_to(root))] = raw.decode("utf-8", errors="replace")
    return out


def _qdrant_dump(store: QdrantStore) -> str:
    """Every payload of the three collections, as one JSON text."""
    docs: list[Any] = []
    for name in (store.facets, store.conversations, store.state):
        offset = None
        while True:
            records, offset = store.client.scroll(name, limit=512, offset=offset, with_payload=True)
            docs.extend(r.payload for r in records)
            if offset is None:
                break
    return json.dumps(docs, ensure_ascii=False)


def _traces(world: World) -> list[str]:
    return [TRACE, DOOMED, keyed_user_hash(DOOMED, HASH_KEY), *world.doomed_ids]


@pytest.fixture
def world(qdrant_server: Any, tmp_path: Path) -> Iterator[World]:
    prefix = f"del{uuid.uuid4().hex[:10]}"
    publish_dir = tmp_path / "published"
    settings = ClioSettings(
        qdrant_url=qdrant_server.url, qdrant_grpc_port=qdrant_server.grpc_port, qdrant_prefix=prefix,
        publish_dir=publish_dir, site_chunk_size=4, user_id_hash_key=HASH_KEY, show_conversations=True,
        store_raw_conversations=True, api_keys=",".join(f"{r}:{k}" for r, k in KEYS.items()), api_status_cache_s=0,
    )
    doomed = _doomed_conversations(2)
    result = _with_doomed(make_site_fixture().result, doomed)
    store = QdrantStore.from_settings(settings)
    store.ensure_collections(DIM)
    _store_points(store, result)
    publish_version(result, publish_dir, "v1", settings=settings)
    publish_version(result, publish_dir, "v2", lineage={"old-1": DOOMED_LEAF}, settings=settings)
    batch_dir = tmp_path / "batch"
    _batch_run(batch_dir, doomed)
    app = create_app(settings, store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield World(settings, store, publish_dir, batch_dir, [c.id for c in doomed], client)
    store.close()


def _run_cli(world: World, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "empty.toml").write_text("")
    env = {**os.environ, "CLIO_QDRANT_URL": world.settings.qdrant_url,
           "CLIO_QDRANT_GRPC_PORT": str(world.settings.qdrant_grpc_port), "CLIO_QDRANT_PREFIX": world.settings.qdrant_prefix,
           "CLIO_USER_ID_HASH_KEY": HASH_KEY, "CLIO_PUBLISH_DIR": str(world.publish_dir),
           "CLIO_CONFIG": str(tmp_path / "empty.toml")}
    proc = subprocess.run([sys.executable, "-m", "clio_stream.cli", "delete-user", DOOMED,
                           "--batch-dir", str(world.batch_dir)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for trace in (TRACE, DOOMED, keyed_user_hash(DOOMED, HASH_KEY)):
        assert trace not in proc.stdout + proc.stderr, "the deletion command printed the user's traces"
    return json.loads(proc.stdout)


def _api_get(world: World, path: str) -> Any:
    return world.client.get(path, headers={"Authorization": f"Bearer {KEYS['admin']}"})


def test_delete_user_leaves_no_trace(world: World, tmp_path: Path,
                                     reliability_report: Callable[..., None]) -> None:
    traces = _traces(world)
    # Before: the traces are everywhere (the test would prove nothing otherwise), and the API holds them in memory.
    assert TRACE in _qdrant_dump(world.store)
    assert all(any(TRACE in t for t in _texts_under(d).values()) for d in (world.publish_dir, world.batch_dir))
    assert (world.batch_dir / "checkpoints").is_dir()
    before = _api_get(world, f"/v1/conversations/{world.doomed_ids[0]}")
    assert before.status_code == 200 and TRACE in before.text
    leaf_before = _api_get(world, f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}").json()
    assert leaf_before["size"] == 5

    t0 = time.monotonic()
    report = _run_cli(world, tmp_path)
    seconds = time.monotonic() - t0
    assert report["facet_points"] == 2 * 3 and report["conversations"] == 2
    assert sorted(report["versions_scrubbed"]) == ["v1", "v2"] and report["recluster_requested"]
    assert report["batch_dirs_scrubbed"] and report["checkpoint_files_removed"] > 0

    # Qdrant: no payload of any collection mentions the user.
    dump = _qdrant_dump(world.store)
    leaks = [t for t in traces if t in dump]
    # Published versions and the batch folder: no file (gzip chunks included) mentions the user.
    files = {**{f"published/{k}": v for k, v in _texts_under(world.publish_dir).items()},
             **{f"batch/{k}": v for k, v in _texts_under(world.batch_dir).items()}}
    leaks += [f"{t} in {where}" for where, text in files.items() for t in traces if t in text]
    assert not (world.batch_dir / "checkpoints").exists()
    # The API (which had the old version in memory) answers from the scrubbed version.
    for cid in world.doomed_ids:
        assert _api_get(world, f"/v1/conversations/{cid}").status_code == 404
    leaf = _api_get(world, f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}").json()
    assert leaf["size"] == 3 and leaf["distinct_users"] == leaf_before["distinct_users"] - 1
    crawled = [_api_get(world, p).text for p in (
        f"/v1/facets/{REQUEST}/tree", f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}",
        f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}/conversations?limit=50", "/data/conversations/index.json.gz")]
    leaks += [t for text in crawled for t in traces if t in text]
    assert world.store.get_state("recluster_request")["requested_by"] == "deletion"
    reliability_report(deletion_seconds=round(seconds, 2), facet_points_deleted=report["facet_points"],
                       conversation_points_deleted=report["conversations"],
                       versions_scrubbed=len(report["versions_scrubbed"]),
                       checkpoint_files_removed=report["checkpoint_files_removed"],
                       files_searched=len(files), traces_left=len(leaks))
    assert not leaks, leaks[:10]


def test_scrub_withholds_clusters_that_fall_under_the_minimums(reliability_report: Callable[..., None]) -> None:
    """Removing a user can push a visible cluster under the minimums: it must become withheld, not shrink."""
    result = make_site_fixture().result
    h = result.hierarchies[REQUEST]
    leaf = h.nodes[DOOMED_LEAF]
    assert not leaf.hidden and leaf.size == 3
    owner = next(c for c in result.conversations if c.id == leaf.conversation_ids[0]).user_id
    removed, withheld = scrub_result(result, UserMatch(owner or "", keyed_user_hash(owner or "", HASH_KEY), HASH_KEY),
                                     min_conversations=3, min_users=2)
    assert removed >= 1 and withheld >= 1
    assert leaf.hidden and leaf.hidden_reason and "fewer than 3" in leaf.hidden_reason
    assert all(c.user_id != owner for c in result.conversations)
    assert not any(fv.conversation_id not in {c.id for c in result.conversations} for fv in result.facet_values)
    reliability_report(conversations_removed=removed, clusters_withheld=withheld)
