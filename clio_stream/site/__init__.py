"""The static website: a chunked, lazily loaded browser for a ``ClioResult``."""

from clio_stream.site.server import serve_site, start_site_server_in_thread
from clio_stream.site.writer import read_gz_json, write_site

__all__ = ["read_gz_json", "serve_site", "start_site_server_in_thread", "write_site"]
