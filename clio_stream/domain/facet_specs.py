"""Facets as data: the operator's own facets written in the TOML settings, and the computed sources they may use.

A ``FacetSpec`` is what ``[[custom_facets]]`` in ``clio-stream.toml`` (or ``CLIO_CUSTOM_FACETS`` as JSON) holds;
``to_facet`` turns it into the same ``Facet`` the main facets are, so every command (batch, consume, recluster,
scheduler, up) and everything downstream of them (the store, the API, the dashboard) treats it like one::

    [[custom_facets]]
    name = "Sentiment"
    question = "How does the user feel about the assistant's help? Answer in a few words."
    prefill = "The user feels"
    summary_criteria = "The cluster name should name the users' shared feeling, e.g. 'Grateful for quick fixes'."

    [[custom_facets]]
    name = "Turns"
    source = "turns"          # computed, no LLM call: turns | characters | words | language | metadata.<key>
    numeric = [1, 20]         # numeric: values are clamped into the range and summarised per cluster
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from clio_stream.domain.facets import Facet, main_facets

if TYPE_CHECKING:
    from clio_stream.settings import ClioSettings

SOURCES = ("llm", "turns", "characters", "words", "language")
METADATA_PREFIX = "metadata."


def _language_identifier() -> Any:
    """The Language facet's identifier, imported on first use (lingua is heavy; most sources never need it)."""
    from clio_stream.stages.language import conversation_language

    return conversation_language


@dataclass(frozen=True)
class ComputedSource:
    """A facet value computed from the conversation itself (no LLM call): a count, the language, a metadata field.

    Numbers come out as decimal strings; a numeric facet parses and clamps them into its range.
    """

    kind: str  # one of SOURCES except "llm", or "metadata"
    key: str = ""  # the metadata field, for kind "metadata"

    @property
    def label(self) -> str:
        """The source as written in the settings (what ``Facet.to_dict`` records)."""
        return f"{METADATA_PREFIX}{self.key}" if self.kind == "metadata" else self.kind

    def __call__(self, conversation: Any) -> Optional[str]:
        (value,) = self.many([conversation])
        return value

    def many(self, conversations: Sequence[Any]) -> list[Optional[str]]:
        """Values for a batch (``domain.facets.BatchCompute``): the language in one detector call."""
        if self.kind == "language":
            return _language_identifier().many(conversations)
        return [self._counted_or_metadata(c) for c in conversations]

    def warm(self) -> None:
        if self.kind == "language":
            _language_identifier().warm()

    def _counted_or_metadata(self, conversation: Any) -> Optional[str]:
        messages = conversation.messages
        if self.kind == "turns":
            return str(len(messages))
        if self.kind == "characters":
            return str(sum(len(m.content) for m in messages))
        if self.kind == "words":
            return str(sum(len(m.content.split()) for m in messages))
        value = (conversation.metadata or {}).get(self.key)
        return None if value is None or value == "" else str(value)

    @classmethod
    def parse(cls, source: str) -> "ComputedSource":
        if source.startswith(METADATA_PREFIX) and len(source) > len(METADATA_PREFIX):
            return cls("metadata", source[len(METADATA_PREFIX):])
        if source in SOURCES and source != "llm":
            return cls(source)
        raise ValueError(f"unknown facet source {source!r}: use llm, turns, characters, words, language or "
                         f"{METADATA_PREFIX}<field>")


class FacetSpec(BaseModel):
    """One facet defined in the settings; see the module docstring for the TOML form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Shown in the dashboard and the API; unique among the facets.")
    question: str = Field("", description="What the LLM is asked about each conversation (source 'llm').")
    prefill: str = Field("", description="The start of the answer the model continues, e.g. 'The user feels'.")
    summary_criteria: str | None = Field(
        None, description="How a cluster of this facet should be named; without it the facet has values only.")
    numeric: tuple[int, int] | None = Field(
        None, description="(min, max): answers are integers in this range, summarised per cluster.")
    source: str = Field("llm", description="'llm', or computed: turns, characters, words, language, metadata.<key>.")
    examples: list[tuple[str, str]] = Field(
        default_factory=list, description="Worked examples (user message, answer after the prefill) for small models.")
    max_tokens: int = Field(32, ge=1, description="Longest answer the model may write.")
    temperature: float | None = Field(
        None, ge=0, description="Decoding temperature of the answers (0 = greedy); unset = the run's sampling.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: str) -> str:
        if v != "llm":
            ComputedSource.parse(v)
        return v

    @model_validator(mode="after")
    def _complete(self) -> "FacetSpec":
        self.to_facet()  # the Facet's own checks (a question for LLM facets, numeric ranges), with its messages
        return self

    def to_facet(self) -> Facet:
        compute = None if self.source == "llm" else ComputedSource.parse(self.source)
        return Facet(name=self.name, question=self.question, prefill=self.prefill,
                     summary_criteria=self.summary_criteria, numeric=self.numeric, examples=self.examples,
                     max_tokens=self.max_tokens, compute=compute, temperature=self.temperature)


def configured_facets(settings: "ClioSettings", names: str | Sequence[str] | None = None) -> list[Facet]:
    """The facets a command runs with: ``names`` (a list or comma-separated, e.g. ``--facets``), else the
    settings' ``facets``, else every main and custom facet, in that order. Names match case-insensitively.

    The one place every command (batch, consume, recluster, scheduler, bootstrap-clusters, up's children) picks
    its facets, so a facet added to the settings reaches all of them alike.
    """
    catalogue = list(main_facets)
    taken = {f.name.lower() for f in catalogue}
    for spec in settings.custom_facets:
        if spec.name.lower() in taken:
            raise ValueError(f"custom facet {spec.name!r} has the name of a main facet; choose another name")
        taken.add(spec.name.lower())
        catalogue.append(spec.to_facet())
    wanted = names if names is not None else settings.facets
    if isinstance(wanted, str):
        wanted = [n for n in wanted.split(",")]
    wanted = [n.strip() for n in wanted or [] if n.strip()]
    if not wanted:
        return catalogue
    by_name = {f.name.lower(): f for f in catalogue}
    unknown = [n for n in wanted if n.lower() not in by_name]
    if unknown:
        raise ValueError(f"unknown facet(s) {unknown}: choose from {[f.name for f in catalogue]}")
    chosen = list(dict.fromkeys(n.lower() for n in wanted))
    return [by_name[n] for n in chosen]
