"""Quality benchmark: clustering against known labels, top-level reconstruction, id stability, facet sanity.

Data: the labelled sets in ../shared/data (banking77 intents, MT-Bench question ids and
categories, arena-hard subcategories), subsampled per label (balanced, seeded).

1. Clustering vs labels (NMI, ARI, accuracy after the best one-to-one matching) for
   (a) batch k-means on raw-text embeddings, (b) batch k-means on embeddings of the Request
   facet the real LLM extracted, (c) the stream's online assignment (``OnlineKMeans`` warm
   started on the first ``--bootstrap-fraction`` of the stream exactly as
   the bootstrap does, then fed the rest one vector at a time) on the
   same vectors, with k = number of labels and k = the pipeline's own ``base_cluster_count``.
   Target: online NMI >= 0.97 x batch NMI on the same vectors.
2. Top-level reconstruction: base clusters of the Request values named by the LLM
   (``naming.name_clusters``) and assigned to the known categories by the hierarchy's own
   assignment step (``hierarchy.assign_to_candidates``); accuracy per conversation.
3. Stability: leaf id survival and name survival after +5 % and +20 % new data, through
   ``recluster_once`` (reusing benchmarks/recluster.py's store helpers).
   Target: id survival >= 0.9 after +5 %.
4. Facet sanity: Language facet vs lingua's language identifier, the Concerning score
   distribution, unparseable answers after retries (target <= 2 %) and first-try failures.
5. Multilingual: 1 and 4 again on the non-English arena-hard prompts.
6. Fidelity (``clio_stream.stages.fidelity``, no labels needed): facet fidelity = retrieval@1 / MRR
   of a Request value against the distinct user turns of the conversations of its set, for the full value
   and for the embedded text (``embedding.embedding_text``: the answer after the prefill); name
   fidelity = retrieval@1 / MRR of a base cluster's "name. summary" among the centroids of all
   base clusters' member values (k = the pipeline's ``base_cluster_count``), per cluster in the JSON.

LLM facet values are cached on disk (``--cache-dir``) keyed by model, facet and conversation,
so a rerun only asks what is new.

    .venv/bin/python -m benchmarks.quality --llm-base-url http://127.0.0.1:18000/v1   # a vLLM server
    .venv/bin/python -m benchmarks.quality                                            # in-process engine
    .venv/bin/python -m benchmarks.quality --smoke                                    # tiny, MiniLM
"""

from __future__ import annotations

import argparse
import collections
import csv
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.quality")

NMI_RATIO_TARGET = 0.97
ID_SURVIVAL_TARGET = 0.9
UNPARSEABLE_TARGET = 0.02
# Requests written for this project, 30 clearly harmful and 30 benign (a third of them on sensitive but
# legitimate topics: overdose symptoms, phishing, a poisoning in a detective story), for the Concerning facet.
CONCERNING_SET = ROOT / "benchmarks" / "data" / "concerning.jsonl"


# --------------------------------------------------------------------------- metrics


def encode_labels(labels: Sequence[Any]) -> np.ndarray:
    """Any hashable labels as integers 0..m-1 (in order of first appearance)."""
    index: dict[Any, int] = {}
    return np.asarray([index.setdefault(v, len(index)) for v in labels], dtype=np.int64)


def matched_accuracy(true: Sequence[Any], pred: Sequence[Any]) -> float:
    """Accuracy after mapping clusters to labels one-to-one so that most points agree.

    Hungarian assignment on the contingency table (``scipy.optimize.linear_sum_assignment``);
    with more clusters than labels the unmatched clusters count as wrong, which is what a
    reader comparing a clustering to a taxonomy would see.
    """
    t, p = encode_labels(true), encode_labels(pred)
    if t.size == 0:
        return float("nan")
    from scipy.optimize import linear_sum_assignment

    table = np.zeros((p.max() + 1, t.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / t.size)


def cluster_scores(true: Sequence[Any], pred: Sequence[Any]) -> dict[str, float]:
    """NMI and ARI (scikit-learn) and matched accuracy of a clustering against labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    t, p = encode_labels(true), encode_labels(pred)
    return {"nmi": float(normalized_mutual_info_score(t, p)), "ari": float(adjusted_rand_score(t, p)),
            "acc": matched_accuracy(t, p)}


def histogram(values: Iterable[int | None], lo: int, hi: int) -> dict[str, int]:
    """Counts of each integer in ``lo..hi`` plus ``missing`` (for the Concerning score)."""
    counts = collections.Counter(values)
    out = {str(v): int(counts.get(v, 0)) for v in range(lo, hi + 1)}
    out["missing"] = int(counts.get(None, 0))
    return out


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Record:
    """One labelled conversation: ``label`` for clustering, ``top`` for the top-level check."""

    id: str
    dataset: str
    conversation: tuple[tuple[str, str], ...]  # (role, content)
    label: str
    top: str | None = None

    @property
    def text(self) -> str:
        """What the raw-text embedding and the language identifier read: the user's turns."""
        return "\n".join(c for r, c in self.conversation if r == "user")

    @property
    def full_text(self) -> str:
        """Every turn, as embedding a conversation without facets would read it (MT-Bench's answers differ)."""
        return "\n".join(f"{r}: {c}" for r, c in self.conversation)

    def as_message(self) -> dict[str, Any]:
        return {"id": self.id, "conversation": [{"role": r, "content": c} for r, c in self.conversation]}


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def load_records(name: str, data_root: Path) -> list[Record]:
    """All records of one labelled set, duplicates of the same text dropped (the pipeline would merge them)."""
    out: list[Record] = []
    if name == "banking77":
        with open(data_root / "banking77" / "test.csv", newline="", encoding="utf-8") as fh:
            for i, row in enumerate(csv.DictReader(fh)):
                out.append(Record(f"b77-{i}", name, (("user", row["text"].strip()),), row["category"]))
    elif name == "mt_bench":
        cats = {str(q["question_id"]): q["category"] for q in _jsonl(data_root / "mt_bench" / "questions.jsonl")}
        for r in _jsonl(data_root / "mt_bench" / "conversations.jsonl"):
            qid = r["chat_id"].split("_", 1)[0]
            turns = tuple((m["role"], m["content"]) for m in r["messages"] if m.get("content"))
            out.append(Record(r["chat_id"], name, turns, qid, cats.get(qid)))
    elif name == "arena_hard":
        for r in _jsonl(data_root / "arena_hard" / "questions.jsonl"):
            out.append(Record(r["uid"], name, (("user", r["prompt"]),), r["subcategory"], r["subcategory"]))
    elif name == "concerning":
        for r in _jsonl(CONCERNING_SET):
            out.append(Record(f"cc-{r['id']}", name, (("user", r["prompt"]),), r["label"]))
    else:
        raise ValueError(f"unknown data set {name!r}")
    seen: set[tuple[tuple[str, str], ...]] = set()
    unique = [r for r in out if not (r.conversation in seen or seen.add(r.conversation))]
    return unique


def balanced_sample(records: Sequence[Record], per_label: int, seed: int,
                    labels: int | None = None) -> list[Record]:
    """Up to ``per_label`` records of each label (seeded), interleaved label by label.

    Balanced rather than proportional so that every label can form a cluster; the
    interleaving makes any prefix of the result balanced too (the sanity subset is a prefix).
    ``labels`` keeps only that many labels (seeded choice), for small runs.
    """
    rng = random.Random(seed)
    by_label: dict[str, list[Record]] = collections.defaultdict(list)
    for r in records:
        by_label[r.label].append(r)
    names = sorted(by_label)
    if labels is not None and labels < len(names):
        names = sorted(rng.sample(names, labels))
    pools = {n: rng.sample(by_label[n], min(per_label, len(by_label[n]))) for n in names}
    out = []
    for i in range(per_label):
        out.extend(pools[n][i] for n in names if i < len(pools[n]))
    return out


# --------------------------------------------------------------------------- languages

# Names the LLM may use for a language that lingua names differently.
_LANGUAGE_ALIASES = {"mandarin": "chinese", "cantonese": "chinese", "farsi": "persian", "filipino": "tagalog",
                     "bokmal": "bokmal", "norwegian": "bokmal", "nynorsk": "nynorsk"}


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """The identifier the computed Language facet uses (``clio_stream.stages.language``), as lower-case names."""
    from clio_stream.stages.language import detect_languages as detect

    return detect(texts)


@lru_cache(maxsize=1)
def _language_names() -> tuple[str, ...]:
    from lingua import Language

    return tuple(sorted({lang.name.lower() for lang in Language.all()} | set(_LANGUAGE_ALIASES)))


def parse_language_answer(answer: str | None) -> str | None:
    """The first language the Language facet names, normalised to lingua's name; None when it names none."""
    if not answer:
        return None
    low = answer.lower()
    best: tuple[int, str] | None = None
    for name in _language_names():
        m = re.search(rf"\b{name}\b", low)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), _LANGUAGE_ALIASES.get(name, name))
    return best[1] if best else None


def language_agreement(answers: Sequence[str | None], detected: Sequence[str | None]) -> dict[str, Any]:
    """Share of conversations where the facet's first language equals the identifier's."""
    named = [parse_language_answer(a) for a in answers]
    pairs = [(n, d) for n, d in zip(named, detected) if d is not None]
    agree = sum(1 for n, d in pairs if n == d)
    return {"n": len(pairs), "agreement": agree / len(pairs) if pairs else float("nan"),
            "no_language_named": sum(1 for n, _ in pairs if n is None),
            "detected": dict(collections.Counter(d for _, d in pairs).most_common(8)),
            "facet_said": dict(collections.Counter(n for n, _ in pairs).most_common(8))}


# --------------------------------------------------------------------------- facet values, cached


class CountingLLM:
    """Wraps a back-end and counts generations per prompt, so first-try parse failures are known per value.

    ``ask`` re-sends only the prompts that did not parse, so a prompt generated twice
    failed once. The key is the prompt's values (conversation and question).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_name = getattr(inner, "model_name", "?")
        self.attempts: collections.Counter[str] = collections.Counter()

    @staticmethod
    def key(values: Mapping[str, str]) -> str:
        return hashlib.sha256(json.dumps(dict(values), sort_keys=True).encode()).hexdigest()

    def generate(self, prompts: Sequence[Any], sampling: Mapping[str, Any], *, seed: int | None = None,
                 desc: str | None = None) -> list[str | None]:
        for p in prompts:
            self.attempts[self.key(p.values)] += 1
        return self.inner.generate(prompts, sampling, seed=seed, desc=desc)

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        pass


class FacetCache:
    """``{key: {"value": str | None, "attempts": int}}`` in one JSON file, written after every batch."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            self.data = json.loads(path.read_text())
            log.info("facet cache %s: %d values", path, len(self.data))

    def save(self) -> None:
        if self.path is None:
            return
        from clio_stream.storage.checkpoint import atomic_write_bytes

        atomic_write_bytes(self.path, json.dumps(self.data, ensure_ascii=False).encode())


def cache_key(model: str, facet: Any, conversation_text: str, settings: Any, shared: Any = None) -> str:
    """Model, facet question, sampling, the prompt's layout (with the shared preamble, which depends on the
    facets asked together) and the (truncated) conversation: anything that changes the answer."""
    from clio_stream.stages.extract import facet_prompt

    prompt = facet_prompt(facet, "", shared=shared)
    parts = [model, json.dumps(facet.to_dict(), sort_keys=True, default=str), prompt.template.user,
             prompt.template.prefill, repr(prompt.template.stop), str(prompt.template.max_tokens),
             json.dumps(prompt.values, sort_keys=True),
             json.dumps(settings.llm_sampling_args, sort_keys=True), str(settings.llm_max_retries), str(settings.seed),
             conversation_text]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


@dataclass
class FacetRun:
    """Values per record id and facet name, plus what this run had to ask."""

    values: dict[str, dict[str, str | None]] = field(default_factory=dict)
    attempts: dict[str, dict[str, int]] = field(default_factory=dict)
    asked: int = 0
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)


def extract_cached(records: Sequence[Record], wanted: Mapping[str, Sequence[Any]], llm: Any, settings: Any,
                   cache: FacetCache) -> FacetRun:
    """The facets ``wanted[record.id]`` of every record, from the cache or the LLM (``extract_facets``)."""
    from clio_stream.stages.prepare import render_conversation, to_conversation, truncate_conversation
    from clio_stream.stages.extract import SharedPreamble, asked, build_prompts, extract_facets, \
        shares_the_conversation
    from clio_stream.llm.base import AskStats

    counting = CountingLLM(llm)
    model = counting.model_name
    convs = {}
    keys: dict[tuple[str, str], str] = {}
    missing: dict[tuple[str, ...], list[Record]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        conv, _ = truncate_conversation(to_conversation(r.as_message(), i), settings.max_conversation_tokens,
                                        llm.count_tokens)
        convs[r.id] = conv
        text = render_conversation(conv)
        todo = []
        shared = SharedPreamble.of(wanted[r.id]) if settings.facet_layout == "shared" else None
        for f in wanted[r.id]:
            keys[(r.id, f.name)] = cache_key(model, f, text, settings,
                                             shared if shares_the_conversation(f) else None)
            if keys[(r.id, f.name)] not in cache.data:
                todo.append(f.name)
        if todo and shared is not None:
            todo = [f.name for f in wanted[r.id]]  # the preamble is the whole set's: ask the set as it was keyed
        if todo:
            missing[tuple(todo)].append(r)
    out = FacetRun()
    stats = AskStats()
    by_name = {f.name: f for fs in wanted.values() for f in fs}
    t0 = time.perf_counter()
    for names, group in missing.items():
        facets = [by_name[n] for n in names]
        log.info("asking %d facets (%s) of %d conversations", len(facets), ", ".join(names), len(group))
        got = extract_facets([convs[r.id] for r in group], facets, counting, sampling=settings.llm_sampling_args,
                             retries=settings.llm_max_retries, seed=settings.seed, batch_size=settings.llm_batch_size,
                             stats=stats, prefix_group=settings.facet_prefix_group, layout=settings.facet_layout)
        llm_facets = asked(facets)
        prompts = build_prompts([convs[r.id] for r in group], llm_facets, layout=settings.facet_layout)
        for gi, (r, cf) in enumerate(zip(group, got)):
            for f in facets:
                if f.compute is not None:  # computed once, never re-asked
                    tries = 1
                else:
                    p = prompts[gi * len(llm_facets) + llm_facets.index(f)]
                    tries = int(counting.attempts[CountingLLM.key(p.values)])
                cache.data[keys[(r.id, f.name)]] = {"value": cf.values[f.name].value, "attempts": tries}
        out.asked += len(group) * len(llm_facets)  # prompts sent (computed facets cost none)
        cache.save()
    out.seconds = time.perf_counter() - t0
    out.stats = vars(stats)
    for r in records:
        for f in wanted[r.id]:
            entry = cache.data[keys[(r.id, f.name)]]
            out.values.setdefault(r.id, {})[f.name] = entry["value"]
            out.attempts.setdefault(r.id, {})[f.name] = int(entry.get("attempts", 1))
    return out


def parse_summary(run: FacetRun, ids: Sequence[str], facet: str, max_attempts: int) -> dict[str, Any]:
    """Unparseable after retries (value None) and first-try failures (asked more than once) for one facet."""
    have = [i for i in ids if facet in run.values.get(i, {})]
    missing = sum(1 for i in have if run.values[i][facet] is None)
    retried = sum(1 for i in have if run.attempts[i][facet] > 1)
    return {"n": len(have), "unparseable": missing, "unparseable_share": missing / len(have) if have else float("nan"),
            "first_try_failures": retried, "first_try_failure_share": retried / len(have) if have else float("nan"),
            "max_attempts": max_attempts}


class EmbeddingCache:
    """Vectors by (model, text) hash in one ``.npz``: mpnet on long prompts is minutes on a busy 2-core CPU."""

    def __init__(self, embedder: Any, path: Path | None) -> None:
        self.embedder, self.path = embedder, path
        self.vectors: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            with np.load(path) as doc:
                self.vectors = dict(zip(doc["keys"].tolist(), doc["vectors"]))

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.embedder.model_name}\x1f{text}".encode()).hexdigest()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors for ``texts``, computing only the ones not seen before."""
        keys = [self.key(t) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if todo:
            first = {k: t for k, t in zip(keys, texts)}
            for k, v in zip(todo, self.embedder.encode([first[k] for k in todo])):
                self.vectors[k] = v
            self.save()
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([self.vectors[k] for k in keys]).astype(np.float32)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.asarray(list(self.vectors)), vectors=np.stack(list(self.vectors.values())))
        tmp.replace(self.path)


# --------------------------------------------------------------------------- clustering vs labels


def batch_labels(x: np.ndarray, k: int, settings: Any) -> np.ndarray:
    """The pipeline's batch k-means (``clustering.kmeans`` with the settings' seed and arguments)."""
    from clio_stream.stages.base_clusters import kmeans

    labels, _ = kmeans(x, k, seed=settings.seed, args=settings.kmeans_args)
    return labels


def stream_order(n: int, seed: int) -> np.ndarray:
    """The order the records arrive in: a seeded shuffle (the files are grouped by label; live traffic is mixed)."""
    return np.random.default_rng(seed).permutation(n)


def online_labels(x: np.ndarray, k: int, settings: Any, *, order: np.ndarray, bootstrap_fraction: float) -> np.ndarray:
    """Labels of the stream: the first points clustered as the consumers bootstrap, the rest assigned online.

    The bootstrap prefix gets the bootstrap's base clusters (``stages.base_clusters.base_clusters``)
    with ``n_base_clusters`` pinned to ``k``, as an online model; every later vector goes through
    ``learn_many`` of one row (nearest centroid, then the centroid moves), in stream order, one at a time.
    """
    from clio_stream.domain.vectors import normalise_rows
    from clio_stream.online.kmeans import OnlineKMeans
    from clio_stream.stages.base_clusters import base_clusters

    n_boot = min(len(x), max(k, int(round(bootstrap_fraction * len(x)))))
    head, tail = order[:n_boot], order[n_boot:]
    pinned = settings.with_overrides(n_base_clusters=lambda n, k=k: k)
    xh = normalise_rows(x[head])
    head_labels, centres = base_clusters(xh, pinned)
    model = OnlineKMeans.from_batch(xh, head_labels, centroids=centres, version=1, facet="quality")
    labels = np.empty(len(x), dtype=np.int64)
    labels[head] = head_labels
    for i in tail:
        labels[i] = model.learn_many(x[i : i + 1])[0]
    return labels


def compare_online(x: np.ndarray, truth: Sequence[str], k: int, settings: Any, *, seed: int,
                   bootstrap_fraction: float) -> dict[str, Any]:
    """Batch and online clusterings of the same vectors, each scored against the labels."""
    batch = batch_labels(x, k, settings)
    online = online_labels(x, k, settings, order=stream_order(len(x), seed), bootstrap_fraction=bootstrap_fraction)
    b, o = cluster_scores(truth, batch), cluster_scores(truth, online)
    from sklearn.metrics import normalized_mutual_info_score

    return {"k": int(k), "n": int(len(x)), "batch": b, "online": o,
            "nmi_ratio": o["nmi"] / b["nmi"] if b["nmi"] > 0 else float("nan"),
            "online_vs_batch_nmi": float(normalized_mutual_info_score(batch, online))}


KMEANS_SEEDS = 5


def nmi_over_seeds(x: np.ndarray, truth: Sequence[str], k: int, settings: Any) -> dict[str, float]:
    """Batch NMI's mean and spread over ``KMEANS_SEEDS`` k-means seeds: tells a real gain from k-means noise."""
    from clio_stream.stages.base_clusters import kmeans

    nmis = [cluster_scores(truth, kmeans(x, k, seed=settings.seed + s, args=settings.kmeans_args)[0])["nmi"]
            for s in range(KMEANS_SEEDS)]
    return {"mean": float(np.mean(nmis)), "sd": float(np.std(nmis)), "seeds": KMEANS_SEEDS}


def evaluate_set(name: str, records: Sequence[Record], views: Mapping[str, np.ndarray], settings: Any, *,
                 seed: int, bootstrap_fraction: float) -> dict[str, Any]:
    """Each view (raw, facet as embedded, facet full value) with k = labels and k = pipeline, batch and online."""
    from clio_stream.stages.base_clusters import base_cluster_count

    truth = [r.label for r in records]
    ks = {"labels": len(set(truth)), "pipeline": base_cluster_count(settings, len(records))}
    out: dict[str, Any] = {"n": len(records), "labels": ks["labels"], "views": {}}
    for view, x in views.items():
        for kname, k in ks.items():
            if k < 2:  # one cluster scores 0 whatever happens: nothing to compare
                log.warning("%s %s k=%s is %d: skipped", name, view, kname, k)
                continue
            if kname == "pipeline" and k == ks["labels"]:  # the same run twice
                continue
            res = compare_online(x, truth, k, settings, seed=seed, bootstrap_fraction=bootstrap_fraction)
            res["batch_nmi_over_seeds"] = nmi_over_seeds(x, truth, k, settings)
            out["views"][f"{view} k={kname}"] = res
            log.warning("%s %s k=%d: batch NMI %.3f, online NMI %.3f (ratio %.3f)", name, view, k,
                        res["batch"]["nmi"], res["online"]["nmi"], res["nmi_ratio"])
    return out


# --------------------------------------------------------------------------- the Concerning facet


def concerning_scores(labels: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
    """How well the Concerning score separates the harmful requests from the benign ones.

    AUROC of the score (ties count half; 0.5 = no better than a coin), the score histogram per
    label, the benign requests scored 4 or 5 (false alarms a review queue would get) and the
    harmful ones scored 3 or more (caught). Scores may be fractional (an expected score), hence
    the thresholds 3.5 and 2.5. Missing values are left out and counted.
    """
    from sklearn.metrics import roc_auc_score

    scored = [(lab, float(v)) for lab, v in zip(labels, values) if v is not None and v != ""]
    y = [1 if lab == "harmful" else 0 for lab, _ in scored]
    by = {lab: [v for la, v in scored if la == lab] for lab in ("benign", "harmful")}

    def share(xs: list[float], cut: float) -> float:
        return sum(v >= cut for v in xs) / len(xs) if xs else float("nan")

    return {"n": len(labels), "missing": len(labels) - len(scored),
            "auroc": float(roc_auc_score(y, [v for _, v in scored])) if len(set(y)) == 2 else float("nan"),
            "histogram": {lab: histogram([int(round(v)) for v in vs], 1, 5) for lab, vs in by.items()},
            "mean": {lab: float(np.mean(vs)) if vs else float("nan") for lab, vs in by.items()},
            "benign_4_or_5": share(by["benign"], 3.5), "harmful_3_or_more": share(by["harmful"], 2.5)}


# --------------------------------------------------------------------------- fidelity


def fidelity(values: Sequence[str], texts: Sequence[str], embedded: np.ndarray, full: np.ndarray,
             raw: np.ndarray) -> dict[str, Any]:
    """Facet fidelity of the values as embedded and as full sentences, plus how many distinct values there are.

    Conversations whose user turns are identical (MT-Bench: one question answered by several
    models) are one target: no value could tell them apart, and ties rank against the query.
    """
    from clio_stream.stages.fidelity import retrieval

    first = {t: i for i, t in reversed(list(enumerate(texts)))}
    targets = sorted(set(first.values()))
    own = np.asarray([targets.index(first[t]) for t in texts])
    return {"embedded": retrieval(embedded, raw[targets], own).as_dict(),
            "full_value": retrieval(full, raw[targets], own).as_dict(),
            "distinct_values": len(set(values)), "n": len(values)}


def name_fidelity_of_base_clusters(values: Sequence[str], users: Sequence[str], x: np.ndarray, llm: Any,
                                   embedder: Any, settings: Any) -> dict[str, Any]:
    """Base clusters as the pipeline builds them (k = ``base_cluster_count``), named by the LLM, scored by name fidelity.

    The query is what a reader sees ("name. summary", and the name alone); the targets are the
    centroids of the members' embedded values of every base cluster of the set (its siblings).
    Also scored: keyword labels (``keywords.keyword_labels``) and the published choice, the LLM's
    name where it retrieves its own cluster and the keyword label where it does not.
    """
    from clio_stream.stages.keywords import keyword_labels
    from clio_stream.stages.base_clusters import kmeans
    from clio_stream.domain.facets import REQUEST
    from clio_stream.llm.base import AskStats
    from clio_stream.stages.naming import name_clusters
    from clio_stream.stages.fidelity import name_fidelity, name_hits
    from clio_stream.stages.base_clusters import base_cluster_count

    k = base_cluster_count(settings, len(values))
    labels, centres = kmeans(x, k, seed=settings.seed, args=settings.kmeans_args)
    stats = AskStats()
    t0 = time.perf_counter()
    named = name_clusters(REQUEST, list(values), x, labels, centres, llm, embedder, settings=settings, stats=stats)
    described = embedder.encode([f"{name}. {summary}" for summary, name in named])
    names_only = embedder.encode([name for _, name in named])
    hits = name_hits(described, x, labels)
    sizes = np.bincount(labels, minlength=k)
    keywords = keyword_labels(values, labels, users, k, drop=REQUEST.prefill)
    kw = embedder.encode([w or name for w, (_, name) in zip(keywords, named)])
    published = np.where((hits == 1)[:, None], described, kw)
    check = name_check(names_only, x, labels, k, settings.name_min_closeness)  # what stages.name_check shows
    name_hits_alone, closeness, kept = check.rank, check.closeness, check.passed
    published_by_name = np.where((name_hits_alone == 1)[:, None], names_only, kw)
    published_floor = np.where(kept[:, None], names_only, kw)
    return {"k": int(k), "n": len(values), "name_and_summary": name_fidelity(described, x, labels).as_dict(),
            "name_only": name_fidelity(names_only, x, labels).as_dict(),
            "keywords": name_fidelity(kw, x, labels).as_dict(),
            "published": name_fidelity(published, x, labels).as_dict(),
            "published_name_check": name_fidelity(published_by_name, x, labels).as_dict(),
            "keyword_fallbacks": int(np.sum(hits != 1)),
            "published_closeness_floor": name_fidelity(published_floor, x, labels).as_dict(),
            "keyword_fallbacks_name_check": int(np.sum(name_hits_alone != 1)),
            "keyword_fallbacks_closeness_floor": int(np.sum(~kept)), "llm_prompts": stats.prompts,
            "unparseable": stats.unparseable, "seconds": round(time.perf_counter() - t0, 1),
            "clusters": [{"name": name, "summary": summary, "keywords": keywords[c], "size": int(sizes[c]),
                          "rank": int(hits[c]), "name_rank": int(name_hits_alone[c]),
                          "name_closeness": round(float(closeness[c]), 3)}
                         for c, (summary, name) in enumerate(named)]}


def name_check(names: np.ndarray, x: np.ndarray, labels: np.ndarray, k: int, min_closeness: float) -> Any:
    """The pipeline's name check (``fidelity.check_labels``) of each cluster's name against the centres of all
    members (the pipeline samples 32 per cluster) and their mean cosine to their centre."""
    from clio_stream.domain.vectors import normalise_rows
    from clio_stream.stages.fidelity import centroids, check_labels

    x = normalise_rows(x)
    centres = centroids(x, labels, k)
    own = np.einsum("ij,ij->i", x, centres[labels])
    member = np.bincount(labels, weights=own, minlength=k) / np.maximum(np.bincount(labels, minlength=k), 1)
    return check_labels(normalise_rows(names), centres, member, min_closeness)


# --------------------------------------------------------------------------- top level


def top_level(values: Sequence[str], x: np.ndarray, tops: Sequence[str], llm: Any, embedder: Any,
              settings: Any) -> dict[str, Any]:
    """Name base clusters with the LLM and assign each to one known category with the hierarchy's step.

    k = max(the pipeline's ``base_cluster_count``, 2 x categories) so every category can get a cluster.
    Reports conversation-level accuracy of the LLM's choice, of the nearest category by
    embedding (what the hierarchy falls back to) and of the best possible choice for these
    base clusters (each cluster to its majority category: the ceiling the assignment step has).
    """
    from clio_stream.stages.base_clusters import kmeans
    from clio_stream.domain.facets import REQUEST
    from clio_stream.stages.hierarchy import assign_to_candidates
    from clio_stream.llm.base import AskStats
    from clio_stream.stages.naming import name_clusters
    from clio_stream.stages.base_clusters import base_cluster_count
    from clio_stream.domain.clusters import ClusterNode

    categories = sorted(set(tops))
    shown = [c.replace("_", " ").capitalize() for c in categories]
    k = max(base_cluster_count(settings, len(values)), 2 * len(categories))
    labels, centres = kmeans(x, k, seed=settings.seed, args=settings.kmeans_args)
    stats = AskStats()
    t0 = time.perf_counter()
    named = name_clusters(REQUEST, list(values), x, labels, centres, llm, embedder, settings=settings, stats=stats)
    nodes = [ClusterNode(id=f"q-{c}", facet=REQUEST.name, name=name, summary=summary, level=0)
             for c, (summary, name) in enumerate(named)]
    e = embedder.encode([f"{n.name}. {n.summary}" for n in nodes])
    cand = embedder.encode(shown)
    picked = assign_to_candidates(nodes, e, shown, cand, llm, settings, rng=random.Random(settings.seed),
                                  seed=settings.seed + 2, stats=stats, desc="top-level assign")
    nearest = [int(np.argmax(row)) for row in e @ cand.T]
    majority = []
    for c in range(k):
        members = [tops[i] for i in np.flatnonzero(labels == c)]
        majority.append(categories.index(collections.Counter(members).most_common(1)[0][0]) if members else 0)

    def accuracy(choice: Sequence[int]) -> float:
        return float(np.mean([categories[choice[labels[i]]] == tops[i] for i in range(len(tops))]))

    return {"categories": shown, "n": len(values), "base_clusters": int(k), "llm_accuracy": accuracy(picked),
            "embedding_accuracy": accuracy(nearest), "ceiling_accuracy": accuracy(majority),
            "chance_accuracy": max(collections.Counter(tops).values()) / len(tops),
            "cluster_names": [n.name for n in nodes][:12], "llm_prompts": stats.prompts,
            "unparseable": stats.unparseable, "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- stability


def leaf_names(publish_dir: Path, facet: str) -> dict[str, str]:
    """Leaf id -> name of the current published version (empty before the first)."""
    from clio_stream.storage.published import PublishedVersions

    current = PublishedVersions.at(publish_dir).load_current()
    if current is None or facet not in current.result.hierarchies:
        return {}
    return {nid: n.name for nid, n in current.result.hierarchies[facet].nodes.items() if n.level == 0}


def name_survival(before: Mapping[str, str], after: Mapping[str, str]) -> float | None:
    """Share of the ids present in both versions whose name did not change."""
    kept = [i for i in before if i in after]
    return sum(1 for i in kept if before[i] == after[i]) / len(kept) if kept else None


def stability(texts: Sequence[str], vectors: np.ndarray, embedder: Any, settings: Any, *,
              llm_factory: Callable[[], Any], n_first: int) -> dict[str, Any]:
    """+5 % and +20 % re-clusterings after a first build of ``n_first`` stored facet values."""
    from benchmarks.recluster import fill, summary
    from clio_stream.domain.facets import REQUEST
    from clio_stream.living.job import recluster_once
    from clio_stream.storage.store import QdrantStore

    users = max(10, n_first // 3)
    out: dict[str, Any] = {"n_first": n_first}
    with tempfile.TemporaryDirectory() as tmp:
        for label, share in (("+5%", 0.05), ("+20%", 0.20)):
            extra = max(1, int(round(share * n_first)))
            if n_first + extra > len(texts):
                raise ValueError(f"stability {label}: needs {n_first + extra} values, have {len(texts)}")
            pub = Path(tmp) / label.strip("+%")
            store = QdrantStore(":memory:")
            try:
                store.ensure_collections(embedder.dim)
                fill(store, REQUEST.name, list(texts), vectors, 0, n_first, users)
                first = recluster_once(store, llm_factory(), embedder, [REQUEST], settings, publish_dir=pub,
                                       owner="quality")
                before = leaf_names(pub, REQUEST.name)
                fill(store, REQUEST.name, list(texts), vectors, n_first, n_first + extra, users)
                rep = recluster_once(store, llm_factory(), embedder, [REQUEST], settings, publish_dir=pub,
                                     owner="quality")
                after = leaf_names(pub, REQUEST.name)
            finally:
                store.close()
            assert first is not None and rep is not None
            info = rep.facets[REQUEST.name]
            # Reused leaves keep their name by construction; the others are named afresh. With the
            # scripted model a fresh name can repeat the old one by accident (it echoes a member), so
            # the model-independent figure is the share of surviving ids that were not re-asked.
            kept = info["leaves_reused"] / info["ids_survived"] if info["ids_survived"] else None
            out[label] = {**summary(rep), "added": extra, "name_survival": name_survival(before, after),
                          "names_not_reasked": kept, "leaves_before": len(before), "leaves_after": len(after)}
            log.warning("stability %s: id survival %s, name survival %s (not re-asked %s)", label, rep.id_survival,
                        out[label]["name_survival"], kept)
    return out


# --------------------------------------------------------------------------- the run


@dataclass
class Config:
    """Sizes and switches of one run (``--smoke`` and the CI test use small ones)."""

    data_root: Path = ROOT.parent / "shared" / "data"
    banking77_per_label: int = 3
    banking77_labels: int | None = None
    mt_bench_per_label: int = 8
    arena_per_label: int = 40
    multilingual: int = 45
    sanity: int = 30
    bootstrap_fraction: float = 0.2
    seed: int = 7
    stability_llm: str = "scripted"
    top_level: bool = True
    stability: bool = True
    name_fidelity_sets: tuple[str, ...] = ("banking77", "mt_bench", "arena_hard", "multilingual")
    concerning: bool = True  # the labelled harmful/benign requests (Concerning facet only)

    @classmethod
    def smoke(cls) -> Config:
        return cls(banking77_per_label=3, banking77_labels=6, mt_bench_per_label=1, arena_per_label=4,
                   multilingual=6, sanity=6, bootstrap_fraction=0.3, concerning=False)


def select(config: Config) -> dict[str, list[Record]]:
    """The evaluated records per set; ``multilingual`` is the non-English arena-hard prompts."""
    root = config.data_root
    sets = {
        "banking77": balanced_sample(load_records("banking77", root), config.banking77_per_label, config.seed,
                                     labels=config.banking77_labels),
        "mt_bench": balanced_sample(load_records("mt_bench", root), config.mt_bench_per_label, config.seed),
        "arena_hard": balanced_sample(load_records("arena_hard", root), config.arena_per_label, config.seed),
    }
    sets = {k: v for k, v in sets.items() if v}  # a size of 0 leaves a set out
    if config.multilingual > 0:
        arena = load_records("arena_hard", root)
        langs = detect_languages([r.text for r in arena])
        foreign = [r for r, lang in zip(arena, langs) if lang not in ("english", None)]
        per = -(-config.multilingual // len({r.label for r in foreign}))
        sets["multilingual"] = balanced_sample(foreign, per, config.seed)[: config.multilingual]
    return sets


def run(config: Config, llm: Any, embedder: Any, settings: Any, cache: FacetCache,
        embedding_cache: Path | None = None) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict (``embedding_cache``: an ``.npz`` to reuse vectors)."""
    from clio_stream.embedding import embedding_text
    from clio_stream.domain.facets import CONCERNING, LANGUAGE, REQUEST

    vec_cache = EmbeddingCache(embedder, embedding_cache)

    t_start = time.perf_counter()
    load_at_start = os.getloadavg()
    sets = select(config)
    records = {r.id: r for rs in sets.values() for r in rs}
    sanity_ids = {r.id for rs in sets.values() for r in rs[: config.sanity]}
    sanity_ids |= {r.id for r in sets.get("multilingual", [])}
    wanted = {rid: [REQUEST, LANGUAGE, CONCERNING] if rid in sanity_ids else [REQUEST] for rid in records}
    harm = load_records("concerning", config.data_root) if config.concerning else []
    wanted.update({r.id: [CONCERNING] for r in harm})
    records.update({r.id: r for r in harm})
    facets = extract_cached(list(records.values()), wanted, llm, settings, cache)
    log.warning("facets: %d asked in %.0f s (%d cached values reused)", facets.asked, facets.seconds,
                sum(len(v) for v in wanted.values()) - facets.asked)
    out: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
                           "sizes": {k: len(v) for k, v in sets.items()}, "facet_seconds": round(facets.seconds, 1),
                           "facet_prompts_asked": facets.asked, "facet_ask_stats": facets.stats,
                           "clustering": {}, "top_level": {}, "sanity": {}}
    vectors: dict[str, tuple[list[Record], np.ndarray, np.ndarray]] = {}
    full_vectors: dict[str, np.ndarray] = {}
    conversation_vectors: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for name, rs in sets.items():
        kept = [r for r in rs if facets.values[r.id][REQUEST.name]]
        values = [facets.values[r.id][REQUEST.name] for r in kept]
        raw = vec_cache.encode([r.text for r in kept])
        fac = vec_cache.encode([embedding_text(REQUEST, v) for v in values])  # what the pipeline embeds
        full_vectors[name] = vec_cache.encode(values)
        if any(len(r.conversation) > 1 for r in kept):  # the whole conversation, as embedding it without facets
            conversation_vectors[name] = vec_cache.encode([r.full_text for r in kept])
        vectors[name] = (kept, raw, fac)
    out["embedding_seconds"] = round(time.perf_counter() - t0, 1)
    out["fidelity"], out["name_fidelity"] = {}, {}
    for name, (kept, raw, fac) in vectors.items():
        views = {"raw": raw, "facet": fac, "facet full-value": full_vectors[name]}
        if name in conversation_vectors:
            views["raw conversation"] = conversation_vectors[name]
        out["clustering"][name] = evaluate_set(name, kept, views, settings, seed=config.seed,
                                               bootstrap_fraction=config.bootstrap_fraction)
        out["clustering"][name]["request_coverage"] = len(kept) / len(sets[name])
        values = [facets.values[r.id][REQUEST.name] for r in kept]
        out["fidelity"][name] = fidelity(values, [r.text for r in kept], fac, full_vectors[name], raw)
        if name in config.name_fidelity_sets:
            out["name_fidelity"][name] = name_fidelity_of_base_clusters(values, [r.id for r in kept], fac, llm,
                                                                        embedder, settings)
    if config.top_level:
        for name in ("mt_bench", "arena_hard"):
            if name not in vectors:
                continue
            kept, _, fac = vectors[name]
            out["top_level"][name] = top_level([facets.values[r.id][REQUEST.name] for r in kept], fac,
                                               [r.top or "" for r in kept], llm, embedder, settings)
    for name, rs in sets.items():
        ids = [r.id for r in rs if r.id in sanity_ids]
        detected = detect_languages([records[i].text for i in ids])
        concern = [facets.values[i][CONCERNING.name] for i in ids]
        out["sanity"][name] = {
            "n": len(ids),
            "language": language_agreement([facets.values[i][LANGUAGE.name] for i in ids], detected),
            "concerning": histogram([int(v) if v else None for v in concern], *CONCERNING.numeric),
            "parse": {f.name: parse_summary(facets, ids if f is not REQUEST else [r.id for r in rs], f.name,
                                            settings.llm_max_retries + 1) for f in (REQUEST, LANGUAGE, CONCERNING)},
        }
    out["parse_overall"] = {f.name: parse_summary(facets, list(records), f.name, settings.llm_max_retries + 1)
                            for f in (REQUEST, LANGUAGE, CONCERNING)}
    if harm:
        out["concerning"] = concerning_scores([r.label for r in harm],
                                              [facets.values[r.id][CONCERNING.name] for r in harm])
    if config.stability:
        texts, vecs = [], []
        for name in ("banking77", "mt_bench", "arena_hard"):
            if name not in vectors:
                continue
            kept, _, fac = vectors[name]
            texts += [facets.values[r.id][REQUEST.name] for r in kept]
            vecs.append(fac)
        order = stream_order(len(texts), config.seed)
        texts, x = [texts[i] for i in order], np.concatenate(vecs)[order]
        factory = _stability_llm(config.stability_llm, llm)
        out["stability"] = stability(texts, x, embedder, settings, llm_factory=factory,
                                     n_first=int(len(texts) / 1.2))
        out["stability"]["llm"] = config.stability_llm
    out["seconds"] = round(time.perf_counter() - t_start, 1)
    out["load_average"] = {"start": [round(x, 2) for x in load_at_start], "end": [round(x, 2) for x in os.getloadavg()]}
    return out


def _stability_llm(kind: str, llm: Any) -> Callable[[], Any]:
    """The real model, or the scripted one the recluster benchmark uses (ids and reuse do not depend on it)."""
    if kind == "real":
        return lambda: llm
    from tests.unit.fakes import ScriptedLLM, sensible_script

    return lambda: ScriptedLLM(sensible_script)


# --------------------------------------------------------------------------- report


def _triple(s: Mapping[str, float]) -> str:
    return f"{s['nmi']:.3f} / {s['ari']:.3f} / {s['acc']:.3f}"


def _share(x: float | None) -> float | str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def table(result: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
    """The printed rows: ``(metric, value, unit)``."""
    rows: list[tuple[str, Any, str]] = []
    for name, res in result["clustering"].items():
        rows.append((f"{name}: records / labels", f"{res['n']} / {res['labels']}",
                     f"Request parsed for {res['request_coverage']:.1%}"))
        for view, v in res["views"].items():
            rows.append((f"{name} {view}={v['k']} batch", _triple(v["batch"]), "NMI / ARI / acc"))
            rows.append((f"{name} {view}={v['k']} online", _triple(v["online"]), "NMI / ARI / acc"))
            rows.append((f"{name} {view}={v['k']} online/batch NMI", v["nmi_ratio"],
                         f"target >= {NMI_RATIO_TARGET}" + (" MISSED" if v["nmi_ratio"] < NMI_RATIO_TARGET else "")))
    for name, f in result.get("fidelity", {}).items():
        e, v = f["embedded"], f["full_value"]
        rows.append((f"{name}: facet fidelity R@1 / MRR (embedded)", f"{e['recall_at_1']:.3f} / {e['mrr']:.3f}",
                     f"among {e['candidates']}; chance {e['chance_recall_at_1']:.3f} / {e['chance_mrr']:.3f}"))
        rows.append((f"{name}: facet fidelity R@1 / MRR (full value)", f"{v['recall_at_1']:.3f} / {v['mrr']:.3f}",
                     f"{f['distinct_values']} distinct values of {f['n']}"))
    for name, nf in result.get("name_fidelity", {}).items():
        a, b = nf["name_and_summary"], nf["name_only"]
        rows.append((f"{name}: name fidelity R@1 / MRR (name+summary)", f"{a['recall_at_1']:.3f} / {a['mrr']:.3f}",
                     f"among {nf['k']} base clusters; chance {a['chance_recall_at_1']:.3f}"))
        rows.append((f"{name}: name fidelity R@1 / MRR (name only)", f"{b['recall_at_1']:.3f} / {b['mrr']:.3f}",
                     f"{nf['unparseable']} of {nf['llm_prompts']} naming answers unparseable"))
        kw, pub = nf["keywords"], nf["published"]
        rows.append((f"{name}: name fidelity R@1 / MRR (keywords)", f"{kw['recall_at_1']:.3f} / {kw['mrr']:.3f}",
                     "c-TF-IDF over members' values, distinct users"))
        rows.append((f"{name}: name fidelity R@1 / MRR (published)", f"{pub['recall_at_1']:.3f} / {pub['mrr']:.3f}",
                     f"LLM name, keywords for the {nf['keyword_fallbacks']} that fail"))
    for name, t in result.get("top_level", {}).items():
        shape = f"{t['base_clusters']} clusters -> {len(t['categories'])} categories"
        rows.append((f"{name} top level: LLM assignment", t["llm_accuracy"], f"accuracy over {t['n']} conv., {shape}"))
        rows.append((f"{name} top level: nearest by embedding", t["embedding_accuracy"], "accuracy (baseline)"))
        rows.append((f"{name} top level: ceiling / chance", f"{t['ceiling_accuracy']:.3f} / {t['chance_accuracy']:.3f}",
                     "accuracy"))
    st = result.get("stability")
    if st:
        for label in ("+5%", "+20%"):
            s = st[label]
            target = f" (target >= {ID_SURVIVAL_TARGET})" if label == "+5%" else ""
            rows.append((f"stability {label}: id survival", _share(s["id_survival"]), f"fraction{target}"))
            rows.append((f"stability {label}: name survival", _share(s["name_survival"]),
                         f"same name, of surviving ids; {s['leaves_before']} leaves, {st['llm']} LLM"))
            rows.append((f"stability {label}: names not re-asked", _share(s.get("names_not_reasked")),
                         "of surviving ids (model-independent name survival)"))
    for name, s in result["sanity"].items():
        lang = s["language"]
        rows.append((f"{name}: Language facet = identifier", _share(lang["agreement"]),
                     f"of {lang['n']}; {lang['no_language_named']} named no language"))
        c = s["concerning"]
        rows.append((f"{name}: Concerning 1/2/3/4/5/missing",
                     "/".join(str(c[k]) for k in ("1", "2", "3", "4", "5", "missing")), "conversations"))
    cc = result.get("concerning")
    if cc:
        rows.append(("concerning set: AUROC harmful vs benign", cc["auroc"],
                     f"{cc['n']} requests, {cc['missing']} missing"))
        rows.append(("concerning set: benign 4-5 / harmful >= 3", f"{cc['benign_4_or_5']:.3f} / "
                     f"{cc['harmful_3_or_more']:.3f}", "false alarms / caught"))
    for fname, p in result["parse_overall"].items():
        rows.append((f"unparseable {fname}", p["unparseable_share"],
                     f"of {p['n']} after retries (target <= {UNPARSEABLE_TARGET})"
                     + (" MISSED" if p["unparseable_share"] > UNPARSEABLE_TARGET else "")))
        rows.append((f"first-try failures {fname}", p["first_try_failure_share"], "re-asked at least once"))
    rows.append(("facet prompts asked / seconds", f"{result['facet_prompts_asked']} / {result['facet_seconds']}",
                 "0 asked = all cached"))
    rows.append(("total", result["seconds"], "s"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sample and all-MiniLM-L6-v2 (a pipeline check)")
    ap.add_argument("--n", type=int, default=None,
                    help="scale: records per label for arena-hard (default 40); the others scale with it")
    ap.add_argument("--llm-base-url", default=None, help="an OpenAI-compatible server (vLLM); else in-process engine")
    ap.add_argument("--llm-model", default="smollm2-135m-instruct")
    ap.add_argument("--embedding-model", default=None, help="default all-mpnet-base-v2 (MiniLM with --smoke)")
    ap.add_argument("--embedding-backend", choices=("torch", "onnx-int8"), default="torch",
                    help="the embedding back-end (settings.embedding_backend)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--cache-dir", default=None, help="facet values and vectors (default <CLIO_CACHE_DIR>/quality)")
    ap.add_argument("--bootstrap-fraction", type=float, default=None)
    ap.add_argument("--stability-llm", choices=("scripted", "real"), default="scripted")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sets", default=None,
                    help="comma-separated subset of banking77,mt_bench,arena_hard,multilingual,concerning")
    ap.add_argument("--banking77-per-label", type=int, default=None)
    ap.add_argument("--mt-bench-per-label", type=int, default=None)
    ap.add_argument("--arena-per-label", type=int, default=None)
    ap.add_argument("--multilingual", type=int, default=None, help="non-English arena-hard prompts (default 45)")
    ap.add_argument("--no-top-level", action="store_true", help="skip the top-level reconstruction (LLM naming)")
    ap.add_argument("--no-stability", action="store_true", help="skip the re-clustering stability check")
    ap.add_argument("--naming-samples", type=int, default=None,
                    help="n_name_description_samples_per_cluster (default: the settings', 3)")
    ap.add_argument("--out", default="quality", help="results/NAME.json")
    args = ap.parse_args()

    from benchmarks.common import quiet_logs, report

    quiet_logs()
    logging.getLogger("benchmarks.quality").setLevel(logging.INFO)
    from clio_stream.embedding import make_embedder
    from clio_stream.llm import make_llm
    from clio_stream.settings import ClioSettings

    config = Config.smoke() if args.smoke else Config()
    config.data_root, config.seed, config.stability_llm = Path(args.data_root), args.seed, args.stability_llm
    if args.n is not None:
        scale = args.n / 40
        config.arena_per_label = args.n
        config.mt_bench_per_label = max(1, round(8 * scale))
        config.banking77_per_label = max(2, round(3 * scale))
        config.multilingual, config.sanity = max(3, round(45 * scale)), max(3, round(30 * scale))
    if args.bootstrap_fraction is not None:
        config.bootstrap_fraction = args.bootstrap_fraction
    if args.banking77_per_label is not None:
        config.banking77_per_label = args.banking77_per_label
    if args.mt_bench_per_label is not None:
        config.mt_bench_per_label = args.mt_bench_per_label
    if args.arena_per_label is not None:
        config.arena_per_label = args.arena_per_label
    if args.multilingual is not None:
        config.multilingual = args.multilingual
    if args.sets is not None:
        wanted = set(args.sets.split(","))
        config.banking77_per_label *= "banking77" in wanted
        config.mt_bench_per_label *= "mt_bench" in wanted
        config.arena_per_label *= "arena_hard" in wanted
        config.multilingual *= "multilingual" in wanted
        config.concerning &= "concerning" in wanted
    config.top_level &= not args.no_top_level
    config.stability &= not args.no_stability
    backend = {"llm_backend": "openai", "llm_base_url": args.llm_base_url} if args.llm_base_url else {}
    naming = {} if args.naming_samples is None else {"n_name_description_samples_per_cluster": args.naming_samples}
    settings = ClioSettings(show_progress=False, llm_model=args.llm_model, embedding_backend=args.embedding_backend,
                            **backend, **naming)
    embedding = args.embedding_model or ("all-MiniLM-L6-v2" if args.smoke else "all-mpnet-base-v2")
    llm = make_llm(settings)
    cache_dir = Path(args.cache_dir) if args.cache_dir else settings.cache_dir / "quality"
    cache = FacetCache(cache_dir / f"facets-{re.sub(r'[^A-Za-z0-9.-]+', '_', llm.model_name)[-60:]}.json")
    try:
        result = run(config, llm, make_embedder(settings, embedding), settings, cache,
                     embedding_cache=cache_dir / f"vectors-{embedding}{'' if args.embedding_backend == 'torch' else '-' + args.embedding_backend}.npz")
    finally:
        llm.close()
    result.update(embedding_model=embedding, embedding_backend=args.embedding_backend, llm_model=llm.model_name,
                  llm_backend=settings.llm_backend + (f" {args.llm_base_url}" if args.llm_base_url else ""),
                  targets={"nmi_ratio": NMI_RATIO_TARGET, "id_survival_5pct": ID_SURVIVAL_TARGET,
                           "unparseable": UNPARSEABLE_TARGET})
    report(args.out, table(result), result)


if __name__ == "__main__":
    main()
