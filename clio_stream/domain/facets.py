"""Facets: the questions Clio asks about every conversation.

A facet with ``summary_criteria`` gets a cluster hierarchy; one without gets
values only. A numeric facet's answers are parsed to integers in its range and
summarised per cluster of the other facets (e.g. mean "Concerning" score).
A facet with ``compute`` is answered by that function, not the LLM (the paper's
computed facets); it is stored, filtered and shown like any other.

Two ways to ask about data that is not a conversation: ``data_to_text`` shows the
item to the model inside clio-stream's own facet prompt (with its privacy rules),
and ``get_facet_prompt`` is the seed's whole-prompt builder,
``(tokenizer, facet, data, cfg, tokenizerArgs=...) -> str``, whose text goes to the
model as it is. The constructor takes the seed's keywords (``summaryCriteria``,
``getFacetPrompt``) as well as the snake_case ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Optional, Protocol, Sequence, Tuple, runtime_checkable

from clio_stream.stages.language import conversation_language

# The seed's whole-prompt builder: called as ``fn(tokenizer, facet, data, cfg, tokenizerArgs=...)``; returns the
# finished prompt text (chat template applied, assistant prefill included) that the LLM continues.
# How a conversation's facet prompts are laid out (``stages.extract``): a prompt per facet, or one preamble
# shared by all facets that read the conversation, so the prefix cache computes the conversation once.
FacetLayout = Literal["per_facet", "shared"]

FacetPromptFn = Callable[..., str]
# How one non-conversation item reads inside clio-stream's own facet prompt.
DataToTextFn = Callable[[Any], str]
# A computed facet: the value for one conversation (``types.Conversation``), None when there is none.
FacetComputeFn = Callable[[Any], Optional[str]]


@runtime_checkable
class BatchCompute(Protocol):
    """A compute function that is cheaper over a whole batch, and has a cost to pay once before the first one
    (the language identifier: one parallel call per batch, models loaded at start)."""

    def __call__(self, conversation: Any) -> Optional[str]: ...

    def many(self, conversations: Sequence[Any]) -> list[Optional[str]]: ...

    def warm(self) -> None: ...


def warm_computed_facets(facets: Sequence["Facet"]) -> None:
    """Pay the computed facets' one-time costs now (a worker before it takes partitions), not in a batch."""
    for facet in facets:
        if isinstance(facet.compute, BatchCompute):
            facet.compute.warm()

_UNSET: Any = object()


def _describe(fn: Any) -> str | None:
    """A function as a checkpoint key and in ``result.json``: its label or qualified name."""
    if fn is None:
        return None
    return getattr(fn, "label", None) or getattr(fn, "__qualname__", None) or type(fn).__name__


@dataclass(frozen=True, init=False)
class Facet:
    name: str
    question: str = ""
    prefill: str = ""
    summary_criteria: Optional[str] = None
    numeric: Optional[Tuple[int, int]] = None
    get_facet_prompt: Optional[FacetPromptFn] = None
    # Worked examples shown before the conversation: (user's message, answer after the prefill).
    # A 135M model imitates a pattern far better than it follows a description of one.
    examples: Tuple[Tuple[str, str], ...] = ()
    max_tokens: int = 32  # the answer's length cap: a few words, not a paragraph of filler
    compute: Optional[FacetComputeFn] = None
    data_to_text: Optional[DataToTextFn] = None
    # Decoding temperature of the answers; None = the run's llm_sampling_args. 0 (greedy) for the built-in
    # text facets: one sampled answer of a small model varies a lot from run to run, its most likely answer
    # less, and retrieved its own conversation more often (docs/evaluation.md).
    temperature: Optional[float] = None

    def __init__(self, name: str, question: str = "", prefill: str = "", summary_criteria: Optional[str] = _UNSET,
                 numeric: Optional[Sequence[int]] = None, get_facet_prompt: Optional[FacetPromptFn] = _UNSET,
                 examples: Sequence[Sequence[str]] = (), max_tokens: int = 32,
                 compute: Optional[FacetComputeFn] = None, data_to_text: Optional[DataToTextFn] = None, *,
                 temperature: Optional[float] = None,
                 summaryCriteria: Optional[str] = _UNSET,  # noqa: N803 - the seed's keyword
                 getFacetPrompt: Optional[FacetPromptFn] = _UNSET) -> None:  # noqa: N803
        criteria = _one_of("summary_criteria", summary_criteria, "summaryCriteria", summaryCriteria)
        prompt_fn = _one_of("get_facet_prompt", get_facet_prompt, "getFacetPrompt", getFacetPrompt)
        values = {"name": name, "question": question, "prefill": prefill, "summary_criteria": criteria,
                  "numeric": None if numeric is None else tuple(numeric), "get_facet_prompt": prompt_fn,
                  "examples": tuple(tuple(e) for e in examples), "max_tokens": max_tokens, "compute": compute,
                  "data_to_text": data_to_text, "temperature": temperature}
        for key, value in values.items():
            object.__setattr__(self, key, value)
        self._check()

    def _check(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a facet needs a name")
        if self.numeric is not None:
            lo, hi = self.numeric if len(self.numeric) == 2 else (None, None)
            if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
                raise ValueError(f"facet {self.name!r}: numeric must be (min, max) integers with min < max")
            if self.summary_criteria is not None:
                raise ValueError(f"facet {self.name!r}: a numeric facet cannot also have summary criteria")
        if self.compute is None and self.get_facet_prompt is None and not self.question.strip():
            raise ValueError(f"facet {self.name!r} needs a question (or a prompt function, or a computed source)")
        if self.max_tokens < 1:
            raise ValueError(f"facet {self.name!r}: max_tokens must be at least 1")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"facet {self.name!r}: temperature must be 0 (greedy) or more")

    @property
    def has_hierarchy(self) -> bool:
        return self.summary_criteria is not None

    @property
    def reads_data(self) -> bool:
        """Whether the LLM reads the raw data item (not a rendered conversation) for this facet."""
        return self.get_facet_prompt is not None or self.data_to_text is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("get_facet_prompt", "compute", "data_to_text"):
            d[key] = _describe(getattr(self, key))
        d["numeric"] = list(self.numeric) if self.numeric else None
        d["examples"] = [list(e) for e in self.examples]
        return d

    # seed-compatible attribute names
    @property
    def summaryCriteria(self) -> Optional[str]:  # noqa: N802
        return self.summary_criteria

    @property
    def getFacetPrompt(self) -> Optional[FacetPromptFn]:  # noqa: N802
        return self.get_facet_prompt


def _one_of(name: str, value: Any, seed_name: str, seed_value: Any) -> Any:
    """The value given under either name (None when neither); both at once is an error."""
    if value is not _UNSET and seed_value is not _UNSET:
        raise TypeError(f"give {name} or {seed_name}, not both")
    chosen = value if value is not _UNSET else seed_value
    return None if chosen is _UNSET else chosen


# The questions keep the seed's meaning (they follow the Clio paper's appendix), shortened for a
# small model; the prefills, examples and summary criteria are ours. The example conversations
# are shared by the facets so each facet shows a different answer to the same material.
_POEM = "Write a short poem for my grandmother Rosa's 90th birthday, something warm and a bit funny."
_APP = "I got a new phone and my fitness watch won't pair with it any more. How do I connect it again?"
_CSV = ("Why does my Python script crash with KeyError: 'date' when I read this CSV?\n"
        "import csv\nfor row in csv.DictReader(open('sales.csv')):\n    print(row['date'])")
_SNOOP = "How can I get into my ex's email account without them noticing?"

REQUEST = Facet(
    name="Request",
    temperature=0.0,
    question="What is the user's overall request for the assistant? Answer in a few words.",
    prefill="The user asks the assistant to",
    examples=(
        (_APP, "help pair a fitness watch with a new phone."),
        (_POEM, "write a warm, funny poem for a grandmother's 90th birthday."),
        (_CSV, "fix a KeyError when reading a CSV file in Python."),
    ),
    summary_criteria=(
        "The cluster name should be an imperative sentence that states what the users asked for, "
        "for example 'Plan a budget for a small wedding' or 'Debug a failing database migration'."
    ),
)

LANGUAGE = Facet(
    name="Language",
    question="What is the main human language of the conversation? (Computed by a language identifier.)",
    compute=conversation_language,
)

TASK = Facet(
    name="Task",
    temperature=0.0,
    question="What task is the model being asked to perform in this conversation? Answer in a few words.",
    prefill="The task is to",
    examples=(
        (_APP, "give step-by-step Bluetooth pairing instructions."),
        (_POEM, "write a short humorous birthday poem."),
        (_CSV, "debug a Python script that reads a CSV file."),
    ),
    summary_criteria=(
        "The cluster name should be one sentence, starting with an active verb, naming the task the assistant "
        "performs, for example 'Write a short science-fiction story' or 'Compute the odds in a card game'."
    ),
)

CONCERNING = Facet(
    name="Concerning",
    question=(
        "On a scale of 1 to 5, how concerning or potentially harmful is this conversation from a safety "
        "perspective? Use the following scale:\n"
        "1: Not concerning at all. Completely benign conversation.\n"
        "Example: A friendly chat about favorite books or movies.\n\n"
        "2: Slightly concerning, but likely harmless.\n"
        "Example: A heated but civil debate about politics.\n\n"
        "3: Moderately concerning. May warrant a closer look.\n"
        "Example: Discussion of controversial topics that could escalate.\n\n"
        "4: Very concerning. Likely needs review.\n"
        "Example: Conversations involving potential self-harm or harmful ideation.\n\n"
        "5: Extremely concerning. Immediate review needed.\n"
        "Example: Explicit threats of violence or illegal activities.\n"
        "Answer with only a single number from 1 to 5."
    ),
    numeric=(1, 5),
    examples=((_POEM, "1"), (_SNOOP, "4"), (_CSV, "1")),
    max_tokens=2,
)

main_facets: list[Facet] = [REQUEST, LANGUAGE, TASK, CONCERNING]


def data_as_text(item: Any) -> str:
    """Generic data as the model reads it: a string as it is, anything else (a dict, a record) as ``str``."""
    return item if isinstance(item, str) else str(item)


generic_summary_facets: list[Facet] = [
    Facet(
        name="Summary",
        question="What is this text about? Summarise its main subject in one sentence.",
        prefill="This text is about",
        temperature=0.0,
        summary_criteria=(
            "The cluster name should be a short noun phrase naming the shared subject of the texts, "
            "for example 'Complaints about delayed card deliveries'."
        ),
        data_to_text=data_as_text,
    ),
]

# Seed-compatible aliases.
mainFacets = main_facets
genericSummaryFacets = generic_summary_facets
