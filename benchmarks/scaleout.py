"""Scale-out benchmark: 1, 2 and 3 ``clio-stream consume`` processes sharing one vLLM server.

Each run gets a fresh topic (6 partitions), consumer group and set of Qdrant collections, starts its
consumer processes, waits until every one has joined the group (its first metrics document), then
produces the same N MT-Bench conversations and times produce -> every conversation ``processed`` in
Qdrant. Same settings in every run (all four main facets, ``max_poll_records`` 16, the settings'
LLM concurrency); only the number of consumer processes changes.

vLLM's prefix cache would let later runs reuse the prefill of earlier ones (the same conversations);
each run therefore starts its conversations with a one-line system turn naming the run, so the cache
holds nothing useful across runs while the work stays the same (the four facet prompts of one
conversation still share their prefix within a run, as in production).

On a machine with few cores the consumers and the vLLM server compete for the same CPUs, so expect
little gain; the JSON records the CPU count, the machine's load before each run and how busy all
cores were during it, so the figures can be read honestly.

    .venv/bin/python -m benchmarks.scaleout --n 48 --llm-base-url http://127.0.0.1:18000/v1
    .venv/bin/python -m benchmarks.scaleout --n 48          # starts its own vLLM server
"""

from __future__ import annotations

import argparse

from clio_stream.streaming.connection import KafkaConnection
from clio_stream.storage.documents import WORKER_METRICS, WorkerMetricsDoc
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
PARTITIONS = 6
log = logging.getLogger("benchmarks.scaleout")


@dataclass
class RunResult:
    consumers: int
    seconds: float  # first record produced -> last conversation processed
    conversations_per_s: float
    prompts_per_s: float
    per_consumer: dict[str, int]  # conversations each worker processed (its metrics document)
    consumer_cpu_s: float  # user + system CPU seconds of the consumer processes during the run
    cpu_busy: float  # share of all cores busy during the run (every process on the machine)
    loadavg_before: float
    startup_s: float  # processes started -> all in the group (not in ``seconds``)


# --------------------------------------------------------------------------- machine readings


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all cores from /proc/stat: how saturated the box was, whoever used it."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0.0
    return (float(parts[11]) + float(parts[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- data


def mt_bench(n: int) -> list[dict[str, Any]]:
    """``n`` MT-Bench conversations spread over the questions and answering models, six users."""
    lines = [ln for ln in (DATA / "mt_bench" / "conversations.jsonl").read_text(encoding="utf-8").split("\n")
             if ln.strip()]
    rows = [json.loads(ln) for ln in lines[:: max(1, len(lines) // n)][:n]]
    return [{"id": r["chat_id"], "user_id": f"user-{i % 6}",
             "conversation": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]}
            for i, r in enumerate(rows)]


def for_run(records: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    """The same conversations behind a one-line system turn, so no run reuses another's prefix cache."""
    return [{**r, "conversation": [{"role": "system", "content": f"Benchmark run {tag}."}, *r["conversation"]]}
            for r in records]


# --------------------------------------------------------------------------- one run


def run_settings(base: Any, tag: str) -> Any:
    """Fresh topic, group and collections for one run."""
    topic = f"scaleout-{tag}"
    return base.with_overrides(topic=topic, dlq_topic=f"{topic}.dlq", deltas_topic=f"{topic}.deltas",
                               consumer_group=f"scaleout-{tag}", qdrant_prefix=f"scaleout_{tag.replace('-', '_')}")


def start_consumers(settings: Any, k: int, facets: str, logs: Path) -> list[Any]:
    """``k`` consumer processes (die_with_parent: nothing outlives the benchmark), one thread each."""
    from clio_stream.devstack.processes import ManagedProcess

    empty = logs / "none.toml"
    empty.write_text("")
    procs = []
    for i in range(k):
        env = {**settings.to_env(), "CLIO_CONFIG": str(empty), "CLIO_WORKER_ID": f"consumer-{i}",
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        argv = [sys.executable, "-m", "clio_stream.cli", "consume", "--facets", facets]
        procs.append(ManagedProcess(f"consumer-{i}", argv, log_path=logs / f"{settings.topic}-consumer-{i}.log",
                                    env=env, cwd=ROOT, stop_timeout=60.0, die_with_parent=True).start())
    return procs


def worker_docs(store: Any) -> dict[str, WorkerMetricsDoc]:
    try:
        return store.states.read_all(WORKER_METRICS)
    except Exception:  # noqa: BLE001 - the state collection appears with the first worker
        return {}


def processed(store: Any) -> int:
    from qdrant_client import models as qm

    flt = qm.Filter(must=[qm.FieldCondition(key="status", match=qm.MatchValue(value="processed"))])
    try:
        return int(store.client.count(store.conversations, count_filter=flt, exact=True).count)
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def wait(condition: Any, timeout: float, what: str, procs: list[Any], every: float = 0.5) -> None:
    """Poll ``condition``; fail with the consumers' log tails when it times out or a consumer died."""
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [p for p in procs if not p.alive]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.log_tail(20)}" for p in procs)
            raise RuntimeError(f"{'a consumer died' if dead else 'timed out'} waiting for {what}\n{tails}")
        time.sleep(every)


def one_run(base: Any, k: int, records: list[dict[str, Any]], facets: str, n_facets: int, logs: Path,
            timeout: float) -> RunResult:
    """Start ``k`` consumers, wait for the group, produce, time until everything is processed, stop."""
    from clio_stream.streaming.kafka_io import ensure_topics, make_producer
    from clio_stream.storage.store import QdrantStore
    from consumers.producing import produce, to_messages

    tag = f"{k}-{uuid.uuid4().hex[:6]}"
    s = run_settings(base, tag)
    ensure_topics(KafkaConnection.from_settings(s), {s.topic: PARTITIONS, s.dlq_topic: PARTITIONS, s.deltas_topic: 1})
    store = QdrantStore.from_settings(s)
    started = time.monotonic()
    procs = start_consumers(s, k, facets, logs)
    try:
        wait(lambda: sum(d.health == "ok" for d in worker_docs(store).values()) == k, 600,
             f"{k} consumers in the group", procs)
        time.sleep(3.0)  # let the last join's rebalance settle
        startup = time.monotonic() - started
        load = os.getloadavg()[0]
        cpu0, busy0 = sum(process_cpu_s(p.pid) for p in procs), cpu_times()
        t0 = time.monotonic()
        producer = make_producer(KafkaConnection.from_settings(s))
        try:
            produce(producer, s.topic, to_messages(for_run(records, tag), "mt_bench"), progress=False)
        finally:
            producer.close()
        wait(lambda: processed(store) >= len(records), timeout, f"{len(records)} conversations processed", procs)
        seconds = time.monotonic() - t0
        busy1 = cpu_times()
        cpu = sum(process_cpu_s(p.pid) for p in procs) - cpu0
        time.sleep(1.0)  # the metrics documents follow each batch
        docs = worker_docs(store)
    finally:
        for p in procs:
            p.stop()
        store.close()
    per = {d.worker_id: d.processed for d in docs.values()}
    busy = (busy1[0] - busy0[0]) / max(1.0, busy1[1] - busy0[1])
    n = len(records)
    return RunResult(consumers=k, seconds=seconds, conversations_per_s=n / seconds,
                     prompts_per_s=n * n_facets / seconds, per_consumer=per, consumer_cpu_s=cpu, cpu_busy=busy,
                     loadavg_before=load, startup_s=startup)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="conversations per run (the same ones every run)")
    ap.add_argument("--consumers", default="1,2,3,1",
                    help="consumer counts to run, in order (the last 1 measures drift of a shared machine)")
    ap.add_argument("--facets", default="Request,Language,Task,Concerning", help="facets the consumers ask")
    ap.add_argument("--llm-base-url", help="reuse a running vLLM OpenAI server instead of starting one")
    ap.add_argument("--embedding-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--max-conversation-tokens", type=int, default=400)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per run")
    return ap.parse_args()


def start_llm(args: argparse.Namespace, logs: Path) -> tuple[str, str, Any]:
    """(base URL, model, process or None): the given server, or a vLLM OpenAI server of our own."""
    from clio_stream.devstack.assets import resolve_model

    model = resolve_model("smollm2-135m-instruct", "llm")
    if args.llm_base_url:
        return args.llm_base_url.rstrip("/"), model, None
    from clio_stream.devstack.processes import free_port
    from clio_stream.devstack.vllm_server import start_vllm_server

    port = free_port()
    proc = start_vllm_server(model, port=port, log_dir=logs, die_with_parent=True)
    return f"http://127.0.0.1:{port}/v1", model, proc


def main() -> None:
    args = parse_args()
    from benchmarks.common import quiet_logs

    quiet_logs()
    log.setLevel(logging.INFO)
    from clio_stream.devstack.processes import free_port, start_broker, start_qdrant
    from clio_stream.settings import ClioSettings

    counts = [int(x) for x in args.consumers.split(",")]
    n_facets = len(args.facets.split(","))
    records = mt_bench(args.n)
    tmp = Path(tempfile.mkdtemp(prefix="clio-scaleout-"))
    kport, qport, gport = free_port(), free_port(), free_port()
    services = [start_broker(port=kport, log_dir=tmp, die_with_parent=True),
                start_qdrant(http_port=qport, grpc_port=gport, storage_dir=tmp / "q", log_dir=tmp,
                             die_with_parent=True)]
    try:
        url, model, llm_proc = start_llm(args, tmp)
        if llm_proc is not None:
            services.append(llm_proc)
        base = ClioSettings(kafka_bootstrap=f"127.0.0.1:{kport}", qdrant_url=f"http://127.0.0.1:{qport}",
                            qdrant_grpc_port=gport, llm_backend="openai", llm_base_url=url, llm_model=model,
                            embedding_model=args.embedding_model, show_progress=False, topic_partitions=PARTITIONS,
                            max_conversation_tokens=args.max_conversation_tokens, metrics_every_batches=1,
                            user_id_hash_key="bench", publish_dir=tmp / "published")
        results = []
        for k in counts:
            log.info("run with %d consumer(s): %d conversations x %d facets", k, args.n, n_facets)
            results.append(one_run(base, k, records, args.facets, n_facets, tmp, args.timeout))
            log.info("%d consumer(s): %.1f s, %.3f conversations/s", k, results[-1].seconds,
                     results[-1].conversations_per_s)
    finally:
        for proc in reversed(services):
            proc.stop()
    write_report(args, results, url, own_server=llm_proc is not None, n_facets=n_facets)


def write_report(args: argparse.Namespace, results: list[RunResult], url: str, *, own_server: bool,
                 n_facets: int) -> None:
    from benchmarks.common import report

    ones = [r.seconds for r in results if r.consumers == 1] or [results[0].seconds]
    baseline = sum(ones) / len(ones)  # a repeated 1-consumer run shows how much the machine drifted
    rows: list[tuple[str, Any, str]] = [
        ("cpu cores", os.cpu_count() or 0, "shared by vLLM and every consumer"),
        ("conversations per run", args.n, f"MT-Bench, x {n_facets} facets, <= {args.max_conversation_tokens} tokens"),
    ]
    for i, r in enumerate(results, 1):
        name = f"run {i}, {r.consumers} consumer(s)"
        rows += [
            (f"{name}: wall", r.seconds, "s (produce -> all processed)"),
            (f"{name}: throughput", r.conversations_per_s, "conversations/s"),
            (f"{name}: facet prompts", r.prompts_per_s, "prompts/s"),
            (f"{name}: speed-up", baseline / r.seconds, "x the mean 1-consumer run"),
            (f"{name}: all cores busy", r.cpu_busy, "fraction of the run"),
            (f"{name}: consumer CPU", r.consumer_cpu_s / args.n, "CPU s per conversation"),
            (f"{name}: load before", r.loadavg_before, "1-min load average"),
        ]
    report("scaleout", rows, extra={
        "cpus": os.cpu_count(), "llm_server": "own vLLM server" if own_server else f"shared server {url}",
        "embedding_model": args.embedding_model, "facets": args.facets, "partitions": PARTITIONS,
        "runs": [asdict(r) for r in results]})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
