"""Streaming benchmark: one consumer worker against the real broker, Qdrant server, vLLM engine and embedder.

Measured side by side in one run (ratios matter more than absolute numbers on
a noisy machine):
1. conversations/s through the whole worker (decode -> facets -> embed -> upsert
   -> assign -> commit; ``--batch`` records per poll, ``--in-flight`` batches at once)
   against raw ``vllm.LLM.generate`` over the same facet prompts in one call
   (target ratio >= 0.9: the worker adds little beyond the LLM), with the share of
   the worker's prompt tokens vLLM's prefix cache served;
2. the non-LLM path (a replay of the LLM's recorded answers, everything else
   real, over ``--replay-n`` conversations: those the LLM did not see get a scripted answer made of their own
   words, so every value is distinct and embedded as a real one is; a few batches alone last under a second,
   too short to measure on a shared machine) against the embedding model's own raw throughput on the same texts in
   the worker's own calls (the ``embedding_text`` of each stored hierarchy value,
   the distinct ones of each polled batch, one call per batch; median of three
   passes) (target ratio >= 0.9);
3. the same path without the computed Language facet (its language identifier replaces a prompt, so it is
   facet work rather than decode, embed, upsert, assign, commit): the identifier's share is the difference;
4. the consumer process's peak RSS (the vLLM engine runs in its own process).

Online assignment against river's KMeans is ``benchmarks.online_kmeans``.

    .venv/bin/python -m benchmarks.stream --n 48 --batch 16 --in-flight 3
"""

from __future__ import annotations

import argparse
import re
import statistics

from clio_stream.streaming.connection import KafkaConnection
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent


class ReplayLLM:
    """Answers each prompt with what the real engine answered for it earlier (no model time); a prompt it never
    saw gets ``scripted_answer``, when ``script`` is set."""

    def __init__(self, inner: Any, answers: dict[str, str | None], *, script: bool = False) -> None:
        self.inner = inner
        self.answers = answers
        self.script = script
        self.model_name = inner.model_name

    def generate(self, prompts: Sequence[Any], sampling: Mapping[str, Any], *, seed=None, desc=None):
        out = [self.answers.get(self.inner.prompt_text(p)) for p in prompts]
        return [a if a is not None or not self.script else scripted_answer(p) for a, p in zip(out, prompts)]

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def close(self) -> None:
        pass


class RecordingLLM(ReplayLLM):
    def generate(self, prompts, sampling, *, seed=None, desc=None):
        out = self.inner.generate(prompts, sampling, seed=seed, desc=desc)
        for p, t in zip(prompts, out):
            self.answers[self.inner.prompt_text(p)] = t
        return out


def scripted_answer(prompt: Any) -> str:
    """An answer of the size a facet answer has, made of the words of the prompt's conversation, so two
    conversations' answers differ as real ones do; a constrained prompt gets its first choice."""
    if prompt.choices:
        return prompt.choices[0]
    text = re.sub(r"</?(user|assistant)>", " ", prompt.values.get("conversation", ""))
    words = re.findall(r"[A-Za-z']+", text)
    return " ".join(words[:14]) or "help"


def worker_embedding_calls(batches: Sequence[Sequence[Mapping[str, str | None]]], facets: Sequence[Any]
                           ) -> list[list[str]]:
    """The texts the worker's embedder is given for each polled batch (its facet values, facet name -> value,
    per conversation): the hierarchy facets' values as ``embedding_text`` makes them (the prefill the stored
    sentence starts with stripped), each distinct text once: once per batch (``consumers.processing.embed_values``)
    and once at all (the worker's ``CachedEmbedder`` remembers the texts of earlier batches)."""
    from clio_stream.embedding import embedding_text

    seen: set[str] = set()
    calls: list[list[str]] = []
    for batch in batches:
        texts = [t for t in dict.fromkeys(embedding_text(f, v[f.name]) for f in facets if f.has_hierarchy
                                          for v in batch if v.get(f.name)) if t not in seen]
        seen.update(texts)
        calls.append(texts)
    return calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16, help="records per poll (max_poll_records)")
    ap.add_argument("--in-flight", type=int, default=3, help="batches in flight (max_in_flight_batches)")
    ap.add_argument("--replay-n", type=int, default=480,
                    help="conversations through the non-LLM path (the first --n with the LLM's recorded answers)")
    ap.add_argument("--embedding-model", default="all-MiniLM-L6-v2")
    ap.add_argument("--facet-layout", choices=("per_facet", "shared"), default="per_facet",
                    help="the workers' facet_layout (the raw runs send the same prompts)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()

    from benchmarks.common import load_average, quiet_logs, report, salted

    load_before = load_average()

    quiet_logs()
    from clio_stream.batch_input import load_shared_dataset

    from clio_stream.stages.prepare import prepare_conversations, truncate_conversation
    from clio_stream.embedding import make_embedder
    from clio_stream.stages.extract import build_prompts
    from clio_stream.domain.facets import main_facets
    from clio_stream.streaming.kafka_io import ensure_topics, make_producer
    from clio_stream.llm import make_llm
    from clio_stream.llm.base import sampling_for
    from clio_stream.streaming.wire_format import encode_message
    from clio_stream.llm.prompts import FACET_CONVERSATION
    from clio_stream.devstack.processes import free_port, start_broker, start_qdrant
    from clio_stream.settings import ClioSettings
    from clio_stream.storage.store import QdrantStore
    from consumers.worker import ConsumerWorker

    records = load_shared_dataset("banking77", args.data_root, n=max(args.n, args.replay_n) * 3)
    prepared, _ = prepare_conversations(records)
    convs, replayed = prepared[: args.n], prepared[: max(args.n, args.replay_n)]
    tmp = Path(tempfile.mkdtemp(prefix="clio-bench-"))
    kport, qport, gport = free_port(), free_port(), free_port()
    broker = start_broker(port=kport, log_dir=tmp)
    qdrant = start_qdrant(http_port=qport, grpc_port=gport, storage_dir=tmp / "q", log_dir=tmp)
    rows: list[tuple[str, Any, str]] = []
    try:
        base = dict(kafka_bootstrap=f"127.0.0.1:{kport}", qdrant_url=f"http://127.0.0.1:{qport}",
                    qdrant_grpc_port=gport, embedding_model=args.embedding_model, show_progress=False,
                    max_poll_records=args.batch, max_in_flight_batches=args.in_flight,
                    facet_layout=args.facet_layout)
        settings = ClioSettings(**base, topic="bench.a", consumer_group="bench-a", deltas_topic="bench.a.deltas")
        ensure_topics(KafkaConnection.from_settings(settings), {"bench.a": 1, "bench.b": 1, "bench.c": 1})
        producer = make_producer(KafkaConnection.from_settings(settings))
        for topic, sent in (("bench.a", convs), ("bench.b", replayed), ("bench.c", replayed)):
            for c in sent:
                producer.send(topic, key=c.id.encode(), value=encode_message(
                    {"id": c.id, "user_id": "u", "conversation": [m.model_dump() for m in c.messages]}))
        producer.flush()

        engine = make_llm(settings)
        embedder = make_embedder(settings)
        recorder = RecordingLLM(engine, {})

        def drain(worker: ConsumerWorker, n: int) -> float:
            """Seconds the worker had batches in flight (first launch to last commit, the group join and idle
            polls excluded: ``WorkerMetrics.busy_seconds``) to store ``n`` conversations."""
            worker.start()
            done = 0
            while done < n:
                done += worker.run_once(5000)
            return worker.metrics.busy_seconds

        # 1. the whole worker, real LLM, between two raw runs of the same prompts (the machine's load drifts;
        # each raw run's conversations carry a salt of their own, so no run reads another's prefix cache).
        trunc = [truncate_conversation(c, settings.max_conversation_tokens, engine.count_tokens)[0] for c in convs]
        sampling = sampling_for(FACET_CONVERSATION, settings.llm_sampling_args)

        def raw_run(salt: str) -> float:
            texts = [engine.prompt_text(p) for p in build_prompts(salted(trunc, salt), main_facets,
                                                                  layout=settings.facet_layout)]
            t0 = time.perf_counter()
            engine.generate_raw(texts, sampling)
            return time.perf_counter() - t0

        raw_before = raw_run("raw-1")
        w1 = ConsumerWorker(settings, main_facets, llm=recorder, embedder=embedder,
                            store=QdrantStore.from_settings(settings))
        cache_before = engine.prefix_cache_stats
        whole = drain(w1, len(convs))
        cache_after = engine.prefix_cache_stats
        w1.close()
        prompt_tokens = cache_after[0] - cache_before[0]
        cached_share = (cache_after[1] - cache_before[1]) / prompt_tokens if prompt_tokens else float("nan")
        raw_after = raw_run("raw-2")
        raw_llm = (raw_before + raw_after) / 2
        texts = [engine.prompt_text(p) for p in build_prompts(trunc, main_facets, layout=settings.facet_layout)]

        def replay_worker(leg: str, facets: Sequence[Any]) -> tuple[Any, ConsumerWorker]:
            """A worker on leg ``leg``'s own topic, group and store prefix, answering with the replayed LLM."""
            leg_settings = settings.with_overrides(topic=f"bench.{leg}", consumer_group=f"bench-{leg}",
                                                   deltas_topic=f"bench.{leg}.deltas", qdrant_prefix=f"bench{leg}")
            replay = ReplayLLM(engine, recorder.answers, script=True)
            return leg_settings, ConsumerWorker(leg_settings, facets, llm=replay, embedder=embedder,
                                                store=QdrantStore.from_settings(leg_settings))

        # 2. the non-LLM path: replayed answers, everything else real, fresh topic and store prefix
        s2, w2 = replay_worker("b", main_facets)
        non_llm = drain(w2, len(replayed))
        store2 = QdrantStore.from_settings(s2)
        # The texts the worker embedded: each hierarchy facet's value as ``embedding_text`` makes it (the prefill
        # the stored sentence starts with stripped), the distinct ones of each polled batch, one encode call per
        # batch: the worker's own calls, so the ratio measures what is not embedding.
        stored = [{f.name: ((got.get("facets") or {}).get(f.name) or {}).get("value") for f in main_facets}
                  for got in (store2.points.get_conversation(c.id) or {} for c in replayed)]
        per_batch = worker_embedding_calls([stored[lo: lo + args.batch] for lo in range(0, len(stored), args.batch)],
                                           main_facets)
        stored_values = [v[f.name] for v in stored for f in main_facets if f.has_hierarchy and v[f.name]]
        w2.close()

        # 3. the same without the computed facets (the Language identifier): the path as the issue lists it
        # (decode, embed, upsert, assign, commit), so the identifier's share is the difference to leg 2.
        _, w3 = replay_worker("c", [f for f in main_facets if f.compute is None])
        non_llm_uncomputed = drain(w3, len(replayed))
        w3.close()

        def timed(fn: Any) -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        # Median of three: one pass is well under a second, short enough for a neighbour's burst to decide it.
        raw_embed = statistics.median(timed(lambda: [embedder.encode(t) for t in per_batch if t]) for _ in range(3))
        # What this row measured before (the stored sentences, prefill included, all in one call), for reference.
        raw_embed_old = statistics.median(timed(lambda: embedder.encode(stored_values)) for _ in range(3))

        rows = [
            ("conversations", len(convs), f"x {len(main_facets)} facets ({len(texts)} LLM prompts)"),
            ("records per batch / batches in flight", f"{args.batch} / {args.in_flight}", ""),
            ("worker, real LLM", len(convs) / whole, "conversations/s"),
            ("worker prompt tokens served by the prefix cache", cached_share, "share"),
            ("raw vLLM generate, same prompts (before / after the worker)",
             f"{len(convs) / raw_before:.3f} / {len(convs) / raw_after:.3f}", "conversations/s"),
            ("raw vLLM generate, mean of the two", len(convs) / raw_llm, "conversations/s"),
            ("ratio worker / raw LLM", raw_llm / whole, "target >= 0.9"),
            ("worker, replayed LLM (non-LLM path)", len(replayed) / non_llm,
             f"conversations/s ({len(replayed)}, the first {len(convs)} with recorded answers)"),
            ("raw embedding of the same texts, the worker's calls (distinct texts per polled batch)",
             len(replayed) / raw_embed, "conversations/s"),
            ("raw embedding of the stored sentences (prefill included) in one call, before 2026-12-05",
             len(replayed) / raw_embed_old, "conversations/s"),
            ("ratio non-LLM path / raw embedding", raw_embed / non_llm, "target >= 0.9"),
            ("worker, replayed LLM, without the computed Language facet", len(replayed) / non_llm_uncomputed,
             "conversations/s (decode, embed, upsert, assign, commit)"),
            ("ratio of that / raw embedding", raw_embed / non_llm_uncomputed, ""),
            ("consumer peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB"),
        ]
        report("stream", rows, {"load_average_before": load_before, "args": vars(args)})
        producer.close()  # before the broker stops, or its network thread logs connection errors
        engine.close()
    finally:
        broker.stop()
        qdrant.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
