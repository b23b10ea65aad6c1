"""``benchmarks.stream`` compares the worker's non-LLM path with raw embedding of exactly the texts the worker embeds."""

from __future__ import annotations

import numpy as np

from benchmarks.stream import worker_embedding_calls
from clio_stream.domain.facets import CONCERNING, REQUEST, TASK
from clio_stream.embedding import CachedEmbedder
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from clio_stream.streaming.wire_format import encode_message
from consumers.decoding import Record
from consumers.processing import process_batch
from tests.unit.fakes import HashEmbedder, ScriptedLLM


class RecordingEmbedder(HashEmbedder):
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts, *, desc=None) -> np.ndarray:
        self.calls.append(list(texts))
        return super().encode(texts, desc=desc)


def script(name, values, rng):
    if "scale of 1 to 5" in values["question"]:
        return "2"
    words = values["conversation"].split()
    # Request and Task of a conversation answer alike for some conversations (a text shared by two facets).
    return f" get help with {words[3]} {words[4]}.</answer>"


def test_the_raw_embedding_texts_are_the_worker_s_embed_calls() -> None:
    facets = [REQUEST, TASK, CONCERNING]
    settings = ClioSettings(user_id_hash_key="k", show_progress=False)
    store = QdrantStore(":memory:")
    store.ensure_collections(HashEmbedder.dim)
    inner = RecordingEmbedder()
    embedder = CachedEmbedder(inner)
    topics = ["card", "loan", "card", "fee", "loan", "pin"]  # repeats within a batch and across batches
    convs = [{"id": f"c{i}", "user_id": "u", "conversation": [
        {"role": "user", "content": f"user: my {t} broke today {i % 2}, what now?"},
        {"role": "assistant", "content": "Let me help."}]} for i, t in enumerate(topics)]
    stored = []
    for lo in (0, 3):
        recs = [Record("t", 0, lo + i, None, encode_message(c)) for i, c in enumerate(convs[lo:lo + 3])]
        outcome = process_batch(recs, facets=facets, llm=ScriptedLLM(script), embedder=embedder, store=store.points,
                                models={}, settings=settings)
        by_conv: dict[str, dict[str, str | None]] = {}
        for p in outcome.facet_points:
            by_conv.setdefault(p.conversation_id, {})[p.facet] = p.value
        stored.append([by_conv[c["id"]] for c in convs[lo:lo + 3]])
    assert all(v["Request"].startswith(REQUEST.prefill.strip()) for b in stored for v in b)  # stored whole
    assert worker_embedding_calls(stored, facets) == inner.calls
    store.close()


def test_scripted_answers_differ_per_conversation_and_constrained_prompts_get_a_choice() -> None:
    """The non-LLM leg's conversations the LLM never saw get answers of their own words: two conversations must
    not share one answer (the worker would embed it once and the leg would measure the cache)."""
    from benchmarks.stream import scripted_answer
    from clio_stream.domain.conversation import Conversation, Message
    from clio_stream.stages.extract import build_prompts

    convs = [Conversation(id=str(i), messages=[Message(role="user", content=text)])
             for i, text in enumerate(["My card has not arrived yet", "How do I reset my banking password?"])]
    prompts = build_prompts(convs, [REQUEST, CONCERNING])
    answers = [scripted_answer(p) for p in prompts]
    assert answers[0] != answers[2] and "card" in answers[0] and "password" in answers[2]
    assert answers[1] in prompts[1].choices and answers[3] in prompts[3].choices
