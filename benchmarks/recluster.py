"""Living clusters benchmark: a full re-clustering against an incremental one after new data arrives.

A synthetic but realistic store: banking77 customer messages (../shared/data/banking77/test.csv)
stored as "Request" facet values with their real all-MiniLM-L6-v2 embeddings in an embedded
Qdrant. The LLM is ``tests.unit.fakes.ScriptedLLM(sensible_script)``, so the benchmark counts LLM
prompts (what a real model would be asked), not model speed.

Scenarios (one store each):

* +5 %:  first build on N points; add 5 % new points; re-cluster against the published version
  (incremental), then re-cluster the same data against an empty publish folder (what a full
  rebuild costs: every cluster renamed, the hierarchy rebuilt);
* +20 %: first build on N points; add 20 %; re-cluster incrementally.

Reported: LLM prompts (target: incremental <= 20 % of a full rebuild), wall time, leaf id survival
(target >= 0.9 after +5 %), leaves reused/renamed, parents renamed, lineage entries.

    .venv/bin/python -m benchmarks.recluster --n 1000
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.recluster")


def load_texts(path: Path, seed: int) -> list[str]:
    """banking77 messages, de-duplicated and shuffled reproducibly (new data comes from the same topics)."""
    with open(path, newline="", encoding="utf-8") as fh:
        texts = list(dict.fromkeys(row["text"].strip() for row in csv.DictReader(fh) if row.get("text")))
    np.random.default_rng(seed).shuffle(texts)
    return texts


def fill(store: Any, facet: str, texts: list[str], vectors: np.ndarray, start: int, stop: int, users: int) -> None:
    """Store texts ``start:stop`` as facet points of conversations ``b<i>`` (users drawn from a small pool)."""
    from clio_stream.storage.records import FacetPoint

    points = [FacetPoint(conversation_id=f"b{i}", facet=facet, vector=vectors[i], value=texts[i],
                         user_hash=f"u{(i * 7919) % users}", timestamp=1_700_000_000.0 + i)
              for i in range(start, stop)]
    store.points.upsert_facets(points)


def summary(report: Any) -> dict[str, Any]:
    """The numbers of one ``ReclusterReport`` worth keeping in the JSON."""
    return {"version": report.version, "llm_prompts": report.llm_prompts, "seconds": round(report.seconds, 2),
            "leaves": sum(report.clusters.values()), "leaves_reused": report.leaves_reused,
            "leaves_renamed": report.leaves_renamed, "parents_reused": report.parents_reused,
            "parents_renamed": report.parents_renamed, "id_survival": report.id_survival,
            "lineage": report.lineage, "facets": report.facets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="points in the first build")
    ap.add_argument("--embedding-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "banking77" / "test.csv"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    from benchmarks.common import quiet_logs, report

    quiet_logs()
    from clio_stream.embedding import make_embedder
    from clio_stream.domain.facets import REQUEST
    from clio_stream.living.job import recluster_once
    from clio_stream.settings import ClioSettings
    from clio_stream.storage.store import QdrantStore
    from tests.unit.fakes import ScriptedLLM, sensible_script

    texts = load_texts(Path(args.data), args.seed)
    n, n5, n20 = args.n, args.n * 5 // 100, args.n * 20 // 100
    if n + n20 > len(texts):
        raise SystemExit(f"--n {n}: needs {n + n20} distinct texts, the data set has {len(texts)}")
    texts = texts[: n + n20]
    settings = ClioSettings(show_progress=False)
    embedder = make_embedder(settings, args.embedding_model)
    t0 = time.perf_counter()
    vectors = embedder.encode(texts)
    embed_s = time.perf_counter() - t0
    facets = [REQUEST]
    users = max(10, n // 3)
    runs: dict[str, Any] = {}

    def run(store: QdrantStore, pub: Path, label: str) -> Any:
        llm = ScriptedLLM(sensible_script)
        rep = recluster_once(store, llm, embedder, facets, settings, publish_dir=pub, owner="bench")
        assert rep is not None
        runs[label] = summary(rep)
        log.warning("%s: %d prompts, %.1f s, survival %s", label, rep.llm_prompts, rep.seconds, rep.id_survival)
        return rep

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = QdrantStore(":memory:")
        store.ensure_collections(embedder.dim)
        fill(store, REQUEST.name, texts, vectors, 0, n, users)
        first = run(store, root / "a", "first build")
        fill(store, REQUEST.name, texts, vectors, n, n + n5, users)
        inc5 = run(store, root / "a", "+5% incremental")
        full5 = run(store, root / "a-full", "+5% full rebuild")
        store.close()

        store = QdrantStore(":memory:")
        store.ensure_collections(embedder.dim)
        fill(store, REQUEST.name, texts, vectors, 0, n, users)
        run(store, root / "b", "first build (b)")
        fill(store, REQUEST.name, texts, vectors, n, n + n20, users)
        inc20 = run(store, root / "b", "+20% incremental")
        store.close()

    def pct(a: int, b: int) -> float:
        return 100.0 * a / b if b else float("nan")

    rows = [
        ("points (first build)", n, "banking77 messages"),
        ("leaves (first build)", sum(first.clusters.values()), "clusters"),
        ("first build: LLM prompts", first.llm_prompts, "prompts"),
        ("first build: wall", first.seconds, "s"),
        ("+5% full rebuild: LLM prompts", full5.llm_prompts, "prompts"),
        ("+5% full rebuild: wall", full5.seconds, "s"),
        ("+5% incremental: LLM prompts", inc5.llm_prompts, "prompts"),
        ("+5% incremental / full rebuild", pct(inc5.llm_prompts, full5.llm_prompts), "% (target <= 20)"),
        ("+5% incremental: wall", inc5.seconds, "s"),
        ("+5% incremental: id survival", inc5.id_survival, "fraction (target >= 0.9)"),
        ("+5% leaves reused / named", f"{inc5.leaves_reused}/{inc5.leaves_renamed}", "leaves"),
        ("+5% parents kept / renamed", f"{inc5.parents_reused}/{inc5.parents_renamed}", "parents"),
        ("+5% hierarchy", inc5.facets[REQUEST.name]["mode"], ""),
        ("+5% lineage entries", inc5.lineage, "old ids"),
        ("+20% incremental: LLM prompts", inc20.llm_prompts, "prompts"),
        ("+20% incremental / first build", pct(inc20.llm_prompts, first.llm_prompts), "%"),
        ("+20% incremental: wall", inc20.seconds, "s"),
        ("+20% incremental: id survival", inc20.id_survival, "fraction"),
        ("+20% leaves reused / named", f"{inc20.leaves_reused}/{inc20.leaves_renamed}", "leaves"),
        ("+20% hierarchy", inc20.facets[REQUEST.name]["mode"], ""),
        ("embedding of all texts", embed_s, "s (once, not in the walls above)"),
    ]
    report("recluster", rows, {"runs": runs, "embedding_model": args.embedding_model, "n": n,
                               "llm": "ScriptedLLM(sensible_script)", "settings": "ClioSettings defaults"})


if __name__ == "__main__":
    main()
