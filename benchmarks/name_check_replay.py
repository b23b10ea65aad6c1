"""The name check of the current code, replayed on a published result: what it would show, node by node.

A published ``result.json`` (``<cache>/published/versions/N/result.json``) keeps each node's LLM name and
summary (``given_name``, ``given_summary``) and the members' facet values, so the check
(``stages.name_check``) can be run again with other settings, without the LLM. Per node: level, size, the rank
at which the name retrieves its own cluster among its level's, its closeness to the members' centre relative
to the members' own (``name_min_closeness`` floors it), whether it is weak, the name and summary shown.

    .venv/bin/python -m benchmarks.name_check_replay RESULT_JSON [--facets Request Task]
        [--min-closeness 0.6] [--out name_check_replay]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.common import quiet_logs, report
from clio_stream.domain.clusters import ClioResult
from clio_stream.domain.facets import CONCERNING, LANGUAGE, REQUEST, TASK, Facet
from clio_stream.embedding import make_embedder
from clio_stream.settings import ClioSettings
from clio_stream.stages.name_check import check_names

KNOWN = {f.name: f for f in (REQUEST, LANGUAGE, TASK, CONCERNING)}


def facet_of(doc: dict[str, Any]) -> Facet:
    """The packaged facet of that name, else one rebuilt from the fields the check uses (name, prefill)."""
    return KNOWN.get(doc["name"]) or Facet(name=doc["name"], question=doc.get("question") or "",
                                           prefill=doc.get("prefill") or "",
                                           summary_criteria=doc.get("summary_criteria"))


def replay(result: ClioResult, facet: Facet, settings: ClioSettings) -> list[dict[str, Any]]:
    """Check ``facet``'s tree again from the LLM's own names and summaries; one row per node, top level first."""
    hierarchy = result.hierarchies[facet.name].model_copy(deep=True)
    for node in hierarchy.nodes.values():
        node.name, node.summary = node.given_name, node.given_summary
        node.llm_name = node.llm_summary = None
    check_names(hierarchy, result.conversations, result.facet_values, facet, make_embedder(settings), settings)
    return [{"facet": facet.name, "level": n.level, "size": n.size, "name_rank": n.name_rank,
             "name_closeness": n.name_closeness, "weak_name": n.weak_name, "shown_name": n.name,
             "llm_name": n.given_name, "summary_shown": bool(n.summary), "llm_summary": n.given_summary}
            for n in sorted(hierarchy.nodes.values(), key=lambda n: (-n.level, -n.size))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path)
    ap.add_argument("--facets", nargs="+", default=None, help="default: every facet with a tree")
    ap.add_argument("--min-closeness", type=float, default=None, help="name_min_closeness (default: settings')")
    ap.add_argument("--out", default="name_check_replay")
    args = ap.parse_args()
    quiet_logs()
    result = ClioResult.model_validate(json.loads(args.result.read_text()))
    stored = result.settings if isinstance(result.settings, dict) else {}
    settings = ClioSettings(min_cluster_users=stored.get("min_cluster_users", ClioSettings().min_cluster_users),
                            **({} if args.min_closeness is None else {"name_min_closeness": args.min_closeness}))
    docs = {d["name"]: d for d in result.facets}
    nodes = [row for name in (args.facets or list(result.hierarchies))
             for row in replay(result, facet_of(docs[name]), settings)]
    for row in nodes:
        print(f"{row['facet']} L{row['level']} [{row['size']}] rank {row['name_rank']} closeness "
              f"{row['name_closeness']} {'WEAK ' if row['weak_name'] else ''}{row['shown_name'][:70]!r}"
              f"{'' if row['shown_name'] == row['llm_name'] else ' (LLM: ' + repr(row['llm_name'][:50]) + ')'}"
              f" summary {'shown' if row['summary_shown'] else 'hidden'}")
    levels = sorted({r["level"] for r in nodes})
    rows = [(f"level {lv}: nodes / weak names / summaries shown",
             f"{sum(r['level'] == lv for r in nodes)} / {sum(r['weak_name'] for r in nodes if r['level'] == lv)} / "
             f"{sum(r['summary_shown'] for r in nodes if r['level'] == lv)}", "") for lv in levels]
    rows.append(("name_min_closeness", settings.name_min_closeness, ""))
    report(args.out, rows, {"result": str(args.result), "nodes": nodes})


if __name__ == "__main__":
    main()
