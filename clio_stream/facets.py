"""Facets: the questions Clio asks about every conversation.

A facet with ``summary_criteria`` gets a cluster hierarchy; one without gets
values only. A numeric facet's answers are parsed to integers in its range and
summarised per cluster of the other facets (e.g. mean "Concerning" score).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Tuple

# A custom prompt builder: given the facet and one data item, return the text the
# model should read (used instead of rendering a conversation). Generic,
# non-conversation facets use this.
FacetPromptFn = Callable[["Facet", Any], str]


@dataclass(frozen=True)
class Facet:
    name: str
    question: str
    prefill: str = ""
    summary_criteria: Optional[str] = None
    numeric: Optional[Tuple[int, int]] = None
    get_facet_prompt: Optional[FacetPromptFn] = None

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
        return d

    # seed-compatible attribute names
    @property
    def summaryCriteria(self) -> Optional[str]:  # noqa: N802
        return self.summary_criteria

    @property
    def getFacetPrompt(self) -> Optional[FacetPromptFn]:  # noqa: N802
        return self.get_facet_prompt


# The question texts and prefills below are the seed's (they follow the Clio paper's appendix);
# the summary criteria are ours.
REQUEST = Facet(
    name="Request",
    question="What is the user's overall request for the assistant?",
    prefill="The user's overall request for the assistant is to",
    summary_criteria=(
        "The cluster name should be an imperative sentence that states what the users asked for, "
        "for example 'Plan a budget for a small wedding' or 'Debug a failing database migration'."
    ),
)

LANGUAGE = Facet(
    name="Language",
    question=(
        "What are the main languages of the conversation? Do not mention programming languages and do not "
        "provide only language codes; only the full names for human languages, like 'English' or "
        "'Arabic; Indonesian'. Do not include language families (just provide the general language, e.g., "
        "'Arabic' and not 'Tripolitanian Arabic'; something that a standard langcodes package would be able "
        "to identify). Only consider languages in or after the human's first request. Output each language "
        "as a single full word with no other commentary."
    ),
)

TASK = Facet(
    name="Task",
    question="What task is the model being asked to perform in this conversation?",
    prefill="The task is to",
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
