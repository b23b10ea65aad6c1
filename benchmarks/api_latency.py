"""API latency under a steady open-loop load: GET /v1/conversations/{id} and the tree route.

Setup: a real Qdrant server holding N synthetic conversations (one facet point
with a small random vector and one status point each, written as a worker writes them, the status with its
copy of the facet values; upserted directly: this
measures the API, not the pipeline), a published version whose tree maps its
leaves to those clusters, and the API in its own process (uvicorn). The load
comes from ``benchmarks/loadgen.py`` in another process, at ``--rate`` requests/s
for ``--duration`` seconds per route; latency counts from each request's due
time (no coordinated omission).

    .venv/bin/python -m benchmarks.api_latency            # 100,000 points, 500 req/s, 20 s per route,
                                                          # with 1 and then 2 uvicorn workers
    .venv/bin/python -m benchmarks.api_latency --n 10000 --duration 5 --workers 1
    .venv/bin/python -m benchmarks.api_latency --workers 1 --without-copy --out api_latency-two-calls
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FACET = "Request"
DIM = 8
VIEWER, ANALYST = "bench-viewer-" + "v" * 24, "bench-analyst-" + "a" * 24
log = logging.getLogger("benchmarks.api_latency")


def synthetic_result(n: int, leaves: int, parents: int) -> Any:
    """A ClioResult with a two-level tree over ``n`` conversation ids (leaf c <- ids with i % leaves == c)."""
    from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, StoreLink

    nodes: dict[str, ClusterNode] = {}
    members = {c: [f"conv-{i:07d}" for i in range(c, n, leaves)] for c in range(leaves)}
    for p in range(parents):
        kids = [c for c in range(leaves) if c % parents == p]
        pid = f"request-l1-{p}"
        nodes[pid] = ClusterNode(id=pid, facet=FACET, name=f"Parent topic {p}", summary=f"Requests of family {p}.",
                                 level=1, children=[f"request-l0-{c}" for c in kids],
                                 conversation_ids=[cid for c in kids for cid in members[c]], distinct_users=len(kids) * 10)
        for c in kids:
            nodes[f"request-l0-{c}"] = ClusterNode(
                id=f"request-l0-{c}", facet=FACET, name=f"Topic {c}", summary=f"Users asked about topic {c}.",
                level=0, parent_id=pid, conversation_ids=members[c], distinct_users=10)
    facets = [{"name": FACET, "question": "What is the user's overall request?", "summary_criteria": "x",
               "numeric": None}]
    hierarchy = FacetHierarchy(facet=FACET, nodes=nodes, root_ids=[f"request-l1-{p}" for p in range(parents)])
    return ClioResult(facets=facets, conversations=[], facet_values=[], hierarchies={FACET: hierarchy},
                      store_links={FACET: StoreLink(version=1, clusters={f"request-l0-{c}": c for c in range(leaves)})})


def fill_store(store: Any, n: int, leaves: int, batch: int = 2000, *, copy: bool = True) -> float:
    """Upsert ``n`` facet points and ``n`` conversation points; returns seconds taken.

    ``copy=False`` writes the status points without the facet copy, as workers did before it existed: every
    lookup then reads the facet points too (two Qdrant calls), for comparison."""
    from clio_stream.storage.records import FACETS_COPY, ConversationRecord, FacetPoint

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        vectors = rng.normal(size=(hi - lo, DIM)).astype(np.float32)
        points = [FacetPoint(conversation_id=f"conv-{i:07d}", facet=FACET, vector=vectors[i - lo],
                             value=f"The user asked about topic {i % leaves}.", user_hash=f"u{i % 5000}",
                             timestamp=1.7e9 + i, cluster_id=i % leaves, cluster_version=1, similarity=0.8)
                  for i in range(lo, hi)]
        store.points.upsert_facets(points, batch=batch, wait=hi == n)
        # As a worker writes them: the processed status carries a copy of the facet values (one-call lookups).
        records = [ConversationRecord(conversation_id=p.conversation_id, status="processed", user_hash=p.user_hash,
                                      timestamp=p.timestamp, extra={FACETS_COPY: {FACET: p.summary()}} if copy else {})
                   for p in points]
        store.points.mark_conversations(records, wait=hi == n)
        if (hi // batch) % 10 == 0:
            log.warning("stored %d / %d", hi, n)
    return time.perf_counter() - started


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout}s")
        time.sleep(0.2)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and all its descendants, from /proc (0 if it is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_pressure() -> str | None:
    """The kernel's CPU pressure line ('some avg10=.. avg60=..'): how contended the machine was."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None


def drive(url: str, ids_file: Path | None, key: str, rate: float, duration: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--rate", str(rate),
           "--duration", str(duration), "--header", f"Authorization: Bearer {key}"]
    if ids_file is not None:
        cmd += ["--ids", str(ids_file)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=duration * 4 + 60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="stored conversations")
    ap.add_argument("--leaves", type=int, default=200)
    ap.add_argument("--parents", type=int, default=20)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--workers", default="1,2", help="comma-separated uvicorn worker counts to measure")
    ap.add_argument("--without-copy", action="store_true",
                    help="status points without the facet copy: lookups take two Qdrant calls (the old path)")
    ap.add_argument("--out", default="api_latency", help="results/NAME.json")
    args = ap.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]

    from benchmarks.common import quiet_logs, report

    quiet_logs()
    logging.getLogger("benchmarks.api_latency").setLevel(logging.WARNING)
    from clio_stream.storage.published import PublishedVersions
    from clio_stream.devstack.processes import free_port, start_qdrant
    from clio_stream.settings import ClioSettings
    from clio_stream.storage.store import QdrantStore

    with tempfile.TemporaryDirectory(prefix="clio-api-bench-") as tmp_name:
        tmp = Path(tmp_name)
        http_port, grpc_port, api_port = free_port(), free_port(), free_port()
        qdrant = start_qdrant(http_port=http_port, grpc_port=grpc_port, storage_dir=tmp / "qdrant",
                              log_dir=tmp / "logs", die_with_parent=True)
        api = None
        try:
            settings = ClioSettings(qdrant_url=f"http://127.0.0.1:{http_port}", qdrant_grpc_port=grpc_port,
                                    qdrant_prefix="bench", publish_dir=tmp / "published", site_chunk_size=1000,
                                    show_progress=False)
            store = QdrantStore.from_settings(settings)
            store.ensure_collections(DIM)
            fill_s = fill_store(store, args.n, args.leaves, copy=not args.without_copy)
            store.close()
            t0 = time.perf_counter()
            PublishedVersions.at(settings.publish_dir).publish(synthetic_result(args.n, args.leaves, args.parents),
                                                               "bench-1", settings=settings)
            publish_s = time.perf_counter() - t0
            ids_file = tmp / "ids.txt"
            ids_file.write_text("\n".join(f"conv-{i:07d}" for i in range(args.n)))

            env = {**os.environ, "CLIO_API_KEYS": f"viewer:{VIEWER},analyst:{ANALYST}",
                   "CLIO_QDRANT_URL": settings.qdrant_url, "CLIO_QDRANT_GRPC_PORT": str(grpc_port),
                   "CLIO_QDRANT_PREFIX": "bench", "CLIO_PUBLISH_DIR": str(settings.publish_dir),
                   "CLIO_WEB_HOST": "127.0.0.1", "CLIO_WEB_PORT": str(api_port),
                   "CLIO_USER_ID_HASH_KEY": "bench-" + "k" * 40}  # the API refuses the placeholder
            base = f"http://127.0.0.1:{api_port}"
            tree_url = f"{base}/v1/facets/{FACET}/tree"
            conv_url = base + "/v1/conversations/{id}"
            results: dict[str, dict[str, Any]] = {}
            for workers in worker_counts:
                with open(tmp / "logs" / f"api-{workers}.log", "w") as api_log:
                    api = subprocess.Popen([sys.executable, "-m", "api.app"], cwd=ROOT,
                                           env={**env, "CLIO_API_WORKERS": str(workers)},
                                           stdout=api_log, stderr=subprocess.STDOUT)
                wait_http(f"{base}/healthz", 60)
                # Warm-up: load the version in every worker, open the gRPC channels, fill caches.
                drive(tree_url, None, VIEWER, 50, 2)
                drive(conv_url, ids_file, ANALYST, 50, 2)
                label = f"{workers} worker{'s' if workers > 1 else ''}"
                for route, url, ids, key in ((f"GET /v1/conversations/{{id}} [{label}]", conv_url, ids_file, ANALYST),
                                             (f"GET /v1/facets/{FACET}/tree [{label}]", tree_url, None, VIEWER)):
                    api_cpu, qdrant_cpu = cpu_seconds(api.pid), cpu_seconds(qdrant.pid or 0)
                    load_before = os.getloadavg()[0]
                    results[route] = drive(url, ids, key, args.rate, args.duration)
                    n = results[route]["requests"]
                    results[route].update(
                        api_cpu_ms_per_request=(cpu_seconds(api.pid) - api_cpu) / n * 1000,
                        qdrant_cpu_ms_per_request=(cpu_seconds(qdrant.pid or 0) - qdrant_cpu) / n * 1000,
                        loadavg_1m_before=load_before, loadavg_1m_after=os.getloadavg()[0],
                        cpu_pressure_after=cpu_pressure())
                tree_bytes = len(urllib.request.urlopen(urllib.request.Request(
                    tree_url, headers={"Authorization": f"Bearer {VIEWER}"})).read())
                api.terminate()
                api.wait(timeout=20)
                api = None
        finally:
            if api is not None:
                api.terminate()
                try:
                    api.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    api.kill()
            qdrant.stop()

    rows: list[tuple[str, Any, str]] = [("stored conversations", args.n, "points"),
                                        ("store fill", fill_s, "s"), ("publish", publish_s, "s")]
    for route, r in results.items():
        rows += [
            (f"{route} offered", r["offered_rate"], "req/s"),
            (f"{route} achieved", r["achieved_rate"], "req/s"),
            (f"{route} ok", r["ok"], f"of {r['requests']}"),
            (f"{route} p50", r["p50_ms"], "ms"),
            (f"{route} p90", r["p90_ms"], "ms"),
            (f"{route} p99", r["p99_ms"], "ms"),
            (f"{route} max", r["max_ms"], "ms"),
            (f"{route} API CPU", r["api_cpu_ms_per_request"], "ms/request"),
            (f"{route} Qdrant CPU", r["qdrant_cpu_ms_per_request"], "ms/request"),
            (f"{route} load avg (1 min) after", r["loadavg_1m_after"], f"on {os.cpu_count()} cores"),
        ]
    met = {route: r["p99_ms"] <= 20.0 and r["ok"] == r["requests"] for route, r in results.items()}
    for workers in worker_counts:
        label = f"{workers} worker{'s' if workers > 1 else ''}"
        ok = all(v for route, v in met.items() if route.endswith(f"[{label}]"))
        rows.append((f"p99 <= 20 ms on both routes [{label}]", "yes" if ok else "NO", ""))
    target_met = {route: bool(v) for route, v in met.items()}
    report(args.out, rows, {"results": results, "tree_response_bytes": tree_bytes, "facet_copy": not args.without_copy,
                                 "leaves": args.leaves, "parents": args.parents, "target_p99_ms": 20.0,
                                 "target_met": target_met})


if __name__ == "__main__":
    main()
