"""Streaming commands: the whole embedded stack (``up``), a consumer worker, the producer, the first clustering."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from clio_stream.cli.options import (
    add_facets_arg,
    add_model_args,
    add_stream_args,
    facets_from_names,
    records_from_args,
    service_settings,
    settings_from_args,
    streaming_settings,
)
from clio_stream.cli.signals import stop_on_signals
from clio_stream.streaming.connection import KafkaConnection

if TYPE_CHECKING:
    from clio_stream.devstack.stack import Stack

log = logging.getLogger(__name__)


def cmd_consume(args: argparse.Namespace) -> int:
    """Run one worker of the consumer group until SIGTERM / SIGINT."""
    from clio_stream.ops.allocator import keep_freed_memory
    from consumers.worker import ConsumerWorker

    keep_freed_memory()  # per-batch numpy temporaries reused, not page-faulted in again (ops/allocator.py)
    settings = service_settings(args)
    stop = threading.Event()
    stop_on_signals(stop.set, "finishing the batch in hand, then leaving the group")
    worker = ConsumerWorker(settings, facets=facets_from_names(settings, args.facets))
    from consumers.prometheus import serve_worker_metrics

    server = serve_worker_metrics(settings, worker) if settings.metrics_port is not None else None
    try:
        worker.run(stop)
    finally:
        if server is not None:
            server.stop()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    """Send a file's conversations to the topic, key = conversation id."""
    from clio_stream.streaming.kafka_io import ensure_topics, make_producer
    from consumers.producing import produce, to_messages

    settings = streaming_settings(args)
    records = records_from_args(args)
    ensure_topics(KafkaConnection.from_settings(settings), {settings.topic: settings.topic_partitions})
    producer = make_producer(KafkaConnection.from_settings(settings))
    skipped: list[str] = []
    try:
        sent = produce(producer, settings.topic, to_messages(records, Path(args.file).stem, skipped),
                       total=len(records), progress=settings.show_progress)
    finally:
        producer.close()
    log.info("sent %d conversations to %s (%d records skipped)", sent, settings.topic, len(skipped))
    return 0


def cmd_bootstrap_clusters(args: argparse.Namespace) -> int:
    """Cluster the stored facet vectors once and publish them as the next clustering version."""
    from clio_stream.storage.store import QdrantStore
    from consumers.bootstrap import bootstrap_clustering

    settings = service_settings(args)
    with QdrantStore.from_settings(settings) as store:
        version = bootstrap_clustering(store, facets_from_names(settings, args.facets), settings)
    log.info("published clustering version %d", version)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The whole embedded stack in the foreground until Ctrl-C / SIGTERM."""
    from clio_stream.devstack.stack import Stack

    settings = settings_from_args(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(settings, consumers=args.consumers, example_data=not args.no_example_data, n_examples=args.n,
                  recluster_interval_s=args.recluster_interval)
    try:
        stack.start()
        for line in up_summary(stack):
            log.info("%s", line)
        if stack.viewer_key:  # the log-in link carries a key: to the terminal only, never into the logs
            sys.stdout.write(f"Open the dashboard: {stack.urls.get('dashboard_login')}\n")
            sys.stdout.flush()
        follower = None
        if args.logs:
            from clio_stream.devstack.log_tail import LogFollower

            follower = LogFollower([(p.name, p.log_path) for p in stack.processes], sys.stdout).start()
        stop.wait()
        if follower is not None:
            follower.stop()
    finally:
        stack.stop()
    return 0


def up_summary(stack: Stack) -> list[str]:
    """What ``up`` logs once it is up: addresses, and where the generated keys are (the keys themselves never)."""
    lines = ["", "clio-stream is up.", f"  dashboard:  {stack.urls.get('dashboard')}",
             f"  API docs:   {stack.urls.get('api_docs')}  (Authorization: Bearer <key>)",
             f"  Kafka:      {stack.settings.kafka_bootstrap}  topic {stack.settings.topic}",
             f"  Qdrant:     {stack.settings.qdrant_url}", f"  vLLM:       {stack.urls.get('llm')}",
             "  metrics:    " + "  ".join(u for k, u in stack.urls.items() if k.endswith("metrics"))]
    if stack.keys_file:
        lines.append(f"  keys:       viewer, analyst and admin keys in {stack.keys_file} (readable by you only)")
    lines.append("The dashboard fills in after the first re-clustering (about 30 conversations in). Ctrl-C stops.")
    return lines


def add_up_parser(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("up", help="run the whole embedded stack (broker, Qdrant, vLLM, consumers, API, scheduler)")
    sp.add_argument("--no-example-data", action="store_true", help="start empty instead of streaming examples")
    sp.add_argument("--n", type=int, default=200, help="example conversations to stream")
    sp.add_argument("--consumers", type=int, default=1, help="consumer processes in the group")
    sp.add_argument("--logs", action="store_true",
                    help="follow every child's log on the console, each line prefixed with its name")
    sp.add_argument("--recluster-interval", type=float, default=None,
                    help="seconds between scheduled runs (default: settings recluster_interval_s, 900)")
    add_model_args(sp)
    sp.set_defaults(func=cmd_up)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("consume", help="run one streaming worker of the consumer group (until SIGTERM)")
    add_facets_arg(sp)
    add_stream_args(sp)
    add_model_args(sp)
    sp.set_defaults(func=cmd_consume)

    sp = sub.add_parser("produce", help="send a JSONL / JSON / Parquet file of conversations to the topic")
    sp.add_argument("file")
    sp.add_argument("--limit", type=int, default=0, help="only the first N records")
    add_stream_args(sp)
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser("bootstrap-clusters",
                        help="k-means the stored facet vectors once and publish them as the next version")
    add_facets_arg(sp)
    add_stream_args(sp)
    sp.set_defaults(func=cmd_bootstrap_clusters)
