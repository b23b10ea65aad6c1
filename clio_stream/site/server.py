"""A tiny static server for the generated site (stdlib only).

The browser decompresses the ``.json.gz`` chunks itself, so they are served as
opaque bytes with no Content-Encoding header: a server that added one would make
the browser decompress them first and the page's own gunzip would see plain JSON.
Everything is served with ``Cache-Control: no-cache`` so a rewritten site is
picked up at once (clients still revalidate cheaply with If-Modified-Since).
"""

from __future__ import annotations

import functools
import logging
import socket
import sys
import threading
import urllib.parse
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from clio_stream.site.writer import normalize_html_root

log = logging.getLogger(__name__)


class _SiteHandler(SimpleHTTPRequestHandler):
    """Serves ``directory`` under the URL prefix ``html_root``."""

    def __init__(self, *args: Any, directory: str, html_root: str, **kwargs: Any) -> None:
        self.html_root = html_root
        super().__init__(*args, directory=directory, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        if self._redirect_to_root():
            return
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self._redirect_to_root():
            return
        super().do_HEAD()

    def _redirect_to_root(self) -> bool:
        """With a sub-path root, send '/' to it instead of a bare 404."""
        if self.html_root and "://" not in self.html_root and self.path.split("?", 1)[0] == "/":
            self.send_response(302)
            self.send_header("Location", self.html_root + "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def translate_path(self, path: str) -> str:
        if "\x00" in urllib.parse.unquote(path):  # os.stat would raise on it and drop the connection: 404 instead
            return str(Path(self.directory) / ".clio-not-found")
        root = self.html_root if "://" not in self.html_root else ""
        if root:
            bare = path.split("?", 1)[0].split("#", 1)[0]
            if bare != root and not bare.startswith(root + "/"):
                return str(Path(self.directory) / ".clio-not-found")  # outside the prefix: 404
            path = path[len(root):] or "/"
        return super().translate_path(path)

    def guess_type(self, path: str) -> str:  # type: ignore[override]
        if str(path).endswith(".gz"):
            return "application/gzip"
        return super().guess_type(path)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s - %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _make_server(directory: Path, host: str, port: int, html_root: str) -> tuple[ThreadingHTTPServer, str]:
    directory = Path(directory).absolute()
    if not (directory / "index.html").exists():
        log.warning("%s has no index.html yet; serving it anyway", directory)
    root = normalize_html_root(html_root)
    handler = functools.partial(_SiteHandler, directory=str(directory), html_root=root)
    server_cls = _Server6 if ":" in host else _Server
    server = server_cls((host, port), handler)
    shown_host = f"[{host}]" if ":" in host else host
    prefix = root if "://" not in root else ""
    url = f"http://{shown_host}:{server.server_address[1]}{prefix}/"
    return server, url


def announce_link(url: str) -> None:
    """The site's link on the terminal, as the seed's web UI prints it (a user's output, not a log line)."""
    sys.stdout.write(f"Serving at {url}  (Ctrl-C stops the server)\n")
    sys.stdout.flush()


def serve_site(directory: Path, host: str = "127.0.0.1", port: int = 8421, html_root: str = "",
               announce: Callable[[str], None] | None = None) -> None:
    """Serve the site until interrupted (blocking); ``announce`` gets the link once the port is bound."""
    server, url = _make_server(directory, host, port, html_root)
    log.info("serving %s at %s", directory, url)
    if announce is not None:
        announce(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("stopping the site server")
    finally:
        server.server_close()


def start_site_server_in_thread(directory: Path, host: str = "127.0.0.1", port: int = 0,
                                html_root: str = "") -> tuple[ThreadingHTTPServer, str]:
    """Serve in a daemon thread (port 0 picks a free port); stop with ``server.shutdown(); server.server_close()``."""
    server, url = _make_server(directory, host, port, html_root)
    thread = threading.Thread(target=server.serve_forever, name=f"clio-site-{url}", daemon=True)
    thread.start()
    log.info("serving %s at %s", directory, url)
    return server, url
