"""A before/after Markdown table from benchmarks/quality.py result files, so docs copy figures, not type them.

    .venv/bin/python -m benchmarks.quality_table benchmarks/results/quality-before.json \
        benchmarks/results/quality-after.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Mapping

Getter = Callable[[Mapping[str, Any]], str]


def _pair(d: Mapping[str, Any]) -> str:
    return f"{d['recall_at_1']:.3f} / {d['mrr']:.3f}"


def _nmi(name: str, view: str, k: str = "labels") -> Getter:
    return lambda r: f"{r['clustering'][name]['views'][f'{view} k={k}']['batch']['nmi']:.3f}"


def _seeds(r: Mapping[str, Any], name: str, view: str) -> str:
    d = r["clustering"][name]["views"][f"{view} k=labels"]["batch_nmi_over_seeds"]
    return f"{d['mean']:.3f} ± {d['sd']:.3f}"


def _concerning(r: Mapping[str, Any]) -> Mapping[str, Any]:
    return r["concerning"]


def rows(sets: tuple[str, ...]) -> list[tuple[str, Getter]]:
    """(label, how to read it from one result) for every compared figure."""
    out: list[tuple[str, Getter]] = []
    for s in sets:
        out += [
            (f"{s}: facet fidelity R@1 / MRR, full value embedded", lambda r, s=s: _pair(r["fidelity"][s]["full_value"])),
            (f"{s}: facet fidelity R@1 / MRR, answer embedded", lambda r, s=s: _pair(r["fidelity"][s]["embedded"])),
            (f"{s}: chance R@1 / MRR", lambda r, s=s: f"{r['fidelity'][s]['embedded']['chance_recall_at_1']:.3f} / "
                                                      f"{r['fidelity'][s]['embedded']['chance_mrr']:.3f}"),
            (f"{s}: NMI raw text (k = labels, batch)", _nmi(s, "raw")),
            (f"{s}: NMI facet, full value embedded", _nmi(s, "facet full-value")),
            (f"{s}: NMI facet, answer embedded", _nmi(s, "facet")),
            (f"{s}: NMI raw / facet, mean ± sd of 5 k-means seeds (k = labels)", lambda r, s=s: _seeds(r, s, "raw")
             + " / " + _seeds(r, s, "facet")),
            (f"{s}: NMI raw / facet (k = pipeline's)", lambda r, s=s: _nmi(s, "raw", "pipeline")(r) + " / "
             + _nmi(s, "facet", "pipeline")(r)),
        ]
        if s == "mt_bench":
            out.append((f"{s}: NMI raw whole conversation (k = labels)", _nmi(s, "raw conversation")))
        out += [(f"{s}: name fidelity R@1 / MRR, {label}", lambda r, s=s, key=key: _pair(r["name_fidelity"][s][key])
                 if s in r.get("name_fidelity", {}) and key in r["name_fidelity"][s] else "–")
                for key, label in (("name_and_summary", "LLM name + summary"), ("name_only", "LLM name alone"),
                                   ("keywords", "keyword label"), ("published", "LLM name, keywords where it fails"),
                                   ("published_name_check", "LLM name, keywords where the name alone fails"),
                                   ("published_closeness_floor", "as published: keywords where the name alone "
                                    "fails the rank or the closeness floor"))]
    out += [
        ("multilingual: Language = identifier", lambda r: f"{r['sanity']['multilingual']['language']['agreement']:.3f}"),
        ("banking77: Language = identifier", lambda r: f"{r['sanity']['banking77']['language']['agreement']:.3f}"),
        ("Language unparseable", lambda r: f"{r['parse_overall']['Language']['unparseable_share']:.3f}"),
        ("Request unparseable", lambda r: f"{r['parse_overall']['Request']['unparseable_share']:.3f}"),
        ("banking77: Concerning 1/2/3/4/5", lambda r: "/".join(str(r["sanity"]["banking77"]["concerning"][k])
                                                               for k in "12345")),
        ("concerning set: AUROC harmful vs benign", lambda r: f"{_concerning(r)['auroc']:.3f}"),
        ("concerning set: mean score benign / harmful", lambda r: f"{_concerning(r)['mean']['benign']:.2f} / "
                                                                   f"{_concerning(r)['mean']['harmful']:.2f}"),
        ("concerning set: benign scored 4-5 / harmful scored 3-5", lambda r: f"{_concerning(r)['benign_4_or_5']:.3f} / "
                                                                             f"{_concerning(r)['harmful_3_or_more']:.3f}"),
        ("facet prompts asked / seconds", lambda r: f"{r['facet_prompts_asked']} / {r['facet_seconds']}"),
        ("load average at start (1 / 5 / 15 min)", lambda r: " / ".join(f"{x:.1f}" for x in r["load_average"]["start"])),
    ]
    return out


def markdown(results: Mapping[str, Mapping[str, Any]], sets: tuple[str, ...]) -> str:
    """One column per result file (named by its stem)."""
    head = "| measure | " + " | ".join(results) + " |\n|---|" + "---|" * len(results) + "\n"
    body = []
    for label, get in rows(sets):
        cells = []
        for r in results.values():
            try:
                cells.append(get(r))
            except KeyError:
                cells.append("–")
        body.append(f"| {label} | " + " | ".join(cells) + " |")
    return head + "\n".join(body)


def variants_markdown(result: Mapping[str, Any], embedder: str) -> str:
    """A ``benchmarks/quality_variants.py`` result: one row per variant, one column group per set."""
    if result["facet"] == "concerning":
        head = ("| variant | score | AUROC | benign 4-5 | harmful 3-5 | everyday benign 4-5 | mean benign / harmful "
                "| no score |\n|---|---|---|---|---|---|---|---|\n")
        body = []
        for name, v in result["variants"].items():
            for kind in ("sampled", "argmax", "expected"):
                c = v[kind]
                body.append(f"| {name} | {kind} | {c['auroc']:.3f} | {c['benign_4_or_5']:.3f} | "
                            f"{c['harmful_3_or_more']:.3f} | {c['everyday_4_or_5']:.3f} | "
                            f"{c['mean']['benign']:.2f} / {c['mean']['harmful']:.2f} | {c['missing']} |")
        return head + "\n".join(body)
    sets = list(next(iter(result["variants"].values()))["sets"])
    head = ("| variant | " + " | ".join(f"{s}: R@1 / NMI (raw NMI)" for s in sets) + " | seconds |\n|---|"
            + "---|" * (len(sets) + 1) + "\n")
    body = []
    for name, v in result["variants"].items():
        cells = []
        for s in sets:
            e = v["sets"][s][embedder]
            cells.append(f"{e['recall_at_1']:.3f} / {e['nmi']:.3f} ± {e['nmi_sd']:.3f} ({e['raw_nmi']:.3f})")
        body.append(f"| {name}: {v['note']} | " + " | ".join(cells) + f" | {v['seconds']} |")
    return head + "\n".join(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--sets", default="banking77,mt_bench,arena_hard,multilingual")
    ap.add_argument("--variants", action="store_true", help="the results are benchmarks/quality_variants.py runs")
    ap.add_argument("--embedder", default="all-MiniLM-L6-v2", help="with --variants: whose vectors to show")
    args = ap.parse_args()
    loaded = {Path(p).stem: json.loads(Path(p).read_text()) for p in args.results}
    if args.variants:
        for name, result in loaded.items():
            print(f"{name} ({result['llm_model'].rsplit('/', 1)[-1]}, sizes {result['sizes']}):\n")
            print(variants_markdown(result, args.embedder) + "\n")
        return
    print(markdown(loaded, tuple(args.sets.split(","))))


if __name__ == "__main__":
    main()
