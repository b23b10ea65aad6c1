"""The distributed layout on loopback: every part its own process, two of them killed with SIGKILL midway.

One broker, one Qdrant server and one vLLM OpenAI server (the session fixtures), a conversation topic with
6 partitions, three ``clio-stream consume`` processes in one consumer group (OpenAI back-end), two
``clio-stream api`` processes and ``clio-stream scheduler`` as the re-clustering job. Real MT-Bench
conversations are streamed in two waves; between them one consumer and one API process are killed with
SIGKILL and a replacement API is started. Then:

* every conversation is stored exactly once per facet (payload counts per conversation x facet, point ids
  as the deterministic ids say, one ``processed`` status point each) and every offset is committed;
* the re-clustering process published a version (first on the point threshold, then on an admin's request
  sent through an API process, so the final version covers every conversation);
* the surviving API process and its replacement answer the same: status version, facet list with sizes,
  the tree, and the per-conversation cluster answers for a sample.

Everything is started through ``ManagedProcess(die_with_parent=True)``, so nothing outlives the test.
Set ``CLIO_TEST_VLLM_URL`` to reuse a running vLLM server (see conftest_vllm_server).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from clio_stream.streaming.kafka_io import ensure_topics, make_producer
from clio_stream.devstack.processes import ManagedProcess, free_port, http_probe
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import LAST_RUN, WORKER_METRICS
from clio_stream.storage.records import conversation_point_id, facet_point_id
from clio_stream.storage.store import QdrantStore
from consumers.producing import produce, to_messages
from tests.streaming_helpers import committed, facet_payloads, processed_count, reader_store, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
log = logging.getLogger(__name__)

REPO = Path(__file__).parents[2]
DATA = REPO.parent / "shared" / "data"
N_CONVERSATIONS = 40
FIRST_WAVE = 26  # the kills happen while this wave is being processed
KILL_AFTER = 8  # conversations stored before the kills
FACETS = ("Request", "Concerning")  # one clustered facet and one numeric: half the prompts of all four
PARTITIONS = 6
CONSUMERS = 3
MIN_POINTS = 16  # the scheduler's first clustering, during the stream
SAMPLE = 12  # conversations whose API answers are compared
ADMIN_KEY, VIEWER_KEY = "admin-key-distributed", "viewer-key-distributed"


# --------------------------------------------------------------------------- data


def mt_bench_records(n: int) -> list[dict[str, Any]]:
    """``n`` real MT-Bench conversations spread over the questions, with a few distinct users (privacy counts)."""
    lines = [ln for ln in (DATA / "mt_bench" / "conversations.jsonl").read_text(encoding="utf-8").split("\n")
             if ln.strip()]
    step = max(1, len(lines) // n)
    rows = [json.loads(ln) for ln in lines[::step][:n]]
    return [{"id": r["chat_id"], "user_id": f"user-{i % 6}", "timestamp": r.get("created_at"),
             "conversation": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
            for i, r in enumerate(rows)]


def send_records(settings: ClioSettings, records: list[dict[str, Any]]) -> None:
    """Produce as ``clio-stream produce`` does: the contract's msgpack map, key = conversation id."""
    producer = make_producer(settings.kafka_bootstrap)
    try:
        sent = produce(producer, settings.topic, to_messages(records, "mt_bench"), total=len(records),
                       progress=False)
    finally:
        producer.close()
    assert sent == len(records)


# --------------------------------------------------------------------------- processes


@dataclass
class Cluster:
    """The processes of one distributed deployment and what they share (settings, keys, log folder)."""

    settings: ClioSettings
    logs: Path
    consumers: list[ManagedProcess] = field(default_factory=list)
    apis: dict[str, tuple[ManagedProcess, str]] = field(default_factory=dict)  # name -> (process, base URL)
    scheduler: ManagedProcess | None = None

    def env(self, **extra: str) -> dict[str, str]:
        """Every plain setting as CLIO_* (the way `up` hands settings to children), one thread each."""
        empty = self.logs / "none.toml"
        empty.write_text("")
        return {**self.settings.to_env(), "CLIO_CONFIG": str(empty), "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}

    def cli(self, name: str, args: list[str], env: dict[str, str], probe: Any = None,
            ready_timeout: float = 5.0) -> ManagedProcess:
        """One `clio-stream` subcommand as a process that dies with the test (and logs to its own file)."""
        proc = ManagedProcess(name, [sys.executable, "-m", "clio_stream.cli", *args],
                              log_path=self.logs / f"{name}.log", env=env, cwd=REPO, ready_probe=probe,
                              ready_timeout=ready_timeout, stop_timeout=30.0, die_with_parent=True)
        return proc.start()

    def start_consumer(self, i: int) -> None:
        env = self.env(CLIO_WORKER_ID=f"consumer-{i}")
        self.consumers.append(self.cli(f"consumer-{i}", ["consume", "--facets", ",".join(FACETS)], env))

    def start_api(self, name: str) -> str:
        port = free_port()
        env = self.env(CLIO_API_KEYS=f"viewer:{VIEWER_KEY},admin:{ADMIN_KEY}")
        base = f"http://127.0.0.1:{port}"
        proc = self.cli(name, ["api", "--port", str(port)], env, probe=http_probe(f"{base}/readyz"),
                        ready_timeout=120.0)
        self.apis[name] = (proc, base)
        return base

    def start_scheduler(self) -> None:
        args = ["scheduler", "--facets", ",".join(FACETS), "--min-points", str(MIN_POINTS), "--interval", "3600",
                "--new-fraction", "100", "--poll", "1"]
        self.scheduler = self.cli("scheduler", args, self.env())

    def all(self) -> list[ManagedProcess]:
        return [*self.consumers, *(p for p, _ in self.apis.values()), *([self.scheduler] if self.scheduler else [])]

    def stop(self) -> None:
        for proc in reversed(self.all()):
            proc.stop(timeout=20.0)

    def tails(self) -> str:
        """Log tails of every process, for a failure message."""
        return "\n".join(f"--- {p.name} (alive={p.alive}):\n{p.log_tail(15)}" for p in self.all())


@pytest.fixture
def cluster(kafka_broker, qdrant_server, vllm_server, unique_name, tmp_path) -> Iterator[Cluster]:  # noqa: F811
    """Settings for a fresh topic, group, collections and publish folder; processes stopped afterwards."""
    topic = unique_name("dist")
    settings = ClioSettings(
        kafka_bootstrap=kafka_broker.bootstrap, topic=topic, dlq_topic=f"{topic}.dlq", deltas_topic=f"{topic}.deltas",
        consumer_group=unique_name("dist-group"), topic_partitions=PARTITIONS, max_poll_records=4, poll_timeout_ms=500,
        qdrant_url=qdrant_server.url, qdrant_grpc_port=qdrant_server.grpc_port,
        qdrant_prefix=unique_name("dist").replace("-", "_"), publish_dir=tmp_path / "published",
        llm_backend="openai", llm_base_url=vllm_server.base_url, llm_model=vllm_server.model, llm_max_retries=1,
        embedding_model="all-MiniLM-L6-v2", show_progress=False, user_id_hash_key="test-key",
        max_conversation_tokens=300, metrics_every_batches=1, backoff_initial_s=0.5, backoff_max_s=4.0,
        n_name_description_samples_per_cluster=1, n_rename_samples=1, n_categorize_samples=1,
        # Delivery and failover, not privacy: every sampled conversation must get a cluster to compare the replicas.
        min_cluster_users=1, min_cluster_conversations=1, recluster_outlier_rate=1.0,
    )
    ensure_topics(settings.kafka_bootstrap, {settings.topic: PARTITIONS, settings.dlq_topic: PARTITIONS,
                                             settings.deltas_topic: 1})
    c = Cluster(settings, tmp_path / "logs")
    c.logs.mkdir()
    try:
        yield c
    finally:
        c.stop()


# --------------------------------------------------------------------------- checks


def live_workers(store: QdrantStore) -> set[str]:
    """Workers that wrote their metrics document (they do after their first poll, i.e. once in the group)."""
    try:
        return {doc.worker_id for doc in store.states.read_all(WORKER_METRICS).values() if doc.health == "ok"}
    except Exception:  # noqa: BLE001 - the collection appears with the first worker
        return set()


def facet_payload_counts(store: QdrantStore) -> Counter:
    """(conversation id, facet) -> facet points carrying that payload; point ids checked against both."""
    pairs: Counter = Counter()
    offset = None
    while True:
        recs, offset = store.client.scroll(store.facets, limit=500, offset=offset, with_payload=True)
        for r in recs:
            cid, facet = r.payload["conversation_id"], r.payload["facet"]
            assert str(r.id) == facet_point_id(cid, facet), f"point {r.id} is not the id of ({cid}, {facet})"
            pairs[(cid, facet)] += 1
        if offset is None:
            return pairs


def check_stored_once(store: QdrantStore, ids: list[str]) -> None:
    pairs = facet_payload_counts(store)
    want = {(cid, f) for cid in ids for f in FACETS}
    assert set(pairs) == want, f"missing {sorted(want - set(pairs))[:5]}, extra {sorted(set(pairs) - want)[:5]}"
    dupes = {k: n for k, n in pairs.items() if n != 1}
    assert not dupes, f"stored more than once: {dupes}"
    assert sum(pairs.values()) == store.points.count() == len(ids) * len(FACETS)
    for facet in FACETS:
        assert store.points.count(facet=facet) == len(ids)
    assert processed_count(store) == len(ids)
    assert int(store.client.count(store.conversations, exact=True).count) == len(ids)
    found = store.client.retrieve(store.conversations, ids=[conversation_point_id(c) for c in ids])
    assert len(found) == len(ids)


def api_get(base: str, path: str) -> Any:
    resp = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
    assert resp.status_code == 200, f"GET {base}{path}: {resp.status_code} {resp.text[:300]}"
    return resp.json()


def api_view(base: str, sample: list[str]) -> dict[str, Any]:
    """What one API process answers: version, facets with sizes, the tree, the sample's cluster answers."""
    return {"version": api_get(base, "/v1/status")["version"], "facets": api_get(base, "/v1/facets"),
            "tree": api_get(base, "/v1/facets/Request/tree"),
            "conversations": {cid: api_get(base, f"/v1/conversations/{cid}") for cid in sample}}


def wait_for_final_version(store: QdrantStore, base: str, since: float, timeout: float) -> str:
    """Wait for a run that finished after ``since`` with every point stored, and for ``base`` to serve it.

    A run records every stored Request point (the scheduler's new-data base), with or without a usable value.
    """
    points = len(facet_payloads(store, "Request"))

    def done() -> bool:
        last = store.states.read(LAST_RUN)
        if last is None or last.finished_at <= since or last.points.get("Request") != points:
            return False
        return api_get(base, "/v1/status")["version"] == str(last.version)

    wait_for(done, timeout, "the re-clustering asked for through the API", every=1.0)
    return str(store.states.read(LAST_RUN).version)


# --------------------------------------------------------------------------- the test


def start_everything(cluster: Cluster, store: QdrantStore) -> str:
    """Scheduler, three consumers and two APIs; returns the first API's URL once every consumer is in the group."""
    cluster.start_scheduler()
    for i in range(CONSUMERS):
        cluster.start_consumer(i)
    api_a = cluster.start_api("api-a")
    cluster.start_api("api-b")
    wait_for(lambda: len(live_workers(store)) == CONSUMERS, 300, "three consumers in the group", every=1.0)
    return api_a


def kill_midway(cluster: Cluster, store: QdrantStore) -> list[ManagedProcess]:
    """SIGKILL consumer-0 and api-b once a few conversations are stored, with the first wave still in flight."""
    wait_for(lambda: processed_count(store) >= KILL_AFTER, 300, f"{KILL_AFTER} conversations stored")
    victims = [cluster.consumers[0], cluster.apis["api-b"][0]]
    for proc in victims:
        proc.kill9()
    done = processed_count(store)
    pending = int(store.client.count(store.conversations, exact=True).count) - done
    log.info("killed consumer-0 and api-b with SIGKILL after %d of %d conversations, %d marked pending",
             done, N_CONVERSATIONS, pending)
    assert done < FIRST_WAVE, "the first wave finished before the kill: nothing was tested"
    return victims


def compare_apis(api_a: str, api_c: str, ids: list[str], version: str) -> int:
    """Both API processes answer the same; returns how many sampled conversations have a cluster."""
    sample = ids[:: max(1, N_CONVERSATIONS // SAMPLE)][:SAMPLE]
    first, second = api_view(api_a, sample), api_view(api_c, sample)
    assert first["version"] == second["version"] == version
    assert first == second, "the two API processes answer differently"
    clustered = [c for c in first["conversations"].values() if c["facets"]["Request"].get("cluster_id")]
    assert clustered, f"no sampled conversation has a cluster: {first['conversations']}"
    request = next(f for f in first["facets"]["facets"] if f["name"] == "Request")
    assert request["clusters"] and 0 < request["total"] <= N_CONVERSATIONS, request
    return len(clustered)


def test_three_consumers_two_apis_and_the_scheduler_survive_kill9(cluster: Cluster) -> None:
    s = cluster.settings
    records = mt_bench_records(N_CONVERSATIONS)
    ids = [r["id"] for r in records]
    assert len(set(ids)) == N_CONVERSATIONS
    store = reader_store(s)
    t0 = time.monotonic()
    try:
        api_a = start_everything(cluster, store)
        log.info("all %d processes up after %.1f s", len(cluster.all()), time.monotonic() - t0)
        send_records(s, records[:FIRST_WAVE])
        victims = kill_midway(cluster, store)
        assert api_get(api_a, "/v1/status")["store_health"] == "ok"  # the other replica keeps answering
        api_c = cluster.start_api("api-c")  # the replacement
        send_records(s, records[FIRST_WAVE:])

        wait_for(lambda: processed_count(store) == N_CONVERSATIONS, 420, "every conversation stored", every=1.0)
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == N_CONVERSATIONS, 60,
                 "every offset committed")
        log.info("all %d conversations stored and committed after %.1f s", N_CONVERSATIONS, time.monotonic() - t0)
        check_stored_once(store, ids)

        # The point threshold was crossed during the stream; the run it started may still be naming clusters.
        wait_for(lambda: store.states.read(LAST_RUN) is not None, 300,
                 "the scheduler's first version (on the point threshold)", every=1.0)
        asked = httpx.post(f"{api_c}/v1/recluster", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        assert asked.status_code == 202, asked.text
        version = wait_for_final_version(store, api_a, asked.json()["requested_at"], 300)
        assert int(version) >= 2 and store.versions.current_version("Request") == int(version)
        assert s.publish_dir is not None and (s.publish_dir / "current").exists()
        clustered = compare_apis(api_a, api_c, ids, version)

        survivors = [*cluster.consumers[1:], cluster.apis["api-a"][0], cluster.apis["api-c"][0], cluster.scheduler]
        assert all(p is not None and p.alive for p in survivors), cluster.tails()
        assert not any(p.alive for p in victims)
        log.info("distributed run done in %.1f s: version %s, %d/%d sampled conversations clustered",
                 time.monotonic() - t0, version, clustered, SAMPLE)
    except BaseException:
        log.error("process logs:\n%s", cluster.tails())
        raise
    finally:
        store.close()
