"""What all LLM facets of a conversation cost against one, in both facet layouts, side by side on one engine.

One facet is asked as a run with that facet alone asks it (its own prompt: with one facet there is nothing
to share). All facets are asked in each layout (``facet_layout``): per facet, where a conversation's prompts
share only each facet's own instructions across conversations; and shared, where they share one preamble and
the conversation. Every timed pass uses conversations salted with its own tag, so no pass reads a prefix another
pass left in vLLM's cache. The passes alternate (one, per facet, shared) for ``--rounds`` rounds, so a drift in
the machine's load reaches every layout alike; the table gives the median of each.

    .venv/bin/python -m benchmarks.facet_cost --n 120
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent


def timed_pass(llm: Any, convs: Sequence[Any], facets: Sequence[Any], layout: str, salt: str,
               sampling: dict[str, Any]) -> tuple[float, float]:
    """(seconds, share of prompt tokens from the prefix cache) of asking ``facets`` of ``convs``, salted with
    ``salt``, in ``layout``, with the run's ``sampling`` as the pipeline sends it (``facet_sampling``)."""
    from benchmarks.common import salted
    from clio_stream.stages.extract import build_prompts, facet_sampling

    prompts = build_prompts(salted(list(convs), salt), facets, layout=layout)
    before = llm.prefix_cache_stats
    t0 = time.perf_counter()
    llm.generate(prompts, facet_sampling(sampling))
    seconds = time.perf_counter() - t0
    tokens, hits = (a - b for a, b in zip(llm.prefix_cache_stats, before))
    return seconds, hits / tokens if tokens else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120, help="conversations (distinct MT-Bench + arena-hard prompts)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="facet_cost", help="results/NAME.json")
    args = ap.parse_args()

    from benchmarks.common import load_average, quiet_logs, report

    load_before = load_average()
    quiet_logs()
    from clio_stream.batch_input import load_shared_dataset
    from clio_stream.domain.facets import main_facets
    from clio_stream.llm import make_llm
    from clio_stream.settings import ClioSettings
    from clio_stream.stages.extract import asked
    from clio_stream.stages.prepare import prepare_conversations, truncate_conversation

    records = load_shared_dataset("mt_bench", args.data_root) + load_shared_dataset("arena_hard", args.data_root)
    convs = prepare_conversations(records)[0][: args.n]
    settings = ClioSettings(show_progress=False)
    llm = make_llm(settings)
    convs = [truncate_conversation(c, settings.max_conversation_tokens, llm.count_tokens)[0] for c in convs]
    facets = asked(main_facets)
    passes = {"one facet": (facets[:1], "per_facet"), "all facets, per facet": (facets, "per_facet"),
              "all facets, shared": (facets, "shared")}
    seconds: dict[str, list[float]] = {name: [] for name in passes}
    cached: dict[str, list[float]] = {name: [] for name in passes}
    try:
        for r in range(args.rounds):
            for name, (asked_facets, layout) in passes.items():
                took, share = timed_pass(llm, convs, asked_facets, layout, f"{name} {r}", settings.llm_sampling_args)
                seconds[name].append(took)
                cached[name].append(share)
    finally:
        llm.close()
    median = {name: statistics.median(v) for name, v in seconds.items()}
    one = median["one facet"]
    rows: list[tuple[str, Any, str]] = [
        ("conversations", len(convs), f"{len(facets)} LLM facets: {', '.join(f.name for f in facets)}"),
        *[(f"{name}: seconds", median[name], f"median of {args.rounds}; prompt tokens from the prefix cache "
           f"{statistics.median(cached[name]):.0%}") for name in passes],
        ("cost ratio all / one, per facet", median["all facets, per facet"] / one, "target <= 1.5"),
        ("cost ratio all / one, shared", median["all facets, shared"] / one, "target <= 1.5"),
    ]
    report(args.out, rows, {"seconds": seconds, "prefix_cache_share": cached, "load_average_before": load_before,
                            "load_average_after": load_average(), "args": vars(args)})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
