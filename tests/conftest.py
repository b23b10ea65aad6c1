"""Shared fixtures: a real Kafka-compatible broker (Tansu) and a real Qdrant server.

Both are started once per test session, only when a test asks for them, on free
ports, and stopped by finalizers (``die_with_parent`` also stops them if pytest
itself is killed). Set ``CLIO_TEST_BOOTSTRAP`` / ``CLIO_TEST_QDRANT_URL`` to run
against servers you already have (e.g. Apache Kafka) instead.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest

from clio_stream.devstack.processes import ManagedProcess, free_port, start_broker, start_qdrant

# One definition for the whole session: a fixture imported into several test modules is instantiated once per
# module, which would start a vLLM server (gigabytes each) for every module that uses it.
from tests.integration.conftest_vllm_server import vllm_server  # noqa: E402,F401 - session fixture

# kafka-python logs every connection and group step at INFO; keep test logs readable.
logging.getLogger("kafka").setLevel(logging.WARNING)


@dataclass
class BrokerHandle:
    bootstrap: str
    process: ManagedProcess | None  # None for an external broker


@dataclass
class QdrantHandle:
    url: str  # http://host:port
    host: str
    http_port: int
    grpc_port: int
    process: ManagedProcess | None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A running broker for the whole session (in-memory Tansu unless overridden)."""
    external = os.environ.get("CLIO_TEST_BOOTSTRAP")
    if external:
        yield BrokerHandle(bootstrap=external, process=None)
        return
    port = free_port()
    proc = start_broker(
        port=port, log_dir=tmp_path_factory.mktemp("broker-logs"), die_with_parent=True
    )
    try:
        yield BrokerHandle(bootstrap=f"127.0.0.1:{port}", process=proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def qdrant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QdrantHandle]:
    """A running Qdrant server for the whole session, with throwaway storage."""
    external = os.environ.get("CLIO_TEST_QDRANT_URL")
    if external:
        u = urlparse(external)
        yield QdrantHandle(external, u.hostname or "127.0.0.1", u.port or 6333, 6334, None)
        return
    http_port, grpc_port = free_port(), free_port()
    proc = start_qdrant(
        http_port=http_port,
        grpc_port=grpc_port,
        storage_dir=tmp_path_factory.mktemp("qdrant-storage"),
        log_dir=tmp_path_factory.mktemp("qdrant-logs"),
        die_with_parent=True,
    )
    try:
        yield QdrantHandle(f"http://127.0.0.1:{http_port}", "127.0.0.1", http_port, grpc_port, proc)
    finally:
        proc.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """Topic/group/collection names that never collide between tests on a shared server."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return make


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--long``: the full reliability suite (thousands of conversations, many kills) instead of its short form."""
    parser.addoption("--long", action="store_true", default=False,
                     help="run the full fault/abuse suite in tests/reliability (default: the short form)")


@pytest.fixture(scope="session")
def long_run(request: pytest.FixtureRequest) -> bool:
    """True under ``--long``; reliability tests scale their sizes with it."""
    return bool(request.config.getoption("--long"))
