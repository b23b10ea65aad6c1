"""Logging set-up shared by every entry point: ISO dates always, JSON lines on request.

``CLIO_LOG_FORMAT=json`` (or ``clio-stream --log-json``, which sets it for the children of ``up`` too) writes one
JSON object per line with ``time`` (ISO 8601 with offset), ``level``, ``logger``, ``message``, ``process`` and,
for an exception, ``exception``: what log shippers (Fluent Bit, Vector, Loki's promtail) parse without a regex.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os

FORMAT_VAR = "CLIO_LOG_FORMAT"
LEVEL_VAR = "CLIO_LOG_LEVEL"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"
# vLLM and httpx are chatty at INFO; keep their warnings.
NOISY = ("httpx", "httpx2", "httpcore", "openai", "vllm", "urllib3", "kafka", "sentence_transformers")


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(*, verbose: bool = False, json_lines: bool | None = None) -> None:
    """Configure the root logger once for a process; ``json_lines`` None: from ``CLIO_LOG_FORMAT``."""
    if json_lines is None:
        json_lines = os.environ.get(FORMAT_VAR, "text").lower() == "json"
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT, DATE_FORMAT))
    # Like basicConfig, a no-op when the root logger already has handlers (an embedding application's, pytest's).
    logging.basicConfig(level=os.environ.get(LEVEL_VAR, "DEBUG" if verbose else "INFO"), handlers=[handler])
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
