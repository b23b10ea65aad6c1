"""A small HTTP server for processes that have no web server of their own: ``/metrics``, ``/livez``, ``/readyz``.

Consumers and the re-clustering scheduler run one each (``metrics_port``), so Prometheus scrapes every part of
the pipeline the same way it scrapes the API, and Kubernetes probes a consumer's health instead of guessing
from its process. ``/metrics`` asks for ``Authorization: Bearer <metrics_token>`` when a token is set.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

if TYPE_CHECKING:  # pragma: no cover
    from clio_stream.settings import ClioSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    """What the probes answer: ``live`` (the loop runs; restart me if not) and ``ready`` (I do useful work)."""

    live: bool
    ready: bool
    detail: str = ""


class MetricsServer:
    """Serves ``registry`` and ``health()`` on ``host:port`` from a daemon thread (port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Health], *, host: str = "127.0.0.1",
                 port: int = 0, token: str | None = None) -> None:
        self.registry, self.health, self.token = registry, health, token
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self.host, self.port = host, int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=f"metrics-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "MetricsServer":
        self._thread.start()
        log.info("metrics and health on %s/metrics, /livez, /readyz", self.url)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _authorised(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), self.token)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    if not server._authorised(self.headers.get("Authorization")):
                        return self._reply(401, b"metrics token required\n", "text/plain")
                    return self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                if path in ("/livez", "/readyz"):
                    h = server.health()
                    ok = h.live if path == "/livez" else h.ready
                    body = (("ok" if ok else "not ok") + (f": {h.detail}" if h.detail else "") + "\n").encode()
                    return self._reply(200 if ok else 503, body, "text/plain")
                self._reply(404, b"not found\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
                log.debug("metrics server: " + format, *args)

        return Handler


def start_metrics_server(settings: "ClioSettings", registry: CollectorRegistry, health: Callable[[], Health], *,
                         port: int | None = None) -> MetricsServer:
    """A started server on ``metrics_host`` and ``port`` (default ``metrics_port``), with ``metrics_token``."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token is not None else None
    chosen = settings.metrics_port if port is None else port
    return MetricsServer(registry, health, host=settings.metrics_host, port=chosen or 0, token=token).start()
