"""A real HTTP server on loopback that records what it is sent: a webhook receiver, a Pushgateway stand-in."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class Recorder:
    """Records every request; answers 500 to the first ``fail_first`` ones and ``status`` to the rest."""

    def __init__(self, path: str = "", fail_first: int = 0, status: int = 200) -> None:
        self.requests: list[Request] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append(Request(self.command, self.path, dict(self.headers), body))
                self.send_response(500 if len(outer.requests) <= outer.fail_first else status)
                self.end_headers()

            do_POST = do_PUT = _record  # noqa: N815 - http.server's names

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
