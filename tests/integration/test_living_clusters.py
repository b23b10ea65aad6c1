"""Living clusters on real parts: a new topic appears, ids survive, readers never see a mix of versions.

Real broker, Qdrant server, vLLM OpenAI server (SmolLM2) and MiniLM. One consumer thread runs the whole
time; two re-clusterings happen while it runs:

1. stream set A (banking requests, no code or maths), re-cluster → version 1, the worker picks it up;
2. stream set B (more banking + a topic absent from A: programming and maths questions from MT-Bench),
   then re-cluster → version 2 while set C keeps arriving and a reader polls the API and the site files.

The facet answers are the one thing not asked of the model here: SmolLM2-135M, the only LLM that runs in CI,
writes near-identical Request values for banking and programming questions alike (mostly its own privacy
instructions echoed back), so no clustering could find a topic in them. ``TopicalFacets`` answers the facet
prompts with the user's own words and sends every other prompt (cluster names, summaries, hierarchy, assignment)
to the real server; the real facet path through a worker is covered by test_streaming.py, test_stack_up.py and
tests/reliability. What this test is about, the living-cluster mechanics, then meets real topical structure.

Checked: the new topic gets a cluster of its own; most version-1 leaf ids survive (measured, logged);
every vanished id still resolves through the API; the worker never stopped and switched to version 2
without a restart; every answer and every site file the reader got during the switch is internally
consistent with exactly one version, and no visible leaf pages empty while the next version's labels are
written; clusters below the distinct-user minimum appear nowhere.
"""

from __future__ import annotations

import gzip
import json
import logging
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from clio_stream.batch_input import load_shared_dataset
from clio_stream.domain.facets import REQUEST as REQUEST_FACET
from clio_stream.llm.base import LLMBackend, Prompt
from clio_stream.llm import make_llm
from clio_stream.storage.published import PublishedVersions
from clio_stream.living.job import recluster_once
from consumers.worker import ConsumerWorker
from tests.streaming_helpers import (
    DATA,
    LockedEmbedder,
    banking,
    check_stored_once,
    reader_store,
    send_conversations,
    start_thread,
    stop_thread,
    streaming_settings,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
log = logging.getLogger(__name__)

VIEWER, ADMIN = "viewer-key-living-0123456789", "admin-key-living-0123456789"
NEW_TOPIC = ("coding", "math")
REQUEST = REQUEST_FACET.name


def new_topic_conversations(n: int) -> list[dict[str, Any]]:
    """First turns of MT-Bench coding and maths questions, from four users: a topic set A never had."""
    rows = [json.loads(line) for line in (DATA / "mt_bench" / "questions.jsonl").read_text().splitlines() if line]
    picked = [r for r in rows if r["category"] in NEW_TOPIC][:n]
    assert len(picked) == n, "the shared MT-Bench questions changed"
    return [{"id": f"new-{r['question_id']}", "user_id": f"coder-{i % 4}",
             "conversation": [{"role": "user", "content": r["turns"][0]}]} for i, r in enumerate(picked)]


class TopicalFacets:
    """The real LLM for every prompt except facet answers, which repeat the user's first words (see above)."""

    def __init__(self, inner: LLMBackend) -> None:
        self.inner, self.model_name = inner, inner.model_name

    @staticmethod
    def _user_words(rendered: str) -> str:
        text = rendered.split("<user>", 1)[-1].split("</user>", 1)[0]
        return " ".join(text.split())[:160]

    def generate(self, prompts: list[Prompt], sampling: Any, *, seed: int | None = None,
                 desc: str | None = None) -> list[str | None]:
        out: list[str | None] = [None] * len(prompts)
        real = [i for i, p in enumerate(prompts) if "conversation" not in p.values]
        for i, p in enumerate(prompts):
            if i not in real:
                out[i] = f" ask about {self._user_words(p.values['conversation'])}</answer>"
        if real:
            for i, text in zip(real, self.inner.generate([prompts[i] for i in real], sampling, seed=seed, desc=desc)):
                out[i] = text
        return out

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        self.inner.close()


class Reader(threading.Thread):
    """Polls the API's tree and the served site files; records every inconsistency with a single version."""

    def __init__(self, client: TestClient, publish_dir: Path) -> None:
        super().__init__(name="version-reader", daemon=True)
        self.client, self.publish_dir = client, publish_dir
        self.stop_event = threading.Event()
        self.reads = 0
        self.api_versions: set[str] = set()
        self.site_versions: set[str] = set()
        self.mixed: list[str] = []
        self.switches_noticed = 0  # a file from a newer site than its manifest: detectable, the page reloads
        self.empty_pages: list[str] = []
        self._ids: dict[str, set[str]] = {}
        self._site_to_version: dict[str, str] = {}

    def ids_of(self, version: str) -> set[str] | None:
        if version not in self._ids:
            published = PublishedVersions.at(self.publish_dir).load(version)
            if published is None:
                return None
            self._ids[version] = set(published.result.hierarchies[REQUEST].nodes)
            meta = json.loads((published.path / "meta.json").read_text())
            self._site_to_version[meta["site_version"]] = version
        return self._ids[version]

    def version_of_site(self, site_version: str) -> str | None:
        if site_version not in self._site_to_version:
            for v in PublishedVersions.at(self.publish_dir).list_versions():
                self.ids_of(v)
        return self._site_to_version.get(site_version)

    def _get(self, path: str) -> Any:
        r = self.client.get(path, headers={"Authorization": f"Bearer {VIEWER}"})
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        body = r.content
        return json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)

    def read_once(self) -> None:
        tree = self._get(f"/v1/facets/{REQUEST}/tree")
        v = tree["version"]
        self.api_versions.add(v)
        ids, stack, leaves = set(), list(tree["roots"]), []
        while stack:
            node = stack.pop()
            ids.add(node["id"])
            stack.extend(node["children"])
            if node["level"] == 0 and node["size"] > 0:
                leaves.append(node["id"])
        for leaf in leaves:  # a visible leaf of the served version never pages empty (labels of the next
            page = self.client.get(f"/v1/facets/{REQUEST}/clusters/{leaf}/conversations",  # version included)
                                   params={"limit": 500}, headers={"Authorization": f"Bearer {ADMIN}"}).json()
            if page["version"] == v and not page["items"] and page["next_cursor"] is None:
                self.empty_pages.append(f"version {v}: leaf {leaf} paged no member")
        known = self.ids_of(v)
        if known is None or not ids <= known:
            self.mixed.append(f"API tree of version {v} holds ids of another version: {sorted(ids - (known or set()))[:3]}")
        manifest = self._get("/data/manifest.json.gz")
        sv = manifest["version"]
        self.site_versions.add(sv)
        facet = next(f for f in manifest["facets"] if f["name"] == REQUEST)
        for root in facet["roots"]:
            if not root.get("children_file"):
                continue
            kids = self._get(f"/data/{root['children_file']}")
            if kids["version"] != sv:
                self.switches_noticed += 1
                continue
            cluster_version = self.version_of_site(sv)
            child_ids = {c["id"] for c in kids["children"]}
            if cluster_version is None or not child_ids <= (self.ids_of(cluster_version) or set()):
                self.mixed.append(f"site {sv}: children of {root['id']} from another version")
        self.reads += 1

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.read_once()
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                self.mixed.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)


def _wait_version(worker: ConsumerWorker, thread: threading.Thread, version: int, timeout: float = 180) -> None:
    """Wait until the running worker uses ``version``; on a timeout, log where its thread is stuck."""
    try:
        wait_for(lambda: worker.metrics_snapshot()["cluster_versions"].get(REQUEST) == version, timeout,
                 f"the worker switching to version {version} without a restart")
    except AssertionError:
        frame = sys._current_frames().get(thread.ident or -1)
        log.error("worker thread stack:\n%s", "".join(traceback.format_stack(frame)) if frame else "(gone)")
        raise


def _leaves(publish_dir: Path, version: str) -> dict[str, Any]:
    published = PublishedVersions.at(publish_dir).load(version)
    assert published is not None
    return {n.id: n for n in published.result.hierarchies[REQUEST].leaves()}


def _everything_served(client: TestClient, publish_dir: Path) -> str:
    """Every API answer a viewer and an admin can get about the Request facet, plus every site file, as text."""
    out: list[str] = []
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tree = client.get(f"/v1/facets/{REQUEST}/tree", headers=admin)
    out.append(tree.text)
    stack = list(tree.json()["roots"])
    while stack:
        node = stack.pop()
        stack.extend(node["children"])
        out.append(client.get(f"/v1/facets/{REQUEST}/clusters/{node['id']}", headers=admin).text)
        out.append(client.get(f"/v1/facets/{REQUEST}/clusters/{node['id']}/conversations",
                              params={"limit": 500}, headers=admin).text)
    out.append(client.get(f"/v1/facets/{REQUEST}/trends", params={"limit": 100}, headers=admin).text)
    site = publish_dir / "versions" / str(PublishedVersions.at(publish_dir).read_pointer()) / "site"
    for f in site.rglob("*"):
        if f.is_file():
            raw = f.read_bytes()
            out.append((gzip.decompress(raw) if f.suffix == ".gz" else raw).decode("utf-8", "replace"))
    return "\n".join(out)


def test_new_topic_ids_survive_and_readers_never_see_a_mix(
    kafka_broker, qdrant_server, vllm_server, minilm, unique_name, tmp_path: Path  # noqa: F811
) -> None:
    publish_dir = tmp_path / "published"
    s = streaming_settings(
        kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
        llm_backend="openai", llm_base_url=vllm_server.base_url, llm_model=vllm_server.model,
        embedding_model="all-MiniLM-L6-v2", publish_dir=publish_dir, min_cluster_conversations=3,
        min_cluster_users=2, api_keys=f"viewer:{VIEWER},admin:{ADMIN}", api_status_cache_s=0.0)
    facets = [REQUEST_FACET]
    set_a = banking(48, 0, "a")
    new = new_topic_conversations(16)
    set_b = banking(16, 48, "b") + new
    set_c = banking(8, 64, "c")
    for i, c in enumerate(set_a + set_b + set_c):  # ten users overall; the new topic has four of its own
        if not c["id"].startswith("new-"):
            c["user_id"] = f"user-{i % 10}"

    embedder = LockedEmbedder(minilm)
    worker_llm, recluster_llm = make_llm(s), make_llm(s)
    worker = ConsumerWorker(s, facets=facets, llm=TopicalFacets(worker_llm), embedder=embedder)
    store = reader_store(s)
    thread, stop = start_thread(worker)
    client = TestClient(create_app(s))
    reader: Reader | None = None
    try:
        # --- set A, version 1
        send_conversations(s.kafka_bootstrap, s.topic, set_a)
        wait_for(lambda: worker.metrics.processed >= len(set_a), 900, "set A stored")
        r1 = recluster_once(store, recluster_llm, embedder, facets, s, publish_dir=publish_dir)
        assert r1 is not None and r1.version == 1
        _wait_version(worker, thread, 1)
        v1_leaves = _leaves(publish_dir, "1")

        # --- set B, assigned online against version 1
        send_conversations(s.kafka_bootstrap, s.topic, set_b)
        wait_for(lambda: worker.metrics.processed >= len(set_a) + len(set_b), 900, "set B stored")
        online = {cid: p for cid, p in ((c["id"], store.points.get_conversation(c["id"])) for c in new) if p}
        assert sum(1 for p in online.values() if p["facets"][REQUEST]["cluster_version"] == 1) >= len(new) // 2

        # --- version 2 while set C streams in and a reader polls
        reader = Reader(client, publish_dir)
        reader.start()
        wait_for(lambda: reader.reads >= 2, 60, "the reader reading version 1")
        send_conversations(s.kafka_bootstrap, s.topic, set_c)
        processed_before = worker.metrics.processed
        r2 = recluster_once(store, recluster_llm, embedder, facets, s, publish_dir=publish_dir)
        assert r2 is not None and r2.version == 2
        wait_for(lambda: "2" in reader.api_versions and reader.reads >= 5, 60, "the reader reading version 2")
        wait_for(lambda: worker.metrics.processed >= len(set_a) + len(set_b) + len(set_c), 900, "set C stored")
        reader.stop_event.set()
        reader.join(30)
        _wait_version(worker, thread, 2)

        # The consumer ran throughout and took set C during the switch.
        assert thread.is_alive() and worker.health == "ok"
        assert worker.metrics.processed > processed_before
        check_stored_once(store, set_a + set_b + set_c, facets)

        # Readers: both versions seen, nothing mixed.
        log.info("reader: %d reads, API versions %s, %d site versions, %d switches noticed, mixed %s",
                 reader.reads, sorted(reader.api_versions), len(reader.site_versions), reader.switches_noticed,
                 reader.mixed[:3])
        assert not reader.mixed
        assert not reader.empty_pages, reader.empty_pages[:3]
        assert {"1", "2"} <= reader.api_versions and len(reader.site_versions) >= 2

        # The new topic (programming and maths: it may well split in two) gets clusters of its own: new ids
        # that hold most of its conversations and little else.
        v2_leaves = _leaves(publish_dir, "2")
        new_ids = {c["id"] for c in new}
        # Set B also brings banking intents set A did not have, which may get new leaves of their own: the
        # new topic's leaves are the new ones whose members are mostly new-topic.
        fresh = [n for n in v2_leaves.values() if n.id not in v1_leaves
                 and 2 * len(new_ids & set(n.conversation_ids)) > len(n.conversation_ids)]
        in_fresh = {cid for n in fresh for cid in n.conversation_ids}
        coverage = len(new_ids & in_fresh) / len(new_ids)
        purity = len(new_ids & in_fresh) / max(1, len(in_fresh))
        log.info("new topic: %d new leaves %s hold %.0f%% of the new-topic conversations and are %.0f%% new-topic; "
                 "id survival %.2f (%d of %d v1 leaves), lineage %d, LLM prompts v1 %d / v2 %d",
                 len(fresh), [n.name for n in fresh], 100 * coverage, 100 * purity, r2.id_survival or 0,
                 sum(1 for k in v1_leaves if k in v2_leaves), len(v1_leaves), r2.lineage, r1.llm_prompts,
                 r2.llm_prompts)
        assert fresh and coverage > 0.5 and purity >= 0.6

        # Ids: most survive; every vanished one resolves to a successor (or is withheld, answering 404).
        assert r2.id_survival is not None and r2.id_survival >= 0.5
        viewer = {"Authorization": f"Bearer {VIEWER}"}
        for old_id in set(v1_leaves) - set(v2_leaves):
            r = client.get(f"/v1/facets/{REQUEST}/clusters/{old_id}", headers=viewer)
            assert r.status_code in (200, 404), r.text
            if r.status_code == 200:
                body = r.json()
                assert body["successor_of"] == old_id and body["version"] == "2"
                assert body["id"] in PublishedVersions.at(publish_dir).load("2").result.hierarchies[REQUEST].nodes
            else:
                published = PublishedVersions.at(publish_dir).load("2")
                successor = published.lineage.get(old_id)
                assert successor is not None and published.result.hierarchies[REQUEST].nodes[successor].hidden

        # Privacy: nothing below the minimums is served anywhere.
        hierarchy = PublishedVersions.at(publish_dir).load("2").result.hierarchies[REQUEST]
        hidden = [n for n in hierarchy.nodes.values() if n.hidden]
        served = _everything_served(client, publish_dir)
        visible_names = {n.name for n in hierarchy.nodes.values() if not n.hidden}
        for node in hidden:
            assert f'"{node.id}"' not in served, node.id
            if node.name not in visible_names:
                assert json.dumps(node.name) not in served, node.name
        for node in hierarchy.nodes.values():
            if not node.hidden:
                assert node.size >= 3 and node.distinct_users >= 2
        log.info("privacy: %d hidden of %d nodes, none served", len(hidden), len(hierarchy.nodes))
    finally:
        if reader is not None:
            reader.stop_event.set()
        stop_thread(thread, stop)
        client.close()
        store.close()
        for llm in (worker_llm, recluster_llm):
            llm.close()
