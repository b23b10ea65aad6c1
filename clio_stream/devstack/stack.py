"""``clio-stream up``: the whole embedded stack in one foreground command.

Started in dependency order and stopped in reverse: the Kafka-protocol broker
(Tansu, in memory), a Qdrant server (data kept under the cache dir), vLLM's
OpenAI-compatible server, N consumer processes of one group, the HTTP API with
the dashboard, and the re-clustering scheduler; optionally the example
conversations are streamed in. Each part is a separate process or thread, the
way it runs at scale (see deploy/), only on one machine and on loopback.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from clio_stream.devstack.hub import hub_env
from clio_stream.streaming.connection import KafkaConnection
from clio_stream.secret_settings import DEFAULT_USER_ID_HASH_KEY, check_user_hash_key
from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)

EXAMPLE_METADATA_KEY = "length"  # "short" (one exchange) or "long": put on the example conversations, declared

API_KEYS_FILE = "api-keys"
USER_HASH_KEY_FILE = "user-id-hash-key"


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` readable by its owner only (created with mode 600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def demo_user_hash_key(run_dir: Path) -> str:
    """The demo's user hash key: generated once and kept, since the user hashes in Qdrant outlive a run."""
    path = run_dir / USER_HASH_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(32)
    write_private(path, key + "\n")
    return key


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    if "://" not in address:
        address = "tcp://" + address
    u = urlparse(address)
    return u.hostname or "127.0.0.1", u.port or default_port


@dataclass
class Stack:
    settings: ClioSettings
    consumers: int = 1
    example_data: bool = True
    n_examples: int = 200
    recluster_interval_s: float | None = None  # default: settings.recluster_interval_s
    first_cluster_at: int = 30  # points before the first clustering (the dashboard is empty until then)
    run_dir: Path | None = None  # logs; default <cache_dir>/run
    processes: list[Any] = field(default_factory=list)
    threads: list[Any] = field(default_factory=list)
    viewer_key: str | None = None
    admin_key: str | None = None
    keys_file: Path | None = None  # the generated keys (mode 600); never logged
    urls: dict[str, str] = field(default_factory=dict)
    supervisor: Any = None  # devstack.supervisor.Supervisor, once every child has started

    # -- start ---------------------------------------------------------------
    def start(self) -> "Stack":
        from clio_stream.streaming.kafka_io import ensure_topics
        from clio_stream.devstack.processes import port_in_use, start_broker, start_qdrant

        if self.example_data and not self.settings.metadata_keys:  # the example data's one metadata key (below)
            self.settings = self.settings.with_overrides(metadata_keys=[{"name": EXAMPLE_METADATA_KEY}])
        s = self.settings
        self.run_dir = self.run_dir or Path(s.cache_dir) / "run"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        logs = self.run_dir / "logs"
        s = self._demo_secrets(self.run_dir)  # before anything starts: a refused key stops here

        host, port = _host_port(s.kafka_bootstrap, 9092)
        if port_in_use(host, port):
            log.info("a broker already listens on %s:%d; using it", host, port)
        else:
            self.processes.append(start_broker(host, port, log_dir=logs, die_with_parent=True))
            log.info("broker (Tansu, in memory) on %s:%d", host, port)
        ensure_topics(KafkaConnection.from_settings(s), {s.topic: s.topic_partitions, s.dlq_topic: s.topic_partitions,
                                          s.deltas_topic: s.deltas_partitions})

        qhost, qport = _host_port(s.qdrant_url, 6333)
        if port_in_use(qhost, qport):
            log.info("a Qdrant server already listens on %s:%d; using it", qhost, qport)
        else:
            self.processes.append(start_qdrant(qhost, qport, s.qdrant_grpc_port or qport + 1,
                                               storage_dir=Path(s.cache_dir) / "qdrant", log_dir=logs,
                                               die_with_parent=True))
            log.info("Qdrant on %s:%d (data in %s)", qhost, qport, Path(s.cache_dir) / "qdrant")

        if s.llm_backend != "openai" or not s.llm_base_url:
            from clio_stream.devstack.assets import resolve_model
            from clio_stream.devstack.hub import OFFLINE_VAR, hub_env
            from clio_stream.devstack.processes import free_port
            from clio_stream.devstack.vllm_server import engine_flags, start_vllm_server

            model = resolve_model(s.llm_model, "llm")
            vport = free_port()
            log.info("starting vLLM's OpenAI server for %s (about a minute on a CPU)", model)
            extra = engine_flags(s.llm_engine_args)  # the same engine arguments as the in-process engine
            self.processes.append(start_vllm_server(model, "127.0.0.1", vport, log_dir=logs,
                                                    max_model_len=s.llm_max_model_len,
                                                    kv_cache_gib=s.llm_kv_cache_gib, extra_args=extra,
                                                    die_with_parent=True,
                                                    offline=hub_env(s, local_llm=True)[OFFLINE_VAR] != "0"))
            s = self.settings = s.with_overrides(llm_backend="openai", llm_base_url=f"http://127.0.0.1:{vport}/v1",
                                                 llm_model=model)
        self.urls["llm"] = s.llm_base_url or ""

        self._start_consumers(logs)
        self._start_api()
        self._start_scheduler()
        self._supervise()
        if self.example_data:
            self._stream_examples()
        return self

    def _supervise(self) -> None:
        """Restart children that exit (with back-off) and report them to ``GET /v1/status`` via the store."""
        from clio_stream.devstack.supervisor import Supervisor
        from clio_stream.storage.documents import UP_CHILDREN
        from clio_stream.storage.store import QdrantStore

        store = QdrantStore.from_settings(self.settings)
        self.supervisor = Supervisor(self.processes, report=lambda doc: store.states.write(UP_CHILDREN, doc))
        self.supervisor.start()

    def _demo_secrets(self, run_dir: Path) -> ClioSettings:
        """Secrets the demo may generate: the user hash key (kept in the run dir) and per-run API keys.

        Only unset values are generated; a placeholder set on purpose is refused as by every service.
        Keys go to a file readable by the owner only, never into the logs. Returns the settings with them.
        """
        from api.auth import KeyRing

        s = self.settings
        if s.user_id_hash_key == DEFAULT_USER_ID_HASH_KEY:
            s = self.settings = s.with_overrides(user_id_hash_key=demo_user_hash_key(run_dir))
            log.info("using the demo's user hash key in %s (set CLIO_USER_ID_HASH_KEY to choose your own)",
                     run_dir / USER_HASH_KEY_FILE)
        check_user_hash_key(s)  # a placeholder set on purpose is refused here as by every service
        if s.api_keys is None and not s.api_allow_anonymous:
            self.viewer_key, analyst, self.admin_key = (secrets.token_urlsafe(18) for _ in range(3))
            s = self.settings = s.with_overrides(
                api_keys=f"viewer:{self.viewer_key},analyst:{analyst},admin:{self.admin_key}")
            self.keys_file = write_private(run_dir / API_KEYS_FILE,
                                           f"viewer:{self.viewer_key}\nanalyst:{analyst}\nadmin:{self.admin_key}\n")
            log.info("generated API keys for this run in %s (set CLIO_API_KEYS to choose your own)", self.keys_file)
        KeyRing.from_settings(s)  # keys of your own that are CHANGE-ME placeholders: refused before anything starts
        return s

    def _child_env(self) -> dict[str, str]:
        """The parent's environment plus every plain setting, so children see the same configuration."""
        env = dict(os.environ)
        env.pop("CLIO_API_KEYS", None)  # workers never need the keys
        env.update(self.settings.to_env())
        env.update({"CLIO_SHOW_PROGRESS": "false", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                    **hub_env(self.settings, local_llm=False)})  # children call the LLM server; they load embedders
        return env

    def _start_consumers(self, logs: Path) -> None:
        from clio_stream.devstack.processes import ManagedProcess, free_port

        for i in range(self.consumers):
            port = free_port()  # each consumer's /metrics, /livez, /readyz
            env = {**self._child_env(), "CLIO_WORKER_ID": f"consumer-{i}", "CLIO_METRICS_PORT": str(port)}
            self.urls[f"consumer-{i} metrics"] = f"http://{self.settings.metrics_host}:{port}/metrics"
            p = ManagedProcess(f"consumer-{i}", [sys.executable, "-m", "clio_stream.cli", "consume"],
                               log_path=logs / f"consumer-{i}.log", env=env, ready_timeout=5,
                               die_with_parent=True)  # `up` killed with -9 takes its children along
            self.processes.append(p.start())
            log.info("consumer %d started (log: %s)", i, p.log_path)

    def _start_api(self) -> None:
        import uvicorn

        from api.app import create_app

        s = self.settings
        app = create_app(s)
        config = uvicorn.Config(app, host=s.web_host, port=s.web_port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.1)
        if not server.started:
            raise RuntimeError(f"the API did not start on {s.web_host}:{s.web_port} (port in use?)")
        self.threads.append(server)
        base = f"http://{s.web_host}:{s.web_port}"
        self.urls["dashboard"] = f"{base}/"
        if self.viewer_key:
            self.urls["dashboard_login"] = f"{base}/?key={self.viewer_key}"
        self.urls["api_docs"] = f"{base}/docs"

    def _start_scheduler(self) -> None:
        from clio_stream.living.service import ReclusterService
        from clio_stream.living.scheduler import Triggers

        service = ReclusterService(self.settings)  # same snapshot/run as `clio-stream scheduler`
        sched = service.scheduler(Triggers.from_settings(self.settings, interval_s=self.recluster_interval_s,
                                                         min_points=self.first_cluster_at))
        sched.start()
        self.threads.append(sched)
        from clio_stream.living.scheduler_metrics import serve_scheduler_metrics

        server = serve_scheduler_metrics(self.settings, sched, port=self.settings.metrics_port or 0)
        self.threads.append(server)
        self.urls["scheduler metrics"] = f"{server.url}/metrics"

    def _stream_examples(self) -> None:
        from clio_stream.batch_input import get_example_data
        from clio_stream.streaming.kafka_io import make_producer
        from consumers.producing import produce, to_messages

        s = self.settings
        # One metadata key, so the demo's filters and breakdowns have something to slice by: short or long chats.
        records = [{**r, "metadata": {EXAMPLE_METADATA_KEY: "short" if len(r["conversation"]) <= 2 else "long"}}
                   for r in get_example_data(self.n_examples)]

        def send() -> None:
            producer = make_producer(KafkaConnection.from_settings(s))
            try:
                n = produce(producer, s.topic, to_messages(records, "example", []), total=len(records),
                            progress=False)
                log.info("streamed %d example conversations into %s", n, s.topic)
            finally:
                producer.close()

        t = threading.Thread(target=send, name="example-producer", daemon=True)
        t.start()

    # -- stop ----------------------------------------------------------------
    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()  # first: a child stopped on purpose is not restarted
        for t in reversed(self.threads):
            try:
                if hasattr(t, "should_exit"):
                    t.should_exit = True
                elif hasattr(t, "stop"):
                    t.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.debug("stopping %r raised", t, exc_info=True)
        for p in reversed(self.processes):
            try:
                p.stop()
            except Exception:  # noqa: BLE001
                log.debug("stopping %r raised", p, exc_info=True)
        log.info("stack stopped")
