"""Batch pipeline benchmark: run_clio on N real conversations from ../shared/data.

Reports, from one run on one engine:
- wall time per pipeline stage and its share of the run;
- LLM prompts per conversation (facet extraction) and per base cluster (naming, hierarchy, audit);
- LLM prompts/s inside the facet stage against a raw ``vllm.LLM.generate`` over
  the very same prompt strings (ratio = pipeline / raw; 1.0 means no overhead);
- the cost of all facets of a conversation against one facet asked alone (in the shared
  layout the facet prompts of one conversation share it as a prefix, so vLLM's prefix cache
  should make the ratio well below the number of facets; per facet they share only the
  facet's own instructions).

    .venv/bin/python -m benchmarks.batch --n 120
    .venv/bin/python -m benchmarks.batch --n 1000 --comparisons 120 --out batch-1000
    .venv/bin/python -m benchmarks.batch --n 120 --facet-layout shared --out batch-shared
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="conversations (distinct MT-Bench + arena prompts)")
    ap.add_argument("--embedding-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="batch", help="results/NAME.json")
    ap.add_argument("--comparisons", type=int, default=0,
                    help="conversations the raw-generate and all-vs-one-facet comparisons use (0: all); they "
                         "measure ratios, so a 1,000-conversation run can keep them at 120 and finish in an hour")
    ap.add_argument("--facet-layout", choices=("per_facet", "shared"), default="per_facet",
                    help="the settings' facet_layout for the run and the comparisons")
    args = ap.parse_args()

    from benchmarks.common import load_average, quiet_logs, report, salted
    from benchmarks.facet_cost import timed_pass

    load_before = load_average()

    quiet_logs()
    from clio_stream.batch_input import load_shared_dataset
    from clio_stream.stages.prepare import prepare_conversations
    from clio_stream.embedding import make_embedder
    from clio_stream.stages.extract import asked, build_prompts
    from clio_stream.domain.facets import main_facets
    from clio_stream.llm import make_llm
    from clio_stream.llm.base import sampling_for
    from clio_stream.pipeline import run_clio
    from clio_stream.llm.prompts import FACET_CONVERSATION, FACET_TEMPLATES
    from clio_stream.settings import ClioSettings

    records = load_shared_dataset("mt_bench", args.data_root) + load_shared_dataset("arena_hard", args.data_root)
    convs, _ = prepare_conversations(records)
    if len(convs) < args.n:  # MT-Bench + arena-hard hold 825 distinct conversations: banking77 requests fill up
        convs, _ = prepare_conversations(records + load_shared_dataset("banking77", args.data_root))
    convs = convs[: args.n]
    data = [{"id": c.id, "conversation": [m.model_dump() for m in c.messages]} for c in convs]
    settings = ClioSettings(show_progress=False, facet_layout=args.facet_layout)
    t0 = time.perf_counter()
    llm = make_llm(settings)
    engine_start = time.perf_counter() - t0
    embedder = make_embedder(settings, args.embedding_model)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = run_clio(main_facets, llm, embedder, data, output_dir=tmp, settings=settings)
        total = time.perf_counter() - t0
    sec = result.stats.seconds
    llm_facets = asked(main_facets)  # Language is computed
    facet_prompts = len(convs) * len(llm_facets)

    # Raw engine over the same first-attempt facet prompt strings, same sampling.
    from clio_stream.stages.prepare import truncate_conversation

    compared = convs[: args.comparisons] if args.comparisons else convs
    truncated = [truncate_conversation(c, settings.max_conversation_tokens, llm.count_tokens)[0] for c in compared]
    # Salted: the raw run reads no prefix the pipeline run left in the cache; both start cold.
    prompts = build_prompts(salted(truncated, "raw"), main_facets, layout=settings.facet_layout)
    texts = [llm.prompt_text(p) for p in prompts]
    sampling = sampling_for(FACET_CONVERSATION, settings.llm_sampling_args)
    t0 = time.perf_counter()
    llm.generate_raw(texts, sampling)
    raw = time.perf_counter() - t0

    # All facets against one facet asked alone, in the run's layout (``benchmarks.facet_cost`` compares both
    # layouts side by side).
    one = timed_pass(llm, truncated, llm_facets[:1], settings.facet_layout, "one", settings.llm_sampling_args)[0]
    allf = timed_pass(llm, truncated, llm_facets, settings.facet_layout, "all", settings.llm_sampling_args)[0]
    by_template = result.stats.llm.by_template
    facet_templates = {t.name for t in FACET_TEMPLATES}
    facet_asked = sum(c.get("prompts", 0) for t, c in by_template.items() if t in facet_templates)
    other_asked = sum(c.get("prompts", 0) for t, c in by_template.items() if t not in facet_templates)
    base = sum(1 for h in result.hierarchies.values() for n in h.nodes.values() if n.level == 0)
    rows = [
        ("conversations", len(convs), ""),
        ("engine start", engine_start, "s"),
        *[(f"stage: {k}", v, f"s ({v / total:.0%} of the run)") for k, v in sec.items()],
        ("run_clio total", total, "s"),
        ("facet prompts per conversation", facet_asked / max(1, len(convs)), "first asks (retries in generations)"),
        ("base clusters", base, "all hierarchy facets"),
        ("other prompts per base cluster", other_asked / max(1, base), "naming, hierarchy, audit"),
        *[(f"prompts: {t}", c.get("prompts", 0), "") for t, c in sorted(by_template.items())],
        ("facet prompts (first attempt)", facet_prompts, ""),
        ("pipeline facet prompts/s", facet_prompts / sec["facets"], "prompts/s (incl. retries' time)"),
        ("conversations in the comparisons below", len(compared), "raw generate; all facets against one"),
        ("raw generate prompts/s", len(texts) / raw, "prompts/s"),
        ("ratio pipeline / raw", (facet_prompts / sec["facets"]) / (len(texts) / raw),
         "" if len(compared) == len(convs) else "not the same prompts: the comparisons use fewer conversations"),
        ("one facet per conversation", one, "s"),
        (f"all {len(llm_facets)} LLM facets per conversation", allf, "s"),
        ("cost ratio all / one", allf / one, f"target <= 1.5 (no prefix sharing would be ~{len(llm_facets)}x); "
         f"layout {settings.facet_layout}"),
        ("unparseable facet values", sum(result.stats.unparseable_facet_values.values()), f"of {facet_prompts}"),
        ("llm generations (all stages)", result.stats.llm.generations, ""),
    ]
    report(args.out, rows, {"stats": result.stats.model_dump(), "facet_generations": facet_asked,
                            "load_average_before": load_before, "args": vars(args)})
    llm.close()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
