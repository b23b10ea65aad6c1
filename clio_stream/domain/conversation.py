"""A chat conversation as clio-stream reads it, and the facet values extracted from it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["user", "assistant", "system"]


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Role
    content: str


class Conversation(BaseModel):
    """A conversation as the pipeline sees it, after loading and validation."""

    model_config = ConfigDict(extra="ignore")

    id: str
    messages: list[Message]
    user_id: str | None = None
    timestamp: float | None = None
    metadata: dict = Field(default_factory=dict)


class FacetValue(BaseModel):
    """The answer the LLM gave for one facet of one conversation.

    ``value`` is None when every attempt failed to parse: an explicit missing
    value rather than a crash or a made-up answer.
    """

    facet: str
    value: str | None
    numeric: int | None = None


class ConversationFacets(BaseModel):
    """All facet values of one conversation."""

    conversation_id: str
    values: dict[str, FacetValue]

    @property
    def facetValues(self) -> list[FacetValue]:  # noqa: N802 - the seed's name (its ConversationFacetData)
        """The values in facet order, as the seed listed them (a seed site filter reads them so)."""
        return list(self.values.values())
