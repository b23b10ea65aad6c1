"""Online k-means throughput: ``clio_stream.online.kmeans.OnlineKMeans`` against river's KMeans.

Vectors per second of the worker's batched path (one matrix product assigns a whole batch, the
mean-rule update merges the batch's per-cluster sums: ``assign_many`` + ``merge_deltas``), of
``learn_many`` (one product per chunk, and the whole batch at once), ``predict_many`` and ``learn_one``
on random unit vectors, and of river's ``KMeans.learn_one`` on a few points (it is slow), in one run.
The numpy rows are steady-state rates: one untimed pass, then the median of three timed ones.
BLAS is limited to one thread by default: per-vector work gains nothing from more,
and on a busy 2-core box more threads are several times slower. glibc's malloc is tuned as a worker
tunes it (``--malloc-defaults`` to compare).

    .venv/bin/python -m benchmarks.online_kmeans --k 1000 --dim 768
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from clio_stream.domain.vectors import normalise_rows
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.ops.allocator import keep_freed_memory
from clio_stream.online.river_compat import to_river

log = logging.getLogger("benchmarks.online_kmeans")
_PARTITIONS = itertools.count()  # a source partition per set of worker passes (``_worker_passes``)


def _random_unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return normalise_rows(rng.standard_normal((n, dim), dtype=np.float32))


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench(k: int = 1000, dim: int = 768, n: int = 20_000, n_one: int = 2_000,
          river_ks: Iterable[int] = (50, 500), river_points: Mapping[int, int] | None = None,
          seed: int = 0) -> dict[str, float]:
    """Vectors per second of the numpy model against river's KMeans (few points for river: it is slow)."""
    rng = np.random.default_rng(seed)
    x = _random_unit(rng, n, dim)
    results: dict[str, float] = {}
    model = OnlineKMeans(_random_unit(rng, k, dim), counts=np.full(k, 10))
    model.learn_many(x[:512])  # warm up BLAS
    results[f"numpy learn_many k={k} d={dim} (chunks of {model.batch_size})"] = _steady(
        n, lambda: model.learn_many(x))
    results[f"numpy learn_many k={k} d={dim} (whole batch, one product)"] = _steady(
        n, lambda: model.learn_many(x, batch_size=0))
    for batch in (64, 1024):
        results[f"worker path k={k} d={dim}, batches of {batch} (assign + delta merge)"] = _steady(
            n, _worker_passes(model, x, batch))
    results[f"numpy predict_many k={k} d={dim}"] = _steady(n, lambda: model.predict_many(x))
    t0 = time.perf_counter()
    for row in x[:n_one]:
        model.learn_one(row)
    results[f"numpy learn_one k={k} d={dim}"] = _rate(n_one, time.perf_counter() - t0)
    river_points = dict(river_points or {50: 40, 500: 6})
    for rk in river_ks:
        km = to_river(OnlineKMeans(_random_unit(rng, rk, dim), rule="river"), seed=seed)
        pts = [dict(enumerate(row.astype(float))) for row in x[: river_points.get(rk, 10)]]
        t0 = time.perf_counter()
        for p in pts:
            km.learn_one(p)
        results[f"river KMeans.learn_one k={rk} d={dim}"] = _rate(len(pts), time.perf_counter() - t0)
    return results


def _steady(n: int, run: Callable[[], Any], repeats: int = 3) -> float:
    """Vectors per second of a worker that has been running: one untimed pass first (page faults of the
    score matrices, BLAS threads starting: a first pass measured 5-10 x slower here), then the median of
    ``repeats`` timed passes."""
    run()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return _rate(n, statistics.median(seconds))


def _worker_passes(model: OnlineKMeans, x: np.ndarray, batch: int) -> Callable[[], None]:
    """A pass over ``x`` per call, as a worker does per polled batch: one product assigns it, its deltas
    (split to fit a Kafka message) merge as one batch of per-cluster sums.

    Every delta must be new to the model's exactly-once bookkeeping, or the pass times the skip of a
    repeated record instead of the merge: each call continues the last one's offsets, each set of passes
    reads a source partition of its own (two sets on one model once shared offsets, and the second timed
    skips: 130k vectors/s instead of ~85k), and a pass that merged fewer records than it assigned raises.
    """
    from clio_stream.online.deltas import CentroidDeltas

    partition = next(_PARTITIONS)
    next_offset = 0

    def run() -> None:
        nonlocal next_offset
        offset = next_offset
        for lo in range(0, x.shape[0], batch):
            chunk = x[lo : lo + batch]
            got = model.assign_many(chunk)
            offsets = np.arange(offset, offset + len(chunk), dtype=np.int64)
            merged = model.merge_deltas(CentroidDeltas.for_records(
                model.facet or "f", model.version, "bench", partition, offset, offset + len(chunk) - 1, offsets,
                got.labels, got.rows, got.outliers))
            if sum(merged) != len(chunk):
                raise RuntimeError(f"a pass merged {sum(merged)} of {len(chunk)} records: it would time a skip")
            offset += len(chunk)
        next_offset = offset

    return run


def blas_threads(threads: int) -> contextlib.AbstractContextManager[Any]:
    """A limit of ``threads`` BLAS threads (0: the library default)."""
    if threads <= 0:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads; 0 = library default")
    ap.add_argument("--out", default="online_kmeans", help="results/NAME.json")
    ap.add_argument("--malloc-defaults", action="store_true",
                    help="leave glibc's malloc thresholds alone (a worker sets them: clio_stream/ops/allocator.py)")
    args = ap.parse_args(argv)
    tuned = False if args.malloc_defaults else keep_freed_memory()
    from benchmarks.common import quiet_logs, report

    quiet_logs()
    with blas_threads(args.threads):
        results = bench(k=args.k, dim=args.dim, n=args.n)
    report(args.out, [(name, rate, "vectors/s") for name, rate in results.items()],
           {"k": args.k, "dim": args.dim, "n": args.n, "blas_threads": args.threads, "malloc_tuned": tuned})


if __name__ == "__main__":
    main()
