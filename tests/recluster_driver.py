"""One re-clustering run as a process of its own, for the kill-at-every-step tests.

``python -m tests.recluster_driver URL GRPC_PORT PREFIX PUBLISH_DIR LOCK_TTL_S``; arm a fault with
``CLIO_FAULT_AT=<step>:exit`` (clio_stream.ops.faults). Exit status 0 after a run that wrote a version, 3 when
it was skipped (lock busy, nothing stored).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from clio_stream.domain.facets import main_facets
from clio_stream.living.job import recluster_once
from clio_stream.storage.store import QdrantStore
from tests.recluster_harness import job_settings
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

SKIPPED = 3


def main(argv: list[str]) -> int:
    url, grpc_port, prefix, publish_dir, ttl = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with QdrantStore(url, grpc_port=int(grpc_port), prefix=prefix, timeout_s=10) as store:
        report = recluster_once(store, ScriptedLLM(sensible_script), HashEmbedder(), main_facets,
                                job_settings(recluster_lock_ttl_s=float(ttl)), publish_dir=Path(publish_dir))
    return 0 if report is not None else SKIPPED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
