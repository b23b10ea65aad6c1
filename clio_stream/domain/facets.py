"""Facets: the questions Clio asks about every conversation.

A facet with ``summary_criteria`` gets a cluster hierarchy; one without gets
values only. A numeric facet's answers are parsed to integers in its range and
summarised per cluster of the other facets (e.g. mean "Concerning" score).
A facet with ``compute`` is answered by that function, not the LLM (the paper's
computed facets); it is stored, filtered and shown like any other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Tuple

from clio_stream.stages.language import conversation_language

# A custom prompt builder: given the facet and one data item, return the text the
# model should read (used instead of rendering a conversation). Generic,
# non-conversation facets use this.
FacetPromptFn = Callable[["Facet", Any], str]
# A computed facet: the value for one conversation (``types.Conversation``), None when there is none.
FacetComputeFn = Callable[[Any], Optional[str]]


@dataclass(frozen=True)
class Facet:
    name: str
    question: str
    prefill: str = ""
    summary_criteria: Optional[str] = None
    numeric: Optional[Tuple[int, int]] = None
    get_facet_prompt: Optional[FacetPromptFn] = None
    # Worked examples shown before the conversation: (user's message, answer after the prefill).
    # A 135M model imitates a pattern far better than it follows a description of one.
    examples: Tuple[Tuple[str, str], ...] = ()
    max_tokens: int = 32  # the answer's length cap: a few words, not a paragraph of filler
    compute: Optional[FacetComputeFn] = None
    # Decoding temperature of the answers; None = the run's llm_sampling_args. 0 (greedy) for the built-in
    # text facets: one sampled answer of a small model varies a lot from run to run, its most likely answer
    # less, and retrieved its own conversation more often (docs/evaluation.md).
    temperature: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ValueError("a facet needs a name")
        if self.numeric is not None:
            lo, hi = self.numeric
            if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi):
                raise ValueError(f"facet {self.name!r}: numeric must be (min, max) integers with min < max")
            if self.summary_criteria is not None:
                raise ValueError(f"facet {self.name!r}: a numeric facet cannot also have summary criteria")

    @property
    def has_hierarchy(self) -> bool:
        return self.summary_criteria is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["get_facet_prompt"] = None if self.get_facet_prompt is None else getattr(
            self.get_facet_prompt, "__qualname__", "custom"
        )
        d["numeric"] = list(self.numeric) if self.numeric else None
        d["examples"] = [list(e) for e in self.examples]
        d["compute"] = None if self.compute is None else getattr(self.compute, "__qualname__", "custom")
        return d

    # seed-compatible attribute names
    @property
    def summaryCriteria(self) -> Optional[str]:  # noqa: N802
        return self.summary_criteria

    @property
    def getFacetPrompt(self) -> Optional[FacetPromptFn]:  # noqa: N802
        return self.get_facet_prompt


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


def _render_generic(facet: Facet, item: Any) -> str:
    """Generic data is shown to the model as plain text."""
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
        get_facet_prompt=_render_generic,
    ),
]

# Seed-compatible aliases.
mainFacets = main_facets
genericSummaryFacets = generic_summary_facets
