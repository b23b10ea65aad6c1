"""Local service binaries and process management for the broker and Qdrant.

The project runs against real servers (a Kafka-compatible broker and Qdrant) even
in tests and on a laptop, without Docker: the binaries come from ordinary package
registries and are cached once per machine.
"""

from clio_stream.services.binaries import cache_bin_dir, qdrant_binary, tansu_binary
from clio_stream.services.processes import (
    ManagedProcess,
    ProcessStartError,
    free_port,
    start_broker,
    start_qdrant,
)

__all__ = [
    "ManagedProcess",
    "ProcessStartError",
    "cache_bin_dir",
    "free_port",
    "qdrant_binary",
    "start_broker",
    "start_qdrant",
    "tansu_binary",
]
