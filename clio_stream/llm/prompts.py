"""Every prompt clio-stream sends, written for this project after the Clio paper's method.

Templates use ``{{name}}`` placeholders filled by ``templating.cached_replacements``.
Each ``PromptTemplate`` has the user turn and the start of the assistant's answer
(the prefill) that the model continues. A facet prompt has two layouts
(``facet_layout``): one prompt per facet (question, worked examples, then the
conversation), or one preamble shared by every facet of a conversation (all
questions, examples answered for all of them, then the conversation), which
leaves only the facet's label and prefill to differ, so vLLM's prefix cache
computes the conversation once for all its facets.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt with placeholders: one user turn, then a prefilled assistant turn."""

    name: str
    user: str
    prefill: str = ""
    stop: tuple[str, ...] = field(default_factory=tuple)
    max_tokens: int | None = None  # overrides the sampling default when set
    raw: bool = False  # ``user`` is a finished prompt (chat template already applied): sent as it is


PRIVACY_RULES = (
    "- Never include anything that could identify a person or organisation: names, usernames, places, "
    "addresses, contact details, account or ID numbers, or other proper nouns. Describe them generically "
    "instead (for example 'a coworker', 'a small town', 'a software company').\n"
    "- Write in English, even when the conversation is in another language."
)

_FACET_TAIL = (
    "\n\nWe study, in aggregate, what people use an AI assistant for. Answer the question below about the "
    "material above.\n"
    + PRIVACY_RULES
    + "\n- Be specific and factual, and stay neutral: assume neither good nor bad intent, and describe harmful or "
    "sensitive topics plainly when they are there.\n"
    "- Keep the answer short (one sentence unless the question asks for something else) and put it between "
    "<answer> and </answer>.\n\n"
    "Question: {{question}}"
)

# The conversation facets: a short instruction, worked examples in the exact shape of the
# answer, then the conversation. A 135M model given the long rules above answered with the
# prefill plus filler ("... provide accurate and unbiased information"); given examples it
# imitates their few specific words. The examples and instruction are the same for every
# conversation of a facet, so they are the prefix the prefix cache shares.
FACET_CONVERSATION = PromptTemplate(
    name="facet",
    user=(
        "{{question}}\nWrite in English. Leave out names, places, numbers and other personal details.\n\n"
        "{{examples}}Now this conversation:\n<conversation>\n{{conversation}}\n</conversation>"
    ),
    prefill="{{prefill}}",
    stop=("\n",),
)

FACET_EXAMPLE = "<conversation>\n<user>\n{message}\n</user>\n</conversation>\nAnswer: {answer}\n\n"

# The shared layout: every conversation facet's question, then each worked example conversation with every
# facet's answer to it on a line of its own that starts with the facet's label, then the conversation. Only
# the assistant's prefill ("Task: The task is to") names the facet, so the user turn, conversation included,
# is one prefix for all facets of a conversation.
FACET_SHARED = PromptTemplate(
    name="facet_shared",
    user=(
        "Answer each question about the conversation on one line that starts with the question's label.\n"
        "Write in English. Leave out names, places, numbers and other personal details.\n\n"
        "{{questions}}\n\n{{examples}}Now this conversation:\n<conversation>\n{{conversation}}\n</conversation>"
    ),
    prefill="{{label}}:{{prefill}}",  # the prefill with its leading space ("Concerning:" then a choice " 1")
    stop=("\n",),
)

FACET_SHARED_QUESTION = "{label}: {question}\n"
FACET_SHARED_EXAMPLE = "<conversation>\n<user>\n{message}\n</user>\n</conversation>\n{answers}\n"
FACET_SHARED_ANSWER = "{label}: {answer}\n"

FACET_TEXT = PromptTemplate(
    name="facet_text",
    user="Here is a piece of text:\n\n<text>\n{{conversation}}\n</text>" + _FACET_TAIL,
    prefill="<answer>{{prefill}}",
    stop=("</answer>",),
    max_tokens=80,
)

NUMERIC_SUFFIX = "\n\nReply with the number only."

# A facet's own whole prompt (the seed's getFacetPrompt): already chat-templated, continued as it is. Its answer
# ends at the first closing tag, whatever the tag (the seed's summary prompt prefills "<summary>").
FACET_OWN_PROMPT = PromptTemplate(name="facet_own_prompt", user="{{text}}", stop=("</",), raw=True)

# The templates our facet questions are asked in (a facet's own prompt aside).
FACET_TEMPLATES = (FACET_CONVERSATION, FACET_SHARED, FACET_TEXT)

_GROUP_MATERIAL = (
    "The statements below describe conversations with an AI assistant. They were grouped together because "
    "they are similar:\n\n<group>\n{{inside}}\n</group>\n\n"
    "These nearby statements are NOT in the group:\n\n<nearby>\n{{outside}}\n</nearby>\n\n"
)

# Summary and name are asked for separately: small models follow one short
# instruction with one tag far more reliably than a two-part format, and both
# prompts share the long material prefix, which the prefix cache computes once.
CLUSTER_SUMMARY = PromptTemplate(
    name="cluster_summary",
    user=(
        _GROUP_MATERIAL
        + "In one or two sentences, summarise what the statements in the group have in common and what sets "
        "them apart from the nearby ones.\n" + PRIVACY_RULES
        + "\n\nPut the summary between <summary> and </summary>."
    ),
    prefill="<summary>",
    stop=("</summary>",),
    max_tokens=90,
)

CLUSTER_NAME = PromptTemplate(
    name="cluster_name",
    user=(
        _GROUP_MATERIAL
        + "Give the group a short name, at most ten words, that fits its statements and not the nearby ones. "
        "{{criteria}}\n" + PRIVACY_RULES + "\n\nPut the name between <name> and </name>."
    ),
    prefill="<name>",
    stop=("</name>", "\n"),
    max_tokens=30,
)

PROPOSE_PARENTS = PromptTemplate(
    name="propose_parents",
    user=(
        "These are groups of conversations with an AI assistant, each with a name and a short description:\n\n"
        "<groups>\n{{clusters}}\n</groups>\n\n"
        "Suggest about {{n}} broader categories that together cover all of these groups. Each category must "
        "be more general than the groups it will hold, clearly different from the other categories, and "
        "named in at most ten words. {{criteria}}\n"
        + PRIVACY_RULES
        + "\n\nList the category names one per line, numbered, between <answer> and </answer>."
    ),
    prefill="<answer>\n1.",
    stop=("</answer>",),
    max_tokens=200,
)

DEDUPLICATE_PARENTS = PromptTemplate(
    name="dedup_parents",
    user=(
        "These candidate category names were proposed independently, so several may mean the same thing:\n\n"
        "<names>\n{{names}}\n</names>\n\n"
        "Merge the names that overlap and return about {{n}} distinct categories that together still cover "
        "everything in the list. Keep each name to at most ten words. {{criteria}}\n\n"
        "List the final names one per line, numbered, between <answer> and </answer>."
    ),
    prefill="<answer>\n1.",
    stop=("</answer>",),
    max_tokens=250,
)

ASSIGN_TO_PARENT = PromptTemplate(
    name="assign_parent",
    user=(
        "A group of conversations with an AI assistant is described like this:\n\n"
        "<group>\nName: {{name}}\nDescription: {{summary}}\n</group>\n\n"
        "Which one of these broader categories does the group belong to?\n\n"
        "<categories>\n{{candidates}}\n</categories>\n\n"
        "Reply with the number of the best category, between <answer> and </answer>."
    ),
    prefill="<answer>",
    stop=("</answer>",),
    max_tokens=8,
)

_PARENT_MATERIAL = (
    "A category of conversations with an AI assistant holds these groups:\n\n<groups>\n{{children}}\n</groups>\n\n"
)

PARENT_SUMMARY = PromptTemplate(
    name="parent_summary",
    user=(
        _PARENT_MATERIAL
        + "In one or two sentences, summarise what the groups in this category have in common.\n" + PRIVACY_RULES
        + "\n\nPut the summary between <summary> and </summary>."
    ),
    prefill="<summary>",
    stop=("</summary>",),
    max_tokens=90,
)

PARENT_NAME = PromptTemplate(
    name="parent_name",
    user=(
        _PARENT_MATERIAL
        + "Give the category a name, at most ten words, that covers all of its groups and nothing much broader. "
        "{{criteria}}\n" + PRIVACY_RULES + "\n\nPut the name between <name> and </name>."
    ),
    prefill="<name>",
    stop=("</name>", "\n"),
    max_tokens=30,
)

AUDIT_CLUSTER = PromptTemplate(
    name="audit_cluster",
    user=(
        "A privacy reviewer checks every cluster description before it is published. Here is one:\n\n"
        "<cluster>\nName: {{name}}\nDescription: {{summary}}\n</cluster>\n\n"
        "Rate how safe it is to publish, from 1 to 5:\n"
        "1: It names or points to a specific, identifiable person.\n"
        "2: It contains details that could identify a person when combined with other information.\n"
        "3: It mentions a small group or an organisation, but no individual could be singled out.\n"
        "4: It is general, with only broad or public details.\n"
        "5: It is entirely general and contains no private information.\n\n"
        "Reply with the number only, between <answer> and </answer>."
    ),
    prefill="<answer>",
    stop=("</answer>",),
    max_tokens=8,
)
