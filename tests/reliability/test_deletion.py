"""Deleting one user: nothing with the user's text, ids or hash may remain in Qdrant, published versions or caches.

The deployed topology is tested as deployed: the API runs as a process that sees the publish
directory as a read-only mount (deploy/compose mounts it ``:ro``), records the request, and the
scheduler's loop (the owner of the publish directory) scrubs it. Also: repeated requests are one
request; a re-clustering that scrolled before the deletion publishes without the user; a worker
drops a deleted user's records that arrive after the deletion (and commits them).

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
import hashlib
import json
import logging
import os
import shutil
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
from clio_stream.living import job as recluster
from clio_stream.living import clustering_job
from clio_stream.privacy.deletion import DeletionPass, process_deletions
from clio_stream.privacy.scrub import UserMatch, scrub_result
from clio_stream.domain.facets import main_facets
from clio_stream.pipeline import run_clio
from clio_stream.privacy.users import keyed_user_hash
from clio_stream.storage.published import POINTER_CHECK_S, PublishedVersions
from clio_stream.living.service import ReclusterService
from clio_stream.living.scheduler import Triggers
from clio_stream.devstack.processes import ManagedProcess, free_port, http_probe
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import RECLUSTER_REQUEST
from clio_stream.storage.records import ConversationRecord, FacetPoint
from clio_stream.storage.store import QdrantStore
from consumers.worker import ConsumerWorker
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.clusters import ClioResult
from tests.fixtures_site import CONCERNING, LANGUAGE, REQUEST, make_site_fixture
from tests.streaming_helpers import (
    FACETS,
    committed,
    processed_count,
    reader_store,
    send_conversations,
    start_thread,
    stop_thread,
    streaming_settings,
    wait_for,
)
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
    store.points.upsert_facets(points)
    store.points.mark_conversations(records)


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
        deletion_sweep_delay_s=0.5,
    )
    doomed = _doomed_conversations(2)
    result = _with_doomed(make_site_fixture().result, doomed)
    store = QdrantStore.from_settings(settings)
    store.ensure_collections(DIM)
    _store_points(store, result)
    PublishedVersions.at(publish_dir).publish(result, "v1", settings=settings)
    PublishedVersions.at(publish_dir).publish(result, "v2", lineage={"old-1": DOOMED_LEAF}, settings=settings)
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
           "CLIO_CONFIG": str(tmp_path / "empty.toml"), "CLIO_DELETION_SWEEP_DELAY_S": "0"}
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
    assert report["status"] == "done" and world.store.deletions.get(report["request_id"])["status"] == "done"
    assert report["batch_dirs_scrubbed"] and report["checkpoint_files_removed"] > 0

    # Qdrant: no payload of any collection mentions the user.
    dump = _qdrant_dump(world.store)
    leaks = [t for t in traces if t in dump]
    # Published versions and the batch folder: no file (gzip chunks included) mentions the user.
    files = {**{f"published/{k}": v for k, v in _texts_under(world.publish_dir).items()},
             **{f"batch/{k}": v for k, v in _texts_under(world.batch_dir).items()}}
    leaks += [f"{t} in {where}" for where, text in files.items() for t in traces if t in text]
    assert not (world.batch_dir / "checkpoints").exists()
    # The API (which had the old version in memory) answers from the scrubbed version: readers look at the
    # publish pointer at most every POINTER_CHECK_S (no file access per request), so within that.
    time.sleep(POINTER_CHECK_S + 0.1)
    for cid in world.doomed_ids:
        assert _api_get(world, f"/v1/conversations/{cid}").status_code == 404
    leaf = _api_get(world, f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}").json()
    assert leaf["size"] == 3 and leaf["distinct_users"] == leaf_before["distinct_users"] - 1
    crawled = [_api_get(world, p).text for p in (
        f"/v1/facets/{REQUEST}/tree", f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}",
        f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}/conversations?limit=50", "/data/conversations/index.json.gz")]
    leaks += [t for text in crawled for t in traces if t in text]
    assert world.store.states.read(RECLUSTER_REQUEST).requested_by == "deletion"
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
    removed, withheld = scrub_result(result, UserMatch.for_user(owner or "", HASH_KEY), min_conversations=3,
                                     min_users=2)
    assert removed >= 1 and withheld >= 1
    assert leaf.hidden and leaf.hidden_reason and "fewer than 3" in leaf.hidden_reason
    assert all(c.user_id != owner for c in result.conversations)
    assert not any(fv.conversation_id not in {c.id for c in result.conversations} for fv in result.facet_values)
    reliability_report(conversations_removed=removed, clusters_withheld=withheld)


# --------------------------------------------------------------------------- the deployed topology

ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by its SHA-256 (inode changes alone do not count)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _mounted_read_only(pid: int, path: Path) -> bool:
    """Whether process ``pid`` sees ``path`` as a read-only mount point (/proc/<pid>/mountinfo)."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path) and "ro" in fields[5].split(","):
            return True
    return False


def _read_only(world: World, tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """argv and env that run ``clio-stream ARGS`` seeing the publish directory read-only, as compose (``:ro``)
    and k8s (``readOnly: true``) mount it for the API.

    Root ignores file modes, so the process gets a private mount namespace (``unshare -m``) in which the
    folder is bind-mounted onto itself read-only; every other process (this test, the scheduler) still writes it.
    """
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs a mount namespace (unshare -m) to give a process a read-only publish directory")
    (tmp_path / "empty.toml").write_text("")
    env = {**world.settings.to_env(), "CLIO_API_KEYS": ",".join(f"{r}:{k}" for r, k in KEYS.items()),
           "CLIO_CONFIG": str(tmp_path / "empty.toml"), "RO_DIR": str(world.publish_dir), "PY": sys.executable}
    script = ('mount --bind "$RO_DIR" "$RO_DIR" && mount -o remount,bind,ro "$RO_DIR" && '
              'exec "$PY" -m clio_stream.cli "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh", *args], env


def _read_only_api(world: World, tmp_path: Path) -> tuple[ManagedProcess, str]:
    """The real API (``clio-stream api``) as a process that sees the publish directory read-only."""
    port = free_port()
    argv, env = _read_only(world, tmp_path, "api", "--port", str(port))
    api = ManagedProcess("api-read-only", argv, log_path=tmp_path / "api.log",
                         env=env, cwd=REPO, die_with_parent=True, ready_timeout=120,
                         ready_probe=http_probe(f"http://127.0.0.1:{port}/healthz"))
    api.start()
    return api, f"http://127.0.0.1:{port}"


def test_api_deletion_with_a_read_only_publish_dir(world: World, tmp_path: Path,
                                                   reliability_report: Callable[..., None]) -> None:
    """DELETE answers 202 without writing the publish directory; the scheduler's pass scrubs every version."""
    import httpx

    api, base = _read_only_api(world, tmp_path)
    try:
        assert api.pid is not None and _mounted_read_only(api.pid, world.publish_dir)
        with httpx.Client(base_url=base, headers=ADMIN, timeout=30) as http:
            before = http.get(f"/v1/conversations/{world.doomed_ids[0]}")
            assert before.status_code == 200 and TRACE in before.text  # the API holds the version in memory
            published = _digest(world.publish_dir)
            r = http.delete(f"/v1/users/{DOOMED}")
            assert r.status_code == 202, (r.status_code, r.text, api.log_tail())
            request = r.json()
            assert request["status"] == "pending" and request["facet_points"] == 2 * 3
            assert request["conversations"] == 2
            assert _digest(world.publish_dir) == published, "the API wrote into the publish directory"
            assert http.get(f"/v1/deletions/{request['request_id']}").json()["status"] == "pending"

            # The scheduler process owns the publish directory: its loop carries the request out.
            service = ReclusterService(world.settings, store=world.store, llm=ScriptedLLM(sensible_script),
                                       embedder=HashEmbedder(), publish_dir=world.publish_dir)
            sched = service.scheduler(Triggers(min_points=10**9), poll_s=0.2)  # deletions only, no re-clustering
            t0 = time.monotonic()
            sched.start()
            try:
                wait_for(lambda: http.get(f"/v1/deletions/{request['request_id']}").json()["status"] == "done",
                         60, "the scheduler to finish the deletion", every=0.2)
            finally:
                sched.stop()
                sched.join(30)
            seconds = time.monotonic() - t0
            done = http.get(f"/v1/deletions/{request['request_id']}").json()
            assert sorted(done["versions_scrubbed"]) == ["v1", "v2"] and done["done_at"] is not None
            # The API process, which loaded v2 before the deletion, now answers from the scrubbed version (it looks
            # at the publish pointer at most every POINTER_CHECK_S).
            time.sleep(POINTER_CHECK_S + 0.1)
            assert http.get(f"/v1/conversations/{world.doomed_ids[0]}").status_code == 404
            crawled = [http.get(p).text for p in (f"/v1/facets/{REQUEST}/tree",
                                                  f"/v1/facets/{REQUEST}/clusters/{DOOMED_LEAF}/conversations?limit=50",
                                                  "/data/conversations/index.json.gz")]
    finally:
        api.stop()
    traces = _traces(world)
    files = _texts_under(world.publish_dir)
    leaks = [f"{t} in {where}" for where, text in files.items() for t in traces if t in text]
    leaks += [f"{t} in Qdrant" for t in traces if t in _qdrant_dump(world.store)]
    leaks += [f"{t} in the API" for text in crawled for t in traces if t in text]
    reliability_report(api_status=202, pass_seconds=round(seconds, 2), versions_scrubbed=len(done["versions_scrubbed"]),
                       files_searched=len(files), traces_left=len(leaks))
    assert not leaks, leaks[:10]


def test_cli_without_write_access_leaves_the_scrub_to_the_scheduler(world: World, tmp_path: Path) -> None:
    """``delete-user`` where the publish directory is read-only: points gone, request pending, files untouched."""
    published = _digest(world.publish_dir)
    argv, env = _read_only(world, tmp_path, "delete-user", DOOMED)
    proc = subprocess.run(argv, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "pending" and report["facet_points"] == 2 * 3 and not report["versions_scrubbed"]
    assert _digest(world.publish_dir) == published
    done = process_deletions(world.store, world.settings.with_overrides(deletion_sweep_delay_s=0), world.publish_dir)
    assert done.finished == [report["request_id"]] and sorted(done.report.versions_scrubbed) == ["v1", "v2"]
    files = _texts_under(world.publish_dir)
    assert not [t for text in files.values() for t in _traces(world) if t in text]


def test_repeated_deletion_is_one_request(world: World, reliability_report: Callable[..., None]) -> None:
    """A repeat answers the same request, before and after it is done, and adds no work."""
    first = world.client.delete(f"/v1/users/{DOOMED}", headers=ADMIN)
    second = world.client.delete(f"/v1/users/{DOOMED}", headers=ADMIN)
    assert first.status_code == second.status_code == 202
    rid = first.json()["request_id"]
    assert second.json()["request_id"] == rid and second.json()["status"] == "pending"
    assert second.json()["facet_points"] == first.json()["facet_points"] == 2 * 3  # nothing counted twice
    assert [d["request_id"] for d in world.store.deletions.list()] == [rid]

    settings = world.settings.with_overrides(deletion_sweep_delay_s=0)
    done = process_deletions(world.store, settings, world.publish_dir)
    assert done.finished == [rid] and sorted(done.report.versions_scrubbed) == ["v1", "v2"]
    closed = world.client.get(f"/v1/deletions/{rid}", headers=ADMIN).json()

    third = world.client.delete(f"/v1/users/{DOOMED}", headers=ADMIN)
    assert third.status_code == 202 and third.json() == closed  # the same, finished request
    again = process_deletions(world.store, settings, world.publish_dir)
    assert again == DeletionPass(), "a repeat of a finished deletion made the owner work again"
    assert [d["request_id"] for d in world.store.deletions.list()] == [rid]
    assert world.client.get("/v1/deletions/no-such-request", headers=ADMIN).status_code == 404
    reliability_report(requests=3, stored_requests=len(world.store.deletions.list()))


# --------------------------------------------------------------------------- a re-clustering in flight

TOPICS = ["cooking", "python", "travel", "poetry", "taxes", "gardening"]


def _fill(store: QdrantStore, emb: HashEmbedder, doomed_hash: str) -> list[str]:
    """60 conversations of 15 users over TOPICS, and 6 "baking" ones of the doomed user; the doomed ids."""
    rows = [(f"c{i}", f"u{i % 15}", TOPICS[i % len(TOPICS)], i % 3) for i in range(60)]
    rows += [(f"doomed-c{i}", doomed_hash, "baking", i % 3) for i in range(6)]
    points = []
    for cid, user, topic, variant in rows:
        for f in main_facets:
            value = {"Request": f"The user's overall request for the assistant is to {topic} help {variant}",
                     "Task": f"The task is to {topic} task", "Language": "English", "Concerning": "1"}[f.name]
            vec = emb.encode([value])[0] if f.has_hierarchy else np.zeros(emb.dim, dtype=np.float32)
            points.append(FacetPoint(conversation_id=cid, facet=f.name, vector=vec, value=value,
                                     numeric=1 if f.numeric else None, user_hash=user, timestamp=1.7e9))
    store.points.upsert_facets(points)
    return [cid for cid, user, _, _ in rows if user == doomed_hash]


def _mentions_user(publish_dir: Path, version: str, doomed_hash: str, doomed_ids: list[str]) -> list[str]:
    """The doomed user's conversation ids or hash found in a version's result.json."""
    published = PublishedVersions.at(publish_dir).load(version)
    assert published is not None
    text = (published.path / "result.json").read_text()
    return [t for t in (doomed_hash, *doomed_ids) if t in text]


def test_recluster_that_scrolled_before_the_deletion_publishes_without_the_user(
        qdrant_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        reliability_report: Callable[..., None]) -> None:
    """A run scrolls the user's points, the user is deleted, the run publishes: its version lacks the user,
    and the owner's pass, locked out meanwhile, finishes the request after it."""
    emb = HashEmbedder()
    publish_dir = tmp_path / "published"
    settings = ClioSettings(
        qdrant_url=qdrant_server.url, qdrant_grpc_port=qdrant_server.grpc_port,
        qdrant_prefix=f"delrc{uuid.uuid4().hex[:10]}", publish_dir=publish_dir, user_id_hash_key=HASH_KEY,
        api_keys=",".join(f"{r}:{k}" for r, k in KEYS.items()), show_progress=False,
        n_name_description_samples_per_cluster=1, n_rename_samples=1, n_categorize_samples=1, llm_max_retries=0,
        min_top_level_size=2, deletion_sweep_delay_s=0)
    store = QdrantStore.from_settings(settings)
    store.ensure_collections(emb.dim)
    doomed_hash = keyed_user_hash(DOOMED, HASH_KEY)
    doomed_ids = _fill(store, emb, doomed_hash)
    llm = ScriptedLLM(sensible_script)
    assert recluster.recluster_once(store, llm, emb, main_facets, settings, publish_dir=publish_dir)
    assert _mentions_user(publish_dir, "1", doomed_hash, doomed_ids)  # v1 holds the user (or this proves nothing)

    during: dict[str, Any] = {}
    scroll = clustering_job.load_stored

    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as client:
        def scroll_then_delete(*args: Any, **kwargs: Any) -> Any:
            out = scroll(*args, **kwargs)  # the run now holds the user's points in memory
            during["delete"] = client.delete(f"/v1/users/{DOOMED}", headers=ADMIN)
            during["pass"] = process_deletions(store, settings, publish_dir)  # the owner's pass, mid-run
            during["status"] = store.deletions.get(during["delete"].json()["request_id"])["status"]
            return out

        monkeypatch.setattr(clustering_job, "load_stored", scroll_then_delete)
        report = recluster.recluster_once(store, llm, emb, main_facets, settings, publish_dir=publish_dir)
        assert report is not None and report.version == 2
        assert during["delete"].status_code == 202
        assert during["pass"].locked_out and during["status"] == "pending", "the pass ran beside a re-clustering"
        in_v2 = _mentions_user(publish_dir, "2", doomed_hash, doomed_ids)

        after = process_deletions(store, settings, publish_dir)
        rid = during["delete"].json()["request_id"]
        status = client.get(f"/v1/deletions/{rid}", headers=ADMIN).json()
    left = {v: _mentions_user(publish_dir, v, doomed_hash, doomed_ids) for v in ("1", "2")}
    reliability_report(pass_locked_out_during_run=during["pass"].locked_out, traces_in_new_version=len(in_v2),
                       versions_scrubbed_after=len(after.report.versions_scrubbed))
    store.close()
    assert not in_v2, f"the run published the deleted user: {in_v2[:3]}"
    assert after.finished == [rid] and status["status"] == "done" and after.report.versions_scrubbed == ["1"]
    assert not any(left.values()), left


# --------------------------------------------------------------------------- a worker after the deletion


def _user_points(store: QdrantStore, user_hash: str) -> int:
    from qdrant_client import models as qm

    flt = qm.Filter(must=[qm.FieldCondition(key="user_hash", match=qm.MatchValue(value=user_hash))])
    return sum(int(store.client.count(name, count_filter=flt, exact=True).count)
               for name in (store.facets, store.conversations))


def test_records_of_a_deleted_user_are_not_written_back(kafka_broker: Any, qdrant_server: Any,
                                                        unique_name: Callable[[str], str],
                                                        reliability_report: Callable[..., None]) -> None:
    """After the deletion, a new record and a replayed one of the user are dropped, and their offsets committed."""
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           api_keys=",".join(f"{r}:{k}" for r, k in KEYS.items()), deletion_denylist_refresh_s=0.5)
    doomed_hash = keyed_user_hash(DOOMED, s.user_id_hash_key)

    def conv(cid: str, user: str, text: str) -> dict[str, Any]:
        return {"id": cid, "user_id": user, "conversation": [{"role": "user", "content": text},
                                                             {"role": "assistant", "content": "Sure."}]}

    early = [conv("alice-1", "alice", "cooking a stew for guests"), conv("doomed-1", DOOMED, f"baking for {TRACE}")]
    late = [conv("doomed-2", DOOMED, f"more baking for {TRACE}"), early[1], conv("alice-2", "alice", "cooking rice")]
    worker = ConsumerWorker(s, facets=FACETS, llm=ScriptedLLM(sensible_script), embedder=HashEmbedder())
    store = reader_store(s)
    thread, stop = start_thread(worker)
    try:
        wait_for(lambda: worker.health == "ok", 120, "the worker to start")
        send_conversations(s.kafka_bootstrap, s.topic, early)
        wait_for(lambda: processed_count(store) == 2, 120, "both early conversations stored")
        assert _user_points(store, doomed_hash) > 0
        with TestClient(create_app(s, store=store), raise_server_exceptions=False) as client:
            assert client.delete(f"/v1/users/{DOOMED}", headers=ADMIN).status_code == 202
        assert _user_points(store, doomed_hash) == 0
        time.sleep(s.deletion_denylist_refresh_s)  # the deny-list's promise: every worker knows within this
        send_conversations(s.kafka_bootstrap, s.topic, late)
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(early) + len(late), 120,
                 "every record committed, the dropped ones included")
        written_back = _user_points(store, doomed_hash)
        dropped = worker.metrics_snapshot()["denied_dropped"]
        alice = processed_count(store)
    finally:
        stop_thread(thread, stop)
        store.close()
    reliability_report(records_after_deletion=len(late), written_back=written_back, dropped=dropped)
    assert written_back == 0, f"{written_back} points of the deleted user written back"
    assert dropped == 2 and alice == 2  # alice-1 and alice-2


def test_a_write_on_a_stale_deny_list_is_swept(kafka_broker: Any, qdrant_server: Any, tmp_path: Path,
                                               unique_name: Callable[[str], str],
                                               reliability_report: Callable[..., None]) -> None:
    """A worker that has not reloaded its deny-list yet (the in-flight window) writes the user back; the
    owner's pass, due ``deletion_sweep_delay_s`` after the request, deletes those points before closing it."""
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           api_keys=",".join(f"{r}:{k}" for r, k in KEYS.items()), publish_dir=tmp_path / "published",
                           deletion_denylist_refresh_s=3600.0, deletion_sweep_delay_s=3600.0)
    doomed_hash = keyed_user_hash(DOOMED, s.user_id_hash_key)
    convs = [{"id": f"inflight-{i}", "user_id": DOOMED if i % 2 else "alice",
              "conversation": [{"role": "user", "content": f"baking bread, take {i}"}]} for i in range(4)]
    worker = ConsumerWorker(s, facets=FACETS, llm=ScriptedLLM(sensible_script), embedder=HashEmbedder())
    store = reader_store(s)
    (tmp_path / "published").mkdir()
    thread, stop = start_thread(worker)
    try:
        wait_for(lambda: worker.health == "ok", 120, "the worker to start")
        send_conversations(s.kafka_bootstrap, s.topic, convs[:2])
        wait_for(lambda: processed_count(store) == 2, 120, "the first two conversations stored")  # deny-list loaded
        with TestClient(create_app(s, store=store), raise_server_exceptions=False) as client:
            rid = client.delete(f"/v1/users/{DOOMED}", headers=ADMIN).json()["request_id"]
        send_conversations(s.kafka_bootstrap, s.topic, convs[2:])
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 120,
                 "every record committed")
        written_back = _user_points(store, doomed_hash)
    finally:
        stop_thread(thread, stop)
    early = process_deletions(store, s, s.publish_dir)  # before the delay: scrubbed, not closed
    swept = process_deletions(store, s.with_overrides(deletion_sweep_delay_s=0), s.publish_dir)  # delay over
    left, request = _user_points(store, doomed_hash), store.deletions.get(rid)
    store.close()
    reliability_report(written_back_before_sweep=written_back, left_after_sweep=left)
    assert written_back > 0, "the stale worker dropped the record: this test would prove nothing"
    assert early.scrubbed == [rid] and not early.finished
    assert swept.finished == [rid] and request["status"] == "done" and request["user_hash"] is None
    assert left == 0, f"{left} points written back before the deny-list reached the worker survived the sweep"
