"""Stage: ask the LLM every facet question about every conversation (Clio's first privacy layer)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from clio_stream.domain.facets import BatchCompute, Facet, FacetLayout
from clio_stream.llm.base import AskStats, LLMBackend, Prompt, ask, sampling_for
from clio_stream.llm.parsing import parse_facet_answer, parse_int_in_range, parse_own_prompt_answer
from clio_stream.llm.prompts import (
    FACET_CONVERSATION,
    FACET_EXAMPLE,
    FACET_OWN_PROMPT,
    FACET_SHARED,
    FACET_SHARED_ANSWER,
    FACET_SHARED_EXAMPLE,
    FACET_SHARED_QUESTION,
    FACET_TEMPLATES,
    FACET_TEXT,
    NUMERIC_SUFFIX,
)
from clio_stream.settings import ClioSettings
from clio_stream.stages.echo import content_words, echoes_example
from clio_stream.stages.prepare import render_conversation
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue

log = logging.getLogger(__name__)


def examples_text(facet: Facet) -> str:
    """The facet's worked examples, each answer written out in full (prefill included) as the model should."""
    def full(answer: str) -> str:
        return f"{facet.prefill} {answer}".strip()

    return "".join(FACET_EXAMPLE.format(message=m, answer=full(a)) for m, a in facet.examples)


def _question(facet: Facet) -> str:
    return facet.question + (NUMERIC_SUFFIX if facet.numeric else "")


def facet_prompt(facet: Facet, conversation_text: str, *, with_examples: bool = True,
                 shared: SharedPreamble | None = None) -> Prompt:
    """The prompt for one facet of one conversation (or of one data item shown as text).

    With ``shared``, the prompt is the shared layout's: that preamble, the conversation, and this facet's
    label and prefill. ``with_examples=False`` leaves the worked examples out (and so the shared preamble, whose
    examples are its point): the last resort for a conversation whose answers kept copying one of them (see
    ``extract_facets``).
    """
    if shared is not None and with_examples:
        return Prompt(FACET_SHARED, {"questions": shared.questions, "examples": shared.examples,
                                     "conversation": conversation_text, "label": facet.name,
                                     "prefill": f" {facet.prefill}" if facet.prefill else ""},
                      choices=_choices(facet, lead=" "), max_tokens=facet.max_tokens, temperature=facet.temperature)
    template = FACET_TEXT if facet.data_to_text is not None else FACET_CONVERSATION
    return Prompt(template, {"conversation": conversation_text, "question": _question(facet), "prefill": facet.prefill,
                             "examples": examples_text(facet) if with_examples else ""}, choices=_choices(facet),
                  max_tokens=facet.max_tokens, temperature=facet.temperature)


def _choices(facet: Facet, lead: str = "") -> tuple[str, ...] | None:
    """A numeric facet's allowed answers; ``lead`` is what comes between the prefill and the number."""
    return tuple(f"{lead}{v}" for v in range(facet.numeric[0], facet.numeric[1] + 1)) if facet.numeric else None


@dataclass(frozen=True)
class SharedPreamble:
    """What every facet prompt of a conversation shares in the ``shared`` layout: all the questions, then the
    worked example conversations, each followed by every facet's answer to it.

    The facets' examples are keyed by their message, so a message that several facets use as an example is
    shown once with all their answers (the packaged facets share theirs). The same for every conversation, so
    the prefix cache holds it once; the conversation that follows is then shared by that conversation's facets.
    """

    questions: str
    examples: str

    @classmethod
    def of(cls, facets: Sequence[Facet]) -> SharedPreamble | None:
        """The preamble of the facets that read the rendered conversation; None when fewer than two do (no
        prefix to share)."""
        sharing = [f for f in facets if shares_the_conversation(f)]
        if len(sharing) < 2:
            return None
        answers: dict[str, list[str]] = {}
        for facet in sharing:
            for message, answer in facet.examples:
                full = f"{facet.prefill} {answer}".strip()
                answers.setdefault(message, []).append(FACET_SHARED_ANSWER.format(label=facet.name, answer=full))
        return cls(
            questions="".join(FACET_SHARED_QUESTION.format(label=f.name, question=_one_block(f.question))
                              for f in sharing).rstrip(),
            examples="".join(FACET_SHARED_EXAMPLE.format(message=m, answers="".join(a)) for m, a in answers.items()),
        )


def _one_block(question: str) -> str:
    """A question without blank lines, so the list of questions reads as one entry per label."""
    return "\n".join(line for line in question.splitlines() if line.strip())


def shares_the_conversation(facet: Facet) -> bool:
    """Whether the facet's prompt reads the rendered conversation through our template (not its own prompt
    function, not a data item shown as text): only those can share one preamble."""
    return facet.compute is None and facet.get_facet_prompt is None and facet.data_to_text is None


def seed_turns(conv: Conversation) -> list[dict[str, str]]:
    """A conversation in the seed's own format, as a seed prompt function expects it."""
    return [{"role": m.role, "content": m.content} for m in conv.messages]


def own_prompt(facet: Facet, data: Any, prompts_for: "PromptContext") -> Prompt:
    """The prompt a facet's own function wrote (the seed's ``getFacetPrompt``), called as the seed calls it."""
    assert facet.get_facet_prompt is not None
    text = facet.get_facet_prompt(prompts_for.tokenizer, facet, data, prompts_for.settings,
                                  tokenizerArgs=prompts_for.settings.tokenizer_args)
    if not isinstance(text, str):
        raise TypeError(f"facet {facet.name!r}: its prompt function returned {type(text).__name__}, not a string")
    return Prompt(FACET_OWN_PROMPT, {"text": text}, choices=_choices(facet), max_tokens=facet.max_tokens,
                  temperature=facet.temperature)


@dataclass(frozen=True)
class PromptContext:
    """What a facet's own prompt function is called with besides the data: the tokenizer and the settings."""

    tokenizer: Any
    settings: ClioSettings

    @classmethod
    def of(cls, llm: Any, settings: ClioSettings | None) -> "PromptContext":
        tokenizer = getattr(llm, "tokenizer", None)  # a capability: only back-ends with a chat template have it
        if tokenizer is None or settings is None:
            raise TypeError("a facet with its own prompt function (get_facet_prompt) needs an LLM back-end with a "
                            "tokenizer and the settings: pass settings= to extract_facets")
        return cls(tokenizer, settings)


def material_for(facet: Facet, conv: Conversation, raw: Any = None) -> str:
    """What the model reads for this facet: the rendered conversation, or the data item as the facet shows it."""
    if facet.data_to_text is not None and raw is not None:
        return facet.data_to_text(raw)
    return render_conversation(conv)


def facet_sampling(sampling: dict[str, Any]) -> dict[str, Any]:
    """The run's sampling with every facet template's stop strings (each ends an answer at its line or tag);
    each prompt carries its facet's own token cap (``Prompt.max_tokens``)."""
    for template in FACET_TEMPLATES:
        sampling = sampling_for(template, sampling)
    return sampling


def asked(facets: Sequence[Facet]) -> list[Facet]:
    """The facets the LLM answers (the others are computed)."""
    return [f for f in facets if f.compute is None]


def build_prompts(
    conversations: Sequence[Conversation], facets: Sequence[Facet], raw_items: Sequence[Any] | None = None,
    prompts_for: PromptContext | None = None, layout: FacetLayout = "per_facet",
) -> list[Prompt]:
    """Conversation-major order: a conversation's facet prompts sit next to each other; computed facets have none.

    ``raw_items`` (generic data) are the items facets that read data see; without them a facet's own prompt
    function gets the conversation in the seed's format. ``layout`` "shared" gives the facets that read the
    conversation one preamble (``SharedPreamble``).
    """
    facets = asked(facets)
    shared = SharedPreamble.of(facets) if layout == "shared" else None
    prompts: list[Prompt] = []
    for ci, conv in enumerate(conversations):
        raw = raw_items[ci] if raw_items is not None else None
        rendered: str | None = None
        for facet in facets:
            if facet.get_facet_prompt is not None:
                if prompts_for is None:
                    raise TypeError(f"facet {facet.name!r} has its own prompt function: build_prompts needs "
                                    "prompts_for (the tokenizer and settings it is called with)")
                prompts.append(own_prompt(facet, raw if raw is not None else seed_turns(conv), prompts_for))
            elif facet.data_to_text is not None and raw is not None:
                prompts.append(facet_prompt(facet, material_for(facet, conv, raw)))
            else:
                rendered = rendered if rendered is not None else render_conversation(conv)
                prompts.append(facet_prompt(facet, rendered, shared=shared if shares_the_conversation(facet) else None))
    return prompts


def computed_values(facet: Facet, convs: Sequence[Conversation]) -> list[FacetValue]:
    """A computed facet's values for a batch of conversations (missing where the function finds none); one
    call for the batch when the function has a batch form (``BatchCompute``).

    A numeric facet's value is an integer clamped into its range (a count above the range counts as its top).
    """
    compute = facet.compute
    assert compute is not None
    raw = compute.many(convs) if isinstance(compute, BatchCompute) else [compute(c) for c in convs]
    return [_computed_value(facet, value) for value in raw]


def _computed_value(facet: Facet, value: str | None) -> FacetValue:
    if value is None or value == "":
        return FacetValue(facet=facet.name, value=None)
    if facet.numeric is None:
        return FacetValue(facet=facet.name, value=str(value))
    try:
        number = int(float(value))
    except ValueError:
        return FacetValue(facet=facet.name, value=None)
    number = min(max(number, facet.numeric[0]), facet.numeric[1])
    return FacetValue(facet=facet.name, value=str(number), numeric=number)


def parse_facet(facet: Facet, text: str | None) -> FacetValue | None:
    """A parsed value for ``facet``, or None when the answer is unusable."""
    if facet.numeric is not None:
        lo, hi = facet.numeric
        number = parse_int_in_range(text, lo, hi)
        return None if number is None else FacetValue(facet=facet.name, value=str(number), numeric=number)
    value = parse_own_prompt_answer(text) if facet.get_facet_prompt is not None else \
        parse_facet_answer(text, facet.prefill)
    if value is None or (facet.prefill and value.strip() == facet.prefill.strip()):
        return None
    return FacetValue(facet=facet.name, value=value)


def source_text(conv: Conversation) -> str:
    """What an answer about ``conv`` may draw its words from: every turn (the user's and the assistant's)."""
    return "\n".join(m.content for m in conv.messages)


def waves(n_conversations: int, n_facets: int, group: int) -> list[tuple[int, int]]:
    """Conversation ranges ``[lo, hi)`` to send together.

    When all facets of a conversation are scheduled in the same engine step, each
    computes the shared prefix itself. Sending the first facet of a group of
    conversations, then the others, lets facets 2..n reuse the cached prefix; the
    group is sized so its prefixes fit in the KV cache at once.
    """
    if group <= 0 or n_facets <= 1:
        return [(0, n_conversations)] if n_conversations else []
    return [(lo, min(lo + group, n_conversations)) for lo in range(0, n_conversations, group)]


def extract_facets(
    conversations: Sequence[Conversation],
    facets: Sequence[Facet],
    llm: LLMBackend,
    *,
    sampling: dict[str, Any],
    retries: int,
    seed: int,
    batch_size: int,
    raw_items: Sequence[Any] | None = None,
    stats: AskStats | None = None,
    prefix_group: int = 0,
    settings: ClioSettings | None = None,
    layout: FacetLayout = "per_facet",
) -> list[ConversationFacets]:
    """Every facet of every conversation; unusable answers become explicit missing values.

    ``prefix_group`` > 0 sends conversations in groups of that size, each in two
    waves (see ``waves``); 0 sends everything at once. ``settings`` is what a facet's
    own prompt function receives as its config (needed only when a facet has one).
    ``layout`` is the settings' ``facet_layout``.
    """
    llm_facets = asked(facets)
    own = PromptContext.of(llm, settings) if any(f.get_facet_prompt is not None for f in llm_facets) else None
    prompts = build_prompts(conversations, llm_facets, raw_items, own, layout)
    nf = len(llm_facets)
    args = facet_sampling(sampling)

    source_words: dict[int, set[str]] = {}  # per conversation, computed once for all its facets and re-asks
    echoed: set[int] = set()  # prompts whose last answer copied a worked example

    def parse(text: str | None, i: int) -> FacetValue | None:
        facet = llm_facets[i % nf]
        value = parse_facet(facet, text)
        if value is None or value.numeric is not None or not facet.examples or facet.reads_data:
            return value
        ci = i // nf
        if ci not in source_words:
            source_words[ci] = content_words(source_text(conversations[ci]))
        if echoes_example(value.value or "", (a for _, a in facet.examples), source_words[ci]):
            echoed.add(i)
            return None  # a worked example copied, not this conversation described: ask again
        echoed.discard(i)
        return value

    answers: list[FacetValue | None] = [None] * len(prompts)
    for lo, hi in waves(len(conversations), nf, prefix_group) if nf else []:
        # Wave 1 prefills each conversation once (first facet); wave 2 asks the other
        # facets while those prefixes are still in vLLM's prefix cache.
        span = range(lo * nf, hi * nf)
        parts = ([i for i in span if i % nf == 0], [i for i in span if i % nf != 0]) if prefix_group > 0 \
            else (list(span),)
        for idx in parts:
            if not idx:
                continue
            got = ask(llm, [prompts[i] for i in idx], lambda t, j, idx=idx: parse(t, idx[j]), args,
                      retries=retries, seed=seed, batch_size=batch_size,
                      desc="facets" if lo == 0 and idx[0] % nf == 0 else None, stats=stats)
            for i, v in zip(idx, got):
                answers[i] = v
    copying = sorted(i for i in echoed if answers[i] is None)
    if copying:
        # The examples pulled the model away from this conversation every time: ask once more without them.
        # A plain answer about the conversation beats a missing value (the conversation would drop out of
        # the facet) and a copied one (a cluster named after the example).
        log.info("facets: %d answers kept copying a worked example; asking those without the examples",
                 len(copying))
        bare = [facet_prompt(llm_facets[i % nf], prompts[i].values["conversation"], with_examples=False)
                for i in copying]  # the text already rendered for the first ask
        asked_again = AskStats()
        got = ask(llm, bare, lambda t, j: parse_facet(llm_facets[copying[j] % nf], t), args, retries=retries,
                  seed=seed, batch_size=batch_size, stats=asked_again)
        for i, v in zip(copying, got):
            answers[i] = v
        if stats is not None:
            _count_as_retries(stats, asked_again, [prompts[i] for i, v in zip(copying, got) if v is not None])
    computed = {f.name: computed_values(f, conversations) for f in facets if f.compute is not None}
    out: list[ConversationFacets] = []
    for ci, conv in enumerate(conversations):
        values = {name: column[ci] for name, column in computed.items()}
        for fi, facet in enumerate(llm_facets):
            v = answers[ci * nf + fi]
            values[facet.name] = v if v is not None else FacetValue(facet=facet.name, value=None)
        values = {f.name: values[f.name] for f in facets}  # in the facets' order
        out.append(ConversationFacets(conversation_id=conv.id, values=values))
    return out


def _count_as_retries(stats: AskStats, asked_again: AskStats, rescued: Sequence[Prompt]) -> None:
    """Fold the examples-free asks into ``stats`` as retries of the prompts they stand for (not new prompts), and
    take the answers they rescued off the unparseable counts."""
    stats.generations += asked_again.generations
    stats.retried += asked_again.prompts + asked_again.retried
    stats.rejected += asked_again.rejected
    stats.unparseable -= len(rescued)
    for prompt in rescued:
        stats.by_template[prompt.template.name]["unparseable"] -= 1
