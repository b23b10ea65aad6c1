"""Re-clustering at scale: one facet of 100k, 1M and 2M points in the real Qdrant server.

The data is a mixture of ``--components`` Gaussians on the unit sphere in 384 dimensions (unequal weights,
known labels), stored as the Request facet's points the way workers store them (uuid5 point ids, user
hashes, conversation times over 20 days). The store is filled once and grown between sizes (100k, then
900k more, then 1M more); each size is one re-clustering run in a process of its own, so its peak RSS is
the job's. The LLM is ``tests.unit.fakes.ScriptedLLM`` and the embedder a 384-d hash embedder: naming
is counted (prompts), not timed as a model would be.

Reported per size: the job's peak RSS, wall per stage (sample, fit, assign, name, publish), the assignment
pass's rate, LLM prompts, base clusters; and, in another process, the recovered-structure NMI against the
true components of k-means fitted on the job's sample (then every point assigned) and of k-means fitted on
every point, with the mixture's k. Separately, the Qdrant server's memory per point for three collection
layouts (``--memory-points``, fresh servers, measured after a restart).

    .venv/bin/python -m benchmarks.recluster_scale                     # 100k, 1M, 2M (about an hour here)
    .venv/bin/python -m benchmarks.recluster_scale --sizes 100000 --memory-points 20000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.recluster_scale")

CHUNK = 50_000  # points generated (and loaded) per step; sizes are multiples of it
DIM = 384
T0 = 1_767_225_600.0  # 2026-01-01: conversation times run from here, 20 days per 2M points
SECONDS_PER_POINT = 20 * 86_400 / 2_000_000
FACET = "Request"


# --------------------------------------------------------------------------- the data


class Mixture:
    """``k`` unit-length means with Dirichlet weights; point ``i`` is the same whichever process makes it."""

    def __init__(self, k: int, spread: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        means = rng.standard_normal((k, DIM))
        self.means = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
        self.weights = rng.dirichlet(np.full(k, 2.0))
        self.k, self.spread, self.seed = k, spread, seed

    def chunk(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors and component labels of points ``c * CHUNK`` .. ``(c + 1) * CHUNK``."""
        rng = np.random.default_rng([self.seed, c])
        labels = rng.choice(self.k, CHUNK, p=self.weights)
        x = self.means[labels] + self.spread * rng.standard_normal((CHUNK, DIM)).astype(np.float32) / np.sqrt(DIM)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def conversation_id(i: int) -> str:
    return f"s{i}"


def user_hash(i: int, users: int) -> str:
    import hashlib

    return hashlib.sha256(f"user-{(i * 2_654_435_761) % users}".encode()).hexdigest()[:32]


def load(store: Any, mix: Mixture, start: int, stop: int, users: int) -> float:
    """Store points ``start..stop`` as the facet's points; returns the points per second of the upserts."""
    from qdrant_client import models

    from clio_stream.storage.records import facet_point_id

    t0 = time.perf_counter()
    for c in range(start // CHUNK, stop // CHUNK):
        x, labels = mix.chunk(c)
        for s in range(0, CHUNK, 2000):
            idx = range(c * CHUNK + s, c * CHUNK + s + 2000)
            with store.guard("benchmark upsert"):
                store.client.upsert(store.facets, wait=False, points=models.Batch(
                    ids=[facet_point_id(conversation_id(i), FACET) for i in idx],
                    vectors=x[s:s + 2000].tolist(),
                    payloads=[{"conversation_id": conversation_id(i), "facet": FACET,
                               "value": f"help with topic {labels[i - c * CHUNK]} case {i % 7}",
                               "user_hash": user_hash(i, users), "timestamp": T0 + i * SECONDS_PER_POINT,
                               "numeric": None, "outlier": False} for i in idx]))
        log.warning("loaded %d of %d points", (c + 1) * CHUNK, stop)
    wait_green(store)
    return (stop - start) / (time.perf_counter() - t0)


def wait_green(store: Any, timeout_s: float = 3600.0) -> None:
    """Until the collection's optimisations are done (a "grey" collection is nudged to start them)."""
    from qdrant_client import models

    from clio_stream.storage.errors import StoreUnavailable

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            status = str(store.facet_collection_info().status).lower().split(".")[-1]
        except StoreUnavailable:  # a server just restarted answers HTTP before its gRPC port
            time.sleep(1)
            continue
        if status == "green":
            return
        if status == "grey":
            store.client.update_collection(store.facets, optimizers_config=models.OptimizersConfigDiff())
        time.sleep(2)
    log.warning("collection not green after %.0f s; measuring anyway", timeout_s)


# --------------------------------------------------------------------------- the job, in a process of its own


def job_settings(url: str, grpc_port: int, prefix: str, publish: Path, page_size: int, shard_number: int = 1) -> Any:
    """The job's settings; the store's layout (int8 in RAM, originals and payload on disk, no HNSW graph,
    ``shard_number`` shards) comes from them too, so the benchmark's collection is the one settings make."""
    from clio_stream.settings import ClioSettings

    return ClioSettings(qdrant_url=url, qdrant_grpc_port=grpc_port, qdrant_prefix=prefix, publish_dir=publish,
                        show_progress=False, user_id_hash_key="benchmark-key-not-a-secret",
                        recluster_page_size=page_size, recluster_lock_ttl_s=600,
                        qdrant_quantization="int8", qdrant_vectors_on_disk=True, qdrant_payload_on_disk=True,
                        qdrant_hnsw_m=0, qdrant_shard_number=shard_number)


def job_main(args: argparse.Namespace) -> None:
    """One re-clustering run; prints its numbers as JSON on the last line."""
    from clio_stream.domain.facets import REQUEST
    from clio_stream.living.job import recluster_once
    from clio_stream.storage.store import QdrantStore
    from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = job_settings(args.url, args.grpc_port, args.prefix, Path(args.publish), args.page_size,
                            args.shard_number)
    rss_start = _peak_rss_mb()
    embedder = HashEmbedder()
    embedder.dim = DIM
    llm = ScriptedLLM(sensible_script)
    with QdrantStore.from_settings(settings) as store:
        report = recluster_once(store, llm, embedder, [REQUEST], settings, publish_dir=Path(args.publish),
                                owner="benchmark")
    assert report is not None, "the job did not run"
    info = report.facets[FACET]
    print(json.dumps({"version": report.version, "points": report.points[FACET], "stages": report.walls,
                      "seconds": report.seconds, "llm_prompts": report.llm_prompts, "llm_calls": len(llm.calls),
                      "k": info["k"], "sample": info["sample"], "leaves": report.clusters[FACET],
                      "assign_points": info["assign_points"], "assign_pages": info["assign_pages"],
                      "peak_rss_mb": _peak_rss_mb(), "rss_after_imports_mb": rss_start}))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- NMI: sample fit vs full fit


def nmi_main(args: argparse.Namespace) -> None:
    """k-means with the mixture's k on the job's sample (every point then assigned) and on every point."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from clio_stream.storage.records import facet_point_id

    import uuid

    mix = Mixture(args.components, args.spread, args.seed)
    n = args.n
    x = np.empty((n, DIM), np.float32)
    truth = np.empty(n, np.int64)
    for c in range(n // CHUNK):
        x[c * CHUNK:(c + 1) * CHUNK], truth[c * CHUNK:(c + 1) * CHUNK] = mix.chunk(c)
    order = np.argsort([uuid.UUID(facet_point_id(conversation_id(i), FACET)).int for i in range(n)], kind="stable")
    sample = np.sort(order[: args.sample])  # the job's sample: the first points in id order

    def fit(rows: np.ndarray) -> tuple[Any, float]:
        t0 = time.perf_counter()
        model = KMeans(args.components, n_init=1, max_iter=args.max_iter, random_state=args.seed, copy_x=False)
        model.fit(rows)
        return model, time.perf_counter() - t0

    def predict(model: Any) -> np.ndarray:
        return np.concatenate([model.predict(x[i:i + 100_000]) for i in range(0, n, 100_000)])

    sampled, t_sample = fit(x[sample])
    full, t_full = fit(x)
    out = {"n": n, "sample": int(len(sample)), "k": args.components,
           "nmi_sample_fit": float(normalized_mutual_info_score(truth, predict(sampled))),
           "nmi_full_fit": float(normalized_mutual_info_score(truth, full.labels_)),
           "seconds_sample_fit": t_sample, "seconds_full_fit": t_full, "peak_rss_mb": _peak_rss_mb()}
    out["ratio"] = out["nmi_sample_fit"] / out["nmi_full_fit"]
    print(json.dumps(out))


# --------------------------------------------------------------------------- Qdrant memory per point


LAYOUTS = {
    "float32 in RAM, HNSW m=16 (the defaults)": ("none", False, False, 16),
    "float32 in RAM, no HNSW": ("none", False, False, 0),
    "int8 in RAM, originals and payload on disk, no HNSW": ("int8", True, True, 0),
}


def memory_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Resident memory of a Qdrant server per stored point, per collection layout: a server holding
    ``--memory-points`` (optimised into one segment) against one holding the empty collections, each measured
    freshly restarted, after the queries the job and the API make and before any vector is read back."""
    from clio_stream.devstack.processes import free_port, start_qdrant
    from clio_stream.storage.qdrant import CollectionLayout
    from clio_stream.storage.store import QdrantStore

    mix = Mixture(args.components, args.spread, args.seed)
    n = args.memory_points // CHUNK * CHUNK
    out = []
    for name, layout in LAYOUTS.items():
        root = Path(args.workdir) / f"memory-{layout[0]}-{layout[1]}-{layout[3]}"
        shutil.rmtree(root, ignore_errors=True)
        hp, gp = free_port(), free_port()
        store = QdrantStore(f"http://127.0.0.1:{hp}", grpc_port=gp, prefix="mem", layout=CollectionLayout(*layout),
                            timeout_s=600)
        measured: dict[str, dict[str, int]] = {}
        for stage in ("empty", "full"):
            proc = start_qdrant(http_port=hp, grpc_port=gp, storage_dir=root, log_dir=root, die_with_parent=True)
            if stage == "empty":
                store.ensure_collections(DIM)
            else:
                load(store, mix, 0, n, max(1, n // 5))
            proc.stop()
            proc = start_qdrant(http_port=hp, grpc_port=gp, storage_dir=root, log_dir=root, die_with_parent=True)
            wait_green(store)
            store.points.count(facet=FACET)  # the payload indexes in use, as the API and the job use them
            store.points.cluster_members(FACET, 0, limit=100)
            time.sleep(5)
            measured[stage] = _rss(proc.pid)
            proc.stop()
        store.close()
        disk = sum(f.stat().st_size for f in (root / "storage").rglob("*") if f.is_file())
        row = {"layout": name, "points": n,
               **{f"{kind}_bytes_per_point": (measured["full"][key] - measured["empty"][key]) / n
                  for kind, key in (("ram", "VmRSS"), ("anon", "RssAnon"), ("file", "RssFile"))},
               "disk_bytes_per_point": disk / n}
        log.warning("memory: %s", row)
        out.append(row)
        shutil.rmtree(root, ignore_errors=True)
    return out


def _rss(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


# --------------------------------------------------------------------------- the whole benchmark


def _child(mode: str, *argv: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.recluster_scale", "--mode", mode, *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-4000:]}")
    log_path = Path(argv[argv.index("--workdir") + 1]) / f"{mode}-{time.strftime('%H%M%S')}.log"
    log_path.write_text(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("all", "job", "nmi"), default="all", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="100000,1000000,2000000", help="points per facet, ascending")
    ap.add_argument("--components", type=int, default=50, help="Gaussians in the mixture (the NMI's k)")
    ap.add_argument("--spread", type=float, default=3.0, help="noise norm per unit-length mean")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--sample", type=int, default=50_000, help="the job's sample (recluster_sample_size)")
    ap.add_argument("--page-size", type=int, default=16_384, help="points per page of the assignment pass")
    ap.add_argument("--max-iter", type=int, default=50, help="Lloyd iterations of the NMI fits")
    ap.add_argument("--memory-points", type=int, default=200_000, help="points per layout (0: skip)")
    ap.add_argument("--memory-only", action="store_true", help="measure Qdrant's memory per point only")
    ap.add_argument("--no-nmi", action="store_true", help="skip the NMI fits")
    ap.add_argument("--workdir", default="/tmp/clio-recluster-scale", help="Qdrant storage and logs (reused)")
    ap.add_argument("--url"), ap.add_argument("--grpc-port", type=int), ap.add_argument("--prefix")
    ap.add_argument("--publish"), ap.add_argument("--n", type=int)
    ap.add_argument("--shard-number", type=int, default=1,
                    help="shards of the facet collection (qdrant_shard_number); a reused --workdir must match")
    ap.add_argument("--result", default="recluster_scale", help="results file: benchmarks/results/RESULT.json")
    args = ap.parse_args()
    if args.mode == "job":
        return job_main(args)
    if args.mode == "nmi":
        return nmi_main(args)

    from benchmarks.common import quiet_logs, report
    from clio_stream.devstack.processes import free_port, start_qdrant
    from clio_stream.storage.store import QdrantStore

    if args.shard_number < 1:
        raise SystemExit("--shard-number must be at least 1")
    quiet_logs()
    logging.getLogger("benchmarks.recluster_scale").setLevel(logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % CHUNK for s in sizes) or sizes != sorted(sizes):
        raise SystemExit(f"--sizes must ascend in multiples of {CHUNK}")
    if args.memory_points and args.memory_points < CHUNK:
        raise SystemExit(f"--memory-points must be 0 (skip) or at least {CHUNK}")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    memory = memory_main(args) if args.memory_points else []
    if args.memory_only:
        report("recluster_scale_memory", _rows([], memory), {"memory": memory, "load_before": load_before,
                                                             "load_after": os.getloadavg(), "args": vars(args)})
        return
    hp, gp = free_port(), free_port()
    qdrant = start_qdrant(http_port=hp, grpc_port=gp, storage_dir=work / "qdrant", log_dir=work, die_with_parent=True)
    url, prefix = f"http://127.0.0.1:{hp}", "scale"
    mix = Mixture(args.components, args.spread, args.seed)
    runs: list[dict[str, Any]] = []
    try:
        settings = job_settings(url, gp, prefix, work, args.page_size, args.shard_number)
        store = QdrantStore.from_settings(settings.with_overrides(qdrant_timeout_s=600))
        store.ensure_collections(DIM)
        shards = int(store.facet_collection_info().config.params.shard_number or 1)
        if shards != args.shard_number:
            raise SystemExit(f"{work / 'qdrant'} holds a facet collection of {shards} shard(s), not "
                             f"--shard-number {args.shard_number}: use another --workdir")
        have = store.points.count(facet=FACET)
        for n in sizes:
            rate = load(store, mix, have, n, users=n // 5) if n > have else None
            have = max(have, n)
            shutil.rmtree(work / f"published-{n}", ignore_errors=True)
            load_at = os.getloadavg()
            job = _child("job", "--url", url, "--grpc-port", str(gp), "--prefix", prefix, "--publish",
                         str(work / f"published-{n}"), "--page-size", str(args.page_size), "--workdir", str(work),
                         "--shard-number", str(args.shard_number))
            job.update(n=n, load_rate=rate, load_average=load_at, shard_number=shards)
            if not args.no_nmi:
                job["nmi"] = _child("nmi", "--n", str(n), "--components", str(args.components), "--spread",
                                    str(args.spread), "--seed", str(args.seed), "--sample", str(args.sample),
                                    "--max-iter", str(args.max_iter), "--workdir", str(work))
            log.warning("size %d: %s", n, job)
            runs.append(job)
        store.close()
    finally:
        qdrant.stop()
    report(args.result, _rows(runs, memory), {"runs": runs, "memory": memory, "load_before": load_before,
                                                    "load_after": os.getloadavg(), "args": vars(args)})


def _rows(runs: list[dict[str, Any]], memory: list[dict[str, Any]]) -> list[tuple[str, Any, str]]:
    rows: list[tuple[str, Any, str]] = []
    prev = None
    for r in runs:
        n = f"{r['n']:,}"
        st = r["stages"]
        rows += [(f"{n}: job peak RSS", r["peak_rss_mb"], "MB"),
                 *([(f"{n}: peak RSS / previous size", r["peak_rss_mb"] / prev["peak_rss_mb"], "x (target <= 1.3)")]
                   if prev else []),
                 *[(f"{n}: wall {s}", st.get(s, 0.0), "s") for s in ("sample", "fit", "assign", "name", "publish")],
                 (f"{n}: fit + name", st.get("fit", 0.0) + st.get("name", 0.0), "s"),
                 (f"{n}: assign pass rate", r["assign_points"] / max(st.get("assign", 0.0), 1e-9),
                  "points/s (target >= 50k)"),
                 (f"{n}: base clusters (k)", r["k"], "clusters"),
                 (f"{n}: facet collection shards", r.get("shard_number", 1), "shards"),
                 (f"{n}: LLM prompts", r["llm_prompts"], "prompts"),
                 (f"{n}: load average (1, 5, 15 min)", " ".join(f"{v:.1f}" for v in r["load_average"]), "")]
        if "nmi" in r:
            rows += [(f"{n}: NMI sample fit / full fit", f"{r['nmi']['nmi_sample_fit']:.4f} / "
                      f"{r['nmi']['nmi_full_fit']:.4f}", f"ratio {r['nmi']['ratio']:.3f} (target >= 0.97)")]
        prev = r
    for m in memory:
        rows.append((f"Qdrant RAM per point: {m['layout']}", m["ram_bytes_per_point"],
                     f"B resident ({m['anon_bytes_per_point']:.0f} anonymous + {m['file_bytes_per_point']:.0f} "
                     f"mapped files; {m['disk_bytes_per_point']:.0f} B on disk)"))
    return rows


if __name__ == "__main__":
    main()
