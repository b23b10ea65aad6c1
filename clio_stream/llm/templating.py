"""Fill prompt templates by plain replacement.

Applying a chat template is slow relative to string replacement, so each
template is rendered through the model's chat template once, with placeholders
left in, and every prompt is then made by replacing the placeholders (the
seed's ``doCachedReplacements`` idea). The replacement is a single pass, so a
value that itself contains ``{{placeholder}}`` text (say, a conversation that
quotes our template) is never substituted again: data cannot inject template
fields.

``chat_prompt`` is the same idea with the seed's calling convention, for facets
whose own prompt function builds the whole prompt: messages with ``{nameREPLACE}``
placeholders, rendered once per ``func_name``; ``doCachedReplacements`` is its
seed-named alias.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Callable, Mapping, Sequence

_PLACEHOLDER = re.compile(r"\{\{([a-zA-Z_][a-zA-Z0-9_]*)\}\}")


def placeholders(template: str) -> set[str]:
    """Names of the ``{{name}}`` placeholders in ``template``."""
    return set(_PLACEHOLDER.findall(template))


def cached_replacements(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``{{name}}`` in ``template`` with ``values[name]`` in one pass.

    Raises KeyError naming the first placeholder without a value, so a typo in a
    custom prompt fails loudly instead of sending ``{{typo}}`` to the model.
    """

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"prompt placeholder {{{{{name}}}}} has no value")
        return str(values[name])

    return _PLACEHOLDER.sub(sub, template)


@functools.lru_cache(maxsize=64)
def _rendered(func_name: str, tokenizer: Any, args_json: str, get_messages: Callable[[], Sequence[Mapping[str, str]]]
              ) -> str:
    messages = [dict(m) for m in get_messages()]
    ends_with_answer = bool(messages) and messages[-1].get("role") == "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not ends_with_answer,
                                         continue_final_message=ends_with_answer, **json.loads(args_json))


class _Once:
    """``get_messages`` keyed by ``func_name`` alone: a fresh lambda per call must still hit the cache."""

    def __init__(self, func_name: str, fn: Callable[[], Sequence[Mapping[str, str]]]) -> None:
        self.key, self.fn = func_name, fn

    def __call__(self) -> Sequence[Mapping[str, str]]:
        return self.fn()

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Once) and other.key == self.key


def chat_prompt(func_name: str, tokenizer: Any, get_messages: Callable[[], Sequence[Mapping[str, str]]],
                replacements: Mapping[str, Any], tokenizer_args: Mapping[str, Any] | None = None) -> str:
    """A whole prompt: ``get_messages()`` through ``tokenizer``'s chat template, then ``{nameREPLACE}`` -> value.

    The template is rendered once per (``func_name``, tokenizer, tokenizer arguments); a last assistant message
    is continued (the answer's prefill) rather than closed. Replacement is one pass, so a value containing
    ``{dataREPLACE}`` text is never substituted again.
    """
    args_json = json.dumps(dict(tokenizer_args or {}), sort_keys=True, default=str)
    template = _rendered(func_name, tokenizer, args_json, _Once(func_name, get_messages))
    if not replacements:
        return template
    names = {f"{{{k}REPLACE}}": str(v) for k, v in replacements.items()}
    pattern = re.compile("|".join(re.escape(k) for k in names))
    return pattern.sub(lambda m: names[m.group(0)], template)


def doCachedReplacements(funcName: str, tokenizer: Any,  # noqa: N802,N803 - the seed's names
                         getMessagesFunc: Callable[[], Sequence[Mapping[str, str]]],  # noqa: N803
                         replacementsDict: Mapping[str, Any],  # noqa: N803
                         tokenizerArgs: Mapping[str, Any] | None = None) -> str:  # noqa: N803
    """The seed's name and keywords for :func:`chat_prompt`."""
    return chat_prompt(funcName, tokenizer, getMessagesFunc, replacementsDict, tokenizerArgs)
