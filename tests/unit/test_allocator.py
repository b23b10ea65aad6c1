"""The worker's malloc tuning: batch after batch of online assignment reuses its memory instead of faulting it in."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A worker's steady state at the benchmark's size (k=1,000, d=768, 16 batches of 1,024: with less data glibc
# happened to keep the memory even untuned): assign a batch, merge its deltas; minor page
# faults counted over the last batches (the first ones map the heap once).
_PROBE = """
import json, resource, sys
import numpy as np
from benchmarks.online_kmeans import _random_unit, _worker_passes
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.ops.allocator import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
rng = np.random.default_rng(0)
model = OnlineKMeans(_random_unit(rng, 1000, 768), counts=np.full(1000, 10))
run = _worker_passes(model, _random_unit(rng, 16384, 768), 1024)
run()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run()
print(json.dumps({"tuned": tuned, "faults_per_batch": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 16}))
"""


def _faults(mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, check=True,
                         timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt")
def test_a_tuned_worker_reuses_its_batch_memory() -> None:
    tuned = _faults("tuned")
    assert tuned["tuned"] is True
    # Default thresholds fault in several thousand 4 KiB pages per batch here (the scores and the sums).
    assert tuned["faults_per_batch"] < 100, tuned
