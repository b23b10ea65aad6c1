"""Crash safety: processes killed with SIGKILL at random moments lose nothing and duplicate nothing.

(1) ``clio-stream consume`` workers (two in one group, real processes) are killed with SIGKILL at random
    moments while a stream flows and restarted at once. Afterwards every produced conversation is processed,
    has exactly one point per facet (counted in Qdrant per conversation and facet), none is left pending,
    every numeric facet has its value (an LLM answer lost in a crash would show there), and the group has
    committed every record. Short form: 3 kills over 150 conversations; ``--long``: 20 kills over 2,000.
(2) ``clio-stream recluster`` killed with SIGKILL mid-run: the previous version stays current (the store's
    version pointer and the published ``current`` pointer), the lock is not taken over before its lease
    runs out, and the next run takes it and publishes.
"""

from __future__ import annotations

import logging
import random
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from clio_stream.domain.facets import REQUEST
from clio_stream.streaming.kafka_io import ensure_topics
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.storage.published import PublishedVersions
from clio_stream.devstack.processes import ManagedProcess
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import CLUSTERING_LOCK, LAST_RUN
from clio_stream.storage.store import QdrantStore
from clio_stream.living import versions
from consumers.bootstrap import bootstrap_clustering
from tests.reliability.helpers import llm_description, pooled_conversations, replayed_delta_tally, seed_store
from tests.streaming_helpers import (
    FACETS,
    REPO,
    committed,
    consume_process,
    conversation_count,
    conversations_logged,
    missing_numeric,
    processed_count,
    reader_store,
    safe_count,
    send_conversations,
    stored_pairs,
    streaming_settings,
    wait_for,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CrashPlan:
    """Sizes of the worker crash test (the short form runs in CI, the long one with ``--long``)."""

    conversations: int
    distinct_texts: int
    kills: int
    workers: int
    timeout_s: float


SHORT = CrashPlan(conversations=150, distinct_texts=30, kills=3, workers=2, timeout_s=900)
LONG = CrashPlan(conversations=2000, distinct_texts=200, kills=20, workers=2, timeout_s=5400)
SEED = 7  # the kill schedule is random but reproducible


# --------------------------------------------------------------------------- (1) workers


def produce_in_waves(bootstrap: str, topic: str, convs: list[dict[str, Any]], waves: int = 10,
                     pause_s: float = 1.0) -> threading.Thread:
    """Send the conversations in ``waves`` over time, as a live stream arrives (in a thread)."""

    def run() -> None:
        size = max(1, -(-len(convs) // waves))
        for start in range(0, len(convs), size):
            send_conversations(bootstrap, topic, convs[start : start + size])
            time.sleep(pause_s)

    thread = threading.Thread(target=run, name="producer", daemon=True)
    thread.start()
    return thread


def kill_schedule(rng: random.Random, plan: CrashPlan) -> list[int]:
    """Processed-conversation counts after which to kill: random, spread over the first 85 % of the stream."""
    return sorted(int(rng.uniform(0.05, 0.85) * plan.conversations) for _ in range(plan.kills))


def started_consuming(proc: ManagedProcess) -> bool:
    """Whether the process's latest start has joined the group (its log since the last start says so)."""
    try:
        text = proc.log_path.read_text(errors="replace")
    except OSError:
        return False
    return "consuming" in text.rsplit("--- start", 1)[-1]


def kill_at_random(procs: list[ManagedProcess], store: QdrantStore, at: int, rng: random.Random) -> dict[str, Any]:
    """Once ``at`` conversations are processed, wait a random moment, SIGKILL a random worker, restart it."""
    wait_for(lambda: safe_count(store) >= at, 1800, f"{at} processed conversations", every=0.2)
    time.sleep(rng.uniform(0.0, 1.5))
    victim = rng.randrange(len(procs))
    before = processed_count(store)
    in_flight = conversation_count(store) - before
    procs[victim].kill9()
    procs[victim].start()
    log.info("killed worker %d with SIGKILL at %d processed (%d pending) and restarted it", victim, before,
             in_flight)
    return {"worker": victim, "processed": before, "pending": in_flight}


def test_workers_killed_at_random_lose_and_duplicate_nothing(
    kafka_broker, qdrant_server, vllm_server, unique_name, tmp_path, long_run, reliability_report  # noqa: F811
) -> None:
    plan = LONG if long_run else SHORT
    rng = random.Random(SEED)
    s = streaming_settings(kafka_broker, qdrant_server.url, qdrant_server.grpc_port, unique_name,
                           topic_partitions=4, max_poll_records=8)
    convs = pooled_conversations(plan.conversations, plan.distinct_texts, unique_name("crash"))
    ensure_topics(s.kafka_bootstrap, {s.topic: s.topic_partitions, s.deltas_topic: 1})
    # A clustering before the stream, so every batch ships centroid deltas: a batch processed again after a
    # kill ships them again, the real duplication risk (point ids make duplicated points impossible).
    seed_ids = {c["id"] for c in seed_store(s, 24, 600, unique_name("crash-seed"))}
    with reader_store(s) as seeded:
        assert bootstrap_clustering(seeded, FACETS, s) == 1
        bootstrap = OnlineKMeans.from_state(seeded.versions.get_centroids(REQUEST.name, 1))  # type: ignore[arg-type]
    procs = [consume_process(s, f"crash-w{i}", vllm_server.base_url, tmp_path) for i in range(plan.workers)]
    store = reader_store(s)
    kills: list[dict[str, Any]] = []
    try:
        t0 = time.monotonic()
        for p in procs:
            p.start()
        producer = produce_in_waves(s.kafka_bootstrap, s.topic, convs)
        n_seed = len(seed_ids)  # the status points of the seed count as processed too
        for at in kill_schedule(rng, plan):
            kill = kill_at_random(procs, store, at + n_seed, rng)
            kills.append({**kill, "processed": kill["processed"] - n_seed})
        producer.join(120)
        wait_for(lambda: safe_count(store) == len(convs) + n_seed, plan.timeout_s, "every conversation", every=1.0)
        seconds = time.monotonic() - t0
        wait_for(lambda: committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs), 120,
                 "the last commits")
        # A worker restarted by the last kill may still be importing: let it come up, so that stopping it
        # tests the clean SIGTERM path (exit 0), not Python's default action during start-up.
        for p in procs:
            wait_for(lambda p=p: started_consuming(p), 120, f"{p.name} consuming again")
        codes = [p.stop() for p in procs]
        assert codes == [0] * len(procs), [p.log_tail() for p in procs]

        pairs = Counter({k: n for k, n in stored_pairs(store).items() if k[0] not in seed_ids})
        want = {(c["id"], f.name) for c in convs for f in FACETS}
        # Every delta the killed and restarted workers shipped, replayed from scratch by a fresh replica:
        # the bootstrap's counts plus one per stored Request value, however often a batch was redone.
        tally = replayed_delta_tally(store, s, bootstrap, seed_ids)
        lost = sorted(want - set(pairs))
        extra = sorted(set(pairs) - want)
        duplicated = sum(n - 1 for n in pairs.values() if n > 1)
        logged = sum(conversations_logged(p.log_path) for p in procs)
        reliability_report(
            conversations=len(convs), distinct_texts=plan.distinct_texts, workers=plan.workers,
            kills=len(kills), kill_seed=SEED, kills_at_processed=[k["processed"] for k in kills],
            pending_at_kills=[k["pending"] for k in kills], lost_points=len(lost), duplicated_points=duplicated,
            unexpected_points=len(extra), facet_points=sum(pairs.values()),
            # finished but not committed before a kill, so processed again (overwriting the same points)
            conversations_processed_twice=logged - len(convs), seconds=round(seconds, 1),
            delta_messages=tally.delta_messages, deltas_rejected=tally.rejected,
            request_values_stored=tally.valued, records_added_by_replayed_deltas=tally.added,
            conversations_per_s=round(len(convs) / seconds, 2), llm=llm_description(vllm_server.base_url),
            speedup="facet values reused by content hash: only the distinct texts reach the LLM; "
                    "max_poll_records=8, 4 partitions, the facet prompts' own max_tokens",
        )
        assert len(kills) == plan.kills
        # Kills wait for a processed count, then a random moment: with content-hash reuse the tail of a short
        # stream can finish inside that moment, so allow one kill to land just after the end.
        mid_stream = sum(1 for k in kills if k["processed"] < len(convs))
        assert mid_stream >= plan.kills - 1, f"only {mid_stream} of {plan.kills} kills hit the running stream"
        assert not lost and not extra and duplicated == 0, (lost[:5], extra[:5], duplicated)
        assert tally.rejected == 0 and tally.added == tally.valued, (tally, "a delta was applied twice")
        assert processed_count(store) == len(convs) + n_seed == conversation_count(store)  # nothing left pending
        assert missing_numeric(store, [c["id"] for c in convs]) == []
        assert committed(s.kafka_bootstrap, s.consumer_group, s.topic) == len(convs)
    finally:
        for p in procs:
            p.stop()
        store.close()


# --------------------------------------------------------------------------- (2) the re-clustering job

LOCK_TTL_S = 6.0  # the job renews every 2 s; a killed job blocks the next one for at most 6 s


def recluster_process(s: ClioSettings, llm_base_url: str, publish_dir: Path, log_dir: Path, name: str,
                      naming_samples: int = 1) -> ManagedProcess:
    """``clio-stream recluster`` as a real process (not started), with a short lock lease.

    ``naming_samples`` (name samples per cluster) sets how long it spends in the LLM: 1 keeps the runs that
    must finish short, more keeps the run to be killed busy long enough to be killed mid-run.
    """
    config = log_dir / "none.toml"
    config.write_text("")
    env = {
        "CLIO_QDRANT_URL": s.qdrant_url, "CLIO_QDRANT_GRPC_PORT": str(s.qdrant_grpc_port),
        "CLIO_QDRANT_PREFIX": s.qdrant_prefix, "CLIO_EMBEDDING_MODEL": "all-MiniLM-L6-v2",
        "CLIO_PUBLISH_DIR": str(publish_dir), "CLIO_RECLUSTER_LOCK_TTL_S": str(LOCK_TTL_S),
        "CLIO_USER_ID_HASH_KEY": "test-key", "CLIO_SHOW_PROGRESS": "false", "CLIO_CONFIG": str(config),
        "CLIO_MIN_CLUSTER_USERS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "CLIO_N_NAME_DESCRIPTION_SAMPLES_PER_CLUSTER": str(naming_samples), "CLIO_LLM_MAX_RETRIES": "1",
    }
    argv = [sys.executable, "-m", "clio_stream.cli", "recluster", "--facets", "Request,Concerning",
            "--llm-base-url", llm_base_url]
    return ManagedProcess(name, argv, log_path=log_dir / f"{name}.log", env=env, cwd=REPO, stop_timeout=30.0,
                          die_with_parent=True)


def run_to_end(proc: ManagedProcess, timeout: float = 600) -> float:
    """Start the one-shot job, wait for its exit (status 0); returns its seconds."""
    t0 = time.monotonic()
    proc.start()
    wait_for(lambda: not proc.alive, timeout, f"{proc.name} to finish", every=0.5)
    assert proc.returncode == 0, proc.log_tail()
    return time.monotonic() - t0


def current_state(store: QdrantStore, publish_dir: Path) -> dict[str, Any]:
    """The version every reader follows: the store's pointers, the published pointer, the last run's record."""
    return {"store": store.versions.current_version(REQUEST.name), "published": PublishedVersions.at(publish_dir).read_pointer(),
            "last_run": getattr(store.states.read(LAST_RUN), "version", None)}


def test_recluster_killed_mid_run_keeps_previous_version_and_next_run_publishes(
    qdrant_server, vllm_server, unique_name, tmp_path, reliability_report  # noqa: F811
) -> None:
    rng = random.Random(SEED)
    s = ClioSettings(qdrant_url=qdrant_server.url, qdrant_grpc_port=qdrant_server.grpc_port,
                     qdrant_prefix=unique_name("rc").replace("-", "_"), user_id_hash_key="test-key")
    publish_dir = tmp_path / "published"
    tag = unique_name("rc")
    seed_store(s, 20, 300, tag)
    store = reader_store(s)
    victim = recluster_process(s, vllm_server.base_url, publish_dir, tmp_path, "recluster-2", naming_samples=4)
    try:
        first_s = run_to_end(recluster_process(s, vllm_server.base_url, publish_dir, tmp_path, "recluster-1"))
        before = current_state(store, publish_dir)
        assert before == {"store": 1, "published": "1", "last_run": 1}
        seed_store(s, 20, 400, tag)  # new topics: the next run has clusters to name, so it is killed while busy

        victim.start()
        owner = f"recluster-{socket.gethostname()}-{victim.pid}"
        wait_for(lambda: store.locks.owner(CLUSTERING_LOCK) == owner, 300,
                 "the second run to take the lock", every=0.1)
        locked_at = time.monotonic()
        time.sleep(rng.uniform(0.3, 3.0))
        victim.kill9()
        killed_after = time.monotonic() - locked_at
        holder = store.locks.holder(CLUSTERING_LOCK)
        assert holder is not None and holder.owner == owner, "the run finished before the kill: nothing tested"
        after_kill = current_state(store, publish_dir)
        commit = versions.committed(store)
        if commit is not None and commit.version == 2 and not commit.applied:
            # Killed after its commit (while moving the pointers): version 2 is complete, and every reader is on
            # version 1 or 2; the next job finishes applying it before its own run.
            assert after_kill["store"] in (1, 2) and after_kill["published"] in ("1", "2"), after_kill
        else:
            assert after_kill == before, after_kill
            assert PublishedVersions.at(publish_dir).load_current().version == "1"
        # A number reserved by the dead run is skipped, never reused (its writes may be half done).
        expected = store.versions.last_reserved() + 1
        assert store.locks.acquire(CLUSTERING_LOCK, "an-impatient-run", LOCK_TTL_S) is None, \
            "the lease was taken before expiry"

        wait_for(lambda: store.locks.holder(CLUSTERING_LOCK) is None, 3 * LOCK_TTL_S, "the dead run's lease to expire",
                 every=0.2)
        freed_after = time.monotonic() - locked_at - killed_after
        third_s = run_to_end(recluster_process(s, vllm_server.base_url, publish_dir, tmp_path, "recluster-3"))
        after = current_state(store, publish_dir)
        reliability_report(
            lock_ttl_s=LOCK_TTL_S, killed_s_after_taking_lock=round(killed_after, 2),
            lock_free_s_after_kill=round(freed_after, 2), version_before=before, version_after_kill=after_kill,
            version_after_next_run=after, first_run_s=round(first_s, 1), next_run_s=round(third_s, 1),
            conversations=[20, 40], llm=llm_description(vllm_server.base_url),
        )
        assert after == {"store": expected, "published": str(expected), "last_run": expected}
        assert store.locks.holder(CLUSTERING_LOCK) is None  # released at the end of the run
    finally:
        victim.stop()
        store.close()

