"""An answer that copies a worked example instead of describing the conversation: rejected, and asked again.

A small model shown worked examples sometimes answers one of them: on the demo's 200 example conversations,
SmolLM2-135M gave 19 Request values such as "help pair a fitness watch with a new phone" for conversations that
never mention a watch, and they formed a cluster of their own named after the example. An answer *echoes* an
example when it carries most of that example answer's content words and those shared words do not occur in the
conversation itself; an answer about a conversation that really is about pairing a watch uses the
conversation's words and passes. Echoes are treated as unparseable, so the LLM is asked again (at the run's
sampling temperature) and, failing that, once more without the examples (``stages.extract.extract_facets``):
a plain answer about the conversation rather than a copied one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+")
# Words too common to tell an example apart from a conversation that shares its subject.
_COMMON = frozenset("""
about after also assistant asks been being could does from have help into just like make more most much need
only other over please some such than that their them then there these they this user users very want wants what
when where which while will with would your write explain create provide give
""".split())
SHARED_SHARE = 0.6  # of the example answer's content words found in the answer
UNSUPPORTED_SHARE = 0.5  # of the example answer's content words shared with the answer yet absent from the source


def content_words(text: str) -> set[str]:
    """Lower-case words of four or more characters, minus the most common ones."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 4 and w not in _COMMON}


def echoes_example(answer: str, example_answers: Iterable[str], source: str | set[str]) -> bool:
    """Whether ``answer`` copies one of ``example_answers`` rather than describing ``source`` (its text, or its
    ``content_words`` when the caller checks several answers against one conversation)."""
    said = content_words(answer)
    if not said:
        return False
    if isinstance(source, str):
        source = content_words(source)
    for example in example_answers:
        wanted = content_words(example)
        if len(wanted) < 2:
            continue  # too short to tell a copy from a coincidence
        shared = said & wanted
        if len(shared) >= SHARED_SHARE * len(wanted) and len(shared - source) >= UNSUPPORTED_SHARE * len(wanted):
            return True
    return False
