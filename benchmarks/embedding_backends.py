"""Embedding back-ends side by side: torch (sentence-transformers) against ONNX Runtime int8, per packaged model.

For each model, on the same banking77 texts in one run: sentences/s of each back-end (after a warm-up), the
cosine of the int8 vectors to the torch ones (mean and worst), and how often a text's nearest other text is
the same under both (what clustering sees). The clustering quality of both back-ends is
``benchmarks.quality --embedding-backend``.

    .venv/bin/python -m benchmarks.embedding_backends --n 600
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="banking77 texts")
    ap.add_argument("--models", default="all-MiniLM-L6-v2,all-mpnet-base-v2")
    ap.add_argument("--onnx-dir", default=None, help="where exports are kept (default: the settings' default)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()

    import numpy as np

    from benchmarks.common import load_average, quiet_logs, report
    from clio_stream.batch_input import load_shared_dataset
    from clio_stream.embedding import make_embedder
    from clio_stream.settings import ClioSettings

    quiet_logs()
    load_before = load_average()
    texts = [r["conversation"][0]["content"][:300] for r in load_shared_dataset("banking77", args.data_root)][: args.n]
    rows: list[tuple[str, object, str]] = [("texts", len(texts), "banking77 user turns")]
    for model in args.models.split(","):
        base = ClioSettings(embedding_model=model, show_progress=False,
                            **({"embedding_onnx_dir": args.onnx_dir} if args.onnx_dir else {}))
        vectors = {}
        for backend in ("torch", "onnx-int8"):
            embedder = make_embedder(base.with_overrides(embedding_backend=backend))
            embedder.encode(texts[:32])  # warm-up (and the one-time export for onnx)
            t0 = time.perf_counter()
            vectors[backend] = embedder.encode(texts)
            rows.append((f"{model} {backend}", len(texts) / (time.perf_counter() - t0), "sentences/s"))
        a, b = vectors["torch"], vectors["onnx-int8"]
        cosine = (a * b).sum(axis=1)
        same = (np.argsort(-(a @ a.T), axis=1)[:, 1] == np.argsort(-(b @ b.T), axis=1)[:, 1]).mean()
        rows += [(f"{model} cosine int8 to torch, mean / min", f"{cosine.mean():.4f} / {cosine.min():.4f}", ""),
                 (f"{model} same nearest neighbour", float(same), "share of texts")]
    report("embedding_backends", rows, {"load_average_before": load_before, "args": vars(args)})


if __name__ == "__main__":
    main()
