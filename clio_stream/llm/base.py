"""The one interface every LLM back-end implements, and the retry loop around it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

from clio_stream.llm.prompts import PromptTemplate

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Prompt:
    """A template plus the values for its placeholders (user turn and prefill alike).

    ``choices``, when set, constrains the answer to exactly one of these strings
    (vLLM structured outputs), so ratings and picks always parse, even from a
    tiny model. ``max_tokens``, when set, caps this prompt's answer below the
    sampling's cap (prompts of one batch can have different caps; see ``prompt_sampling``).
    A raw template's prompt (``PromptTemplate.raw``) stops only at its own stop strings: the
    batch's were written for clio-stream's templates, not for a prompt someone else wrote.
    ``temperature``, when set, replaces the sampling's on the first ask (0 = greedy: the
    model's most likely answer); ``ask`` re-asks an unparseable answer at the sampling's
    temperature, since a greedy re-ask would only repeat it.
    """

    template: PromptTemplate
    values: Mapping[str, str]
    choices: tuple[str, ...] | None = None
    max_tokens: int | None = None
    temperature: float | None = None


def prompt_sampling(prompt: Prompt, sampling: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling arguments for one prompt: the batch's, with the prompt's own token cap if lower and its temperature."""
    out = dict(sampling)
    if prompt.max_tokens is not None:
        out["max_tokens"] = min(int(out.get("max_tokens", prompt.max_tokens)), prompt.max_tokens)
    if prompt.template.raw:
        out["stop"] = list(prompt.template.stop)
    if prompt.temperature is not None:
        out["temperature"] = prompt.temperature
    return out


@runtime_checkable
class LLMBackend(Protocol):
    """Batch text generation with chat templates and a prefilled assistant turn.

    ``generate`` returns, for each prompt, only the continuation after the prefill.
    Failures are exceptions that say whose fault they are: :class:`RequestsFailed`
    when the back-end could not answer (down, overloaded: ask again later) and
    :class:`PromptsRejected` when it refused particular prompts for good (too long,
    malformed: asking again cannot help). ``count_tokens`` counts with the model's
    own tokenizer, or returns an upper bound when it cannot.
    """

    model_name: str

    def generate(
        self, prompts: Sequence[Prompt], sampling: Mapping[str, Any], *, seed: int | None = None, desc: str | None = None
    ) -> list[str | None]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


@dataclass
class AskStats:
    """Counts of what happened to the prompts of one ``ask`` call, for the run's stats."""

    prompts: int = 0
    generations: int = 0
    retried: int = 0
    unparseable: int = 0
    rejected: int = 0
    by_template: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, other: "AskStats") -> None:
        self.prompts += other.prompts
        self.generations += other.generations
        self.retried += other.retried
        self.unparseable += other.unparseable
        self.rejected += other.rejected
        for name, counts in other.by_template.items():
            mine = self.by_template.setdefault(name, {"prompts": 0, "unparseable": 0})
            for k, v in counts.items():
                mine[k] = mine.get(k, 0) + v


class RequestsFailed(RuntimeError):
    """Some requests of one ``generate`` call got no answer: the server failed them even after its retries.

    Not the same as an answer that does not parse: a streaming worker must retry the whole batch later
    (storing a missing value would lose data), while a batch run may re-ask just those prompts.
    ``answers`` holds what did come back, None where a request failed.
    """

    def __init__(self, failed: int, answers: list[str | None]) -> None:
        super().__init__(f"{failed} of {len(answers)} LLM requests failed")
        self.failed = failed
        self.answers = answers


class PromptsRejected(RuntimeError):
    """The back-end refused some prompts of one ``generate`` call for good (too long for the model, invalid).

    Unlike :class:`RequestsFailed` this is about the prompts, not the back-end: the same prompt will be
    refused again, so a streaming worker dead-letters the record it came from and moves on, and a batch
    run leaves the value missing. ``rejected`` maps a prompt's index to the reason; ``answers`` holds the
    other prompts' answers (None at the rejected indices).
    """

    def __init__(self, rejected: Mapping[int, str], answers: list[str | None]) -> None:
        first = next(iter(rejected.values()), "")
        super().__init__(f"{len(rejected)} of {len(answers)} prompts rejected by the LLM: {first}"[:500])
        self.rejected = dict(rejected)
        self.answers = answers


def ask(
    llm: LLMBackend,
    prompts: Sequence[Prompt],
    parse: Callable[[str | None, int], T | None],
    sampling: Mapping[str, Any],
    *,
    retries: int,
    seed: int,
    batch_size: int = 1000,
    desc: str | None = None,
    stats: AskStats | None = None,
) -> list[T | None]:
    """Generate for every prompt, parse, and re-ask the ones that did not parse.

    ``parse(text, index)`` gets the continuation and the prompt's index. Re-asks use
    a different seed so a sampled model can answer differently; after ``retries``
    the answer stays None and is counted as unparseable. A prompt the back-end
    rejected (:class:`PromptsRejected`) is not asked again: it stays None and is
    counted as rejected.
    """
    results: list[T | None] = [None] * len(prompts)
    pending = list(range(len(prompts)))
    local = AskStats(prompts=len(prompts))
    last_texts: dict[int, str | None] = {}
    refused: set[int] = set()
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            local.retried += len(pending)
            log.info("%s: re-asking %d unparseable answers (attempt %d)", desc or "llm", len(pending), attempt + 1)
        still: list[int] = []
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            try:
                asked = [prompts[i] if attempt == 0 else replace(prompts[i], temperature=None) for i in chunk]
                texts = llm.generate(asked, sampling, seed=seed + 7919 * attempt, desc=desc if attempt == 0 else None)
            except RequestsFailed as exc:  # a batch run tolerates gaps: re-ask those prompts like unparseable ones
                log.warning("%s: %s", desc or "llm", exc)
                texts = exc.answers
            except PromptsRejected as exc:  # asking again cannot help: leave those values missing
                log.warning("%s: %s", desc or "llm", exc)
                texts = exc.answers
                refused.update(chunk[j] for j in exc.rejected)
            local.generations += len(chunk)
            for i, text in zip(chunk, texts):
                if i in refused:
                    continue
                last_texts[i] = text
                value = parse(text, i)
                if value is None:
                    still.append(i)
                else:
                    results[i] = value
        pending = still
    local.unparseable = len(pending)
    local.rejected = len(refused)
    for p in prompts:
        counts = local.by_template.setdefault(p.template.name, {"prompts": 0, "unparseable": 0})
        counts["prompts"] += 1
    for i in pending:
        local.by_template[prompts[i].template.name]["unparseable"] += 1
    for i in refused:
        counts = local.by_template[prompts[i].template.name]
        counts["rejected"] = counts.get("rejected", 0) + 1
    if pending:
        log.warning("%s: %d of %d answers stayed unparseable", desc or "llm", len(pending), len(prompts))
        # Model output can quote user data: only at debug level, and only a few.
        for i in pending[:3]:
            log.debug("unparseable %s answer: %r", prompts[i].template.name, (last_texts.get(i) or "")[:200])
    if stats is not None:
        stats.add(local)
    return results


def sampling_for(template: PromptTemplate, base: Mapping[str, Any]) -> dict[str, Any]:
    """The run's sampling settings with the template's stop strings and token cap."""
    out = dict(base)
    if template.max_tokens is not None:
        out["max_tokens"] = min(int(out.get("max_tokens", template.max_tokens)), template.max_tokens)
    stops = list(out.get("stop") or [])
    out["stop"] = stops + [s for s in template.stop if s not in stops]
    return out
