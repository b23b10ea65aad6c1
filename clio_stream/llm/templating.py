"""Fill prompt templates by plain replacement.

Applying a chat template is slow relative to string replacement, so each
template is rendered through the model's chat template once, with placeholders
left in, and every prompt is then made by replacing the placeholders (the
seed's ``doCachedReplacements`` idea). The replacement is a single pass, so a
value that itself contains ``{{placeholder}}`` text (say, a conversation that
quotes our template) is never substituted again: data cannot inject template
fields.
"""

from __future__ import annotations

import re
from typing import Mapping

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


# The seed's name, as a thin alias.
doCachedReplacements = cached_replacements
