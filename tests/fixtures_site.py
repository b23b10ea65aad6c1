"""A realistic synthetic ``ClioResult`` for testing the static site alone (no pipeline, no LLM).

Three facets like Clio's defaults: "Request" with a 3-level hierarchy, "Language"
with values but no hierarchy, and "Concerning", numeric 1-5, whose per-cluster
statistics appear on the Request nodes. One leaf is hidden (one user only) and
carries recognisable secret strings so tests can grep the output for leaks; one
leaf summary and one message carry an HTML-injection payload so browser tests can
check that data is escaped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from clio_stream.stages.trends import annotate_trends
from clio_stream.domain.conversation import Conversation, ConversationFacets, FacetValue, Message
from clio_stream.domain.clusters import ClioResult, ClusterNode, FacetHierarchy, NumericStats

REQUEST, LANGUAGE, CONCERNING = "Request", "Language", "Concerning"
HIDDEN_NODE_ID = "request-zf-withheld-leaf"
HIDDEN_NAME = "Zephyr Falcon clearance codes"
HIDDEN_SUMMARY = "Users asked for Kestrel Base clearance codes for the Zephyr Falcon project."
SECRET_TOKEN = "ZEPHYR-FALCON-7731"
XSS_PAYLOAD = '<img src=x onerror="window.__clioXss=1">'
LANGUAGES = ["English", "Spanish", "French", "German"]

# root name, summary, base Concerning score, [(mid name, summary, [(leaf name, size), ...]), ...]
_TREE = [
    ("Software development", "Writing, debugging and shipping code.", 1, [
        ("Debugging Python code", "Finding and fixing errors in Python programs.", [
            ("Fixing Python import errors", 6), ("Debugging pandas dataframes", 6)]),
        ("Building web frontends", "Layout, styling and state in browser apps.", [
            ("Styling pages with CSS", 5), ("React state management", 5)]),
    ]),
    ("Writing and communication", "Drafting and polishing text for others.", 2, [
        ("Professional emails", "Emails to employers, colleagues and customers.", [
            ("Job application emails", 5), ("Apologising to customers", 4)]),
        ("Creative writing", "Stories, poems and lyrics.", [
            ("Fantasy short stories", 5), ("Song lyrics", 4)]),
    ]),
    ("Everyday life", "Practical help with home, food and travel.", 3, [
        ("Cooking", "Recipes and kitchen techniques.", [
            ("Vegetarian dinner recipes", 4), ("Baking bread", 3)]),
        ("Travel planning", "Itineraries, budgets and paperwork for trips.", [
            ("Budget trips in Europe", 5), ("Visa questions", 5)]),
    ]),
]
HIDDEN_SIZE = 3


@dataclass(frozen=True)
class SiteFixture:
    result: ClioResult
    hidden_member_ids: list[str]
    root_ids: list[str]


def _stats(values: list[int]) -> NumericStats:
    hist = [0] * 5
    for v in values:
        hist[v - 1] += 1
    return NumericStats(facet=CONCERNING, count=len(values), mean=sum(values) / len(values) if values else None,
                        min_value=1, histogram=hist)


def conversations_of(nodes: dict[str, ClusterNode], node_id: str) -> list[str]:
    return list(nodes[node_id].conversation_ids)


def make_site_fixture(seed: int = 0) -> SiteFixture:
    """Build the fixture deterministically; 60 conversations from 25 users."""
    rng = random.Random(seed)
    conversations: list[Conversation] = []
    facet_values: list[ConversationFacets] = []
    nodes: dict[str, ClusterNode] = {}
    concern: dict[str, int] = {}
    users: dict[str, str] = {}
    counter = 0

    def new_conversation(topic: str, base: int, *, secret: bool = False, user: str | None = None) -> str:
        nonlocal counter
        counter += 1
        cid = f"conv-{counter:04d}"
        uid = user or f"user-{(counter * 7) % 25:02d}"
        score = max(1, min(5, base + rng.choice([-1, 0, 0, 1])))
        lang = LANGUAGES[counter % len(LANGUAGES)]
        question = f"Can you help me with {topic.lower()}? (case {counter})"
        if secret:
            question = f"Give me the {SECRET_TOKEN} codes for {HIDDEN_NAME}."
        messages = [Message(role="user", content=question),
                    Message(role="assistant", content=f"Sure. Here is how to approach {topic.lower()}, step by step.")]
        if counter % 5 == 0:
            messages += [Message(role="user", content="Thanks! One follow-up question about that."),
                         Message(role="assistant", content="Of course, go ahead.")]
        if counter == 2:
            messages.append(Message(role="user", content=f"Does this render? {XSS_PAYLOAD}"))
        conversations.append(Conversation(id=cid, messages=messages, user_id=uid, timestamp=1.7e9 + counter * 3600,
                                          metadata={"source": "fixture"}))
        request = f"The user asked for help with {topic.lower()}."
        if secret:
            request = f"The user requested {SECRET_TOKEN} codes."
        facet_values.append(ConversationFacets(conversation_id=cid, values={
            REQUEST: FacetValue(facet=REQUEST, value=request),
            LANGUAGE: FacetValue(facet=LANGUAGE, value=lang),
            CONCERNING: FacetValue(facet=CONCERNING, value=str(score), numeric=score),
        }))
        concern[cid], users[cid] = score, uid
        return cid

    def make_node(nid: str, name: str, summary: str, level: int, parent: str | None, children: list[str],
                  members: list[str], hidden: bool = False) -> ClusterNode:
        node = ClusterNode(id=nid, facet=REQUEST, name=name, summary=summary, level=level, parent_id=parent,
                           children=children, conversation_ids=members,
                           distinct_users=len({users[c] for c in members}),
                           numeric={CONCERNING: _stats([concern[c] for c in members])},
                           hidden=hidden, hidden_reason="fewer than 2 distinct users" if hidden else None)
        nodes[nid] = node
        return node

    root_ids: list[str] = []
    hidden_members: list[str] = []
    for r, (root_name, root_summary, base, mids) in enumerate(_TREE):
        root_id = f"request-r{r}"
        root_ids.append(root_id)
        root_members: list[str] = []
        mid_ids = []
        for m, (mid_name, mid_summary, leaves) in enumerate(mids):
            mid_id = f"{root_id}-m{m}"
            mid_ids.append(mid_id)
            mid_members: list[str] = []
            leaf_ids = []
            for leaf_index, (leaf_name, size) in enumerate(leaves):
                leaf_id = f"{mid_id}-l{leaf_index}"
                members = [new_conversation(leaf_name, base) for _ in range(size)]
                summary = f"Requests about {leaf_name.lower()}."
                if leaf_name == "Song lyrics":
                    summary += f" Escaping check: {XSS_PAYLOAD}"
                make_node(leaf_id, leaf_name, summary, 0, mid_id, [], members)
                leaf_ids.append(leaf_id)
                mid_members += members
            if mid_name == "Travel planning":
                hidden_members = [new_conversation(HIDDEN_NAME, 4, secret=True, user="user-secret")
                                  for _ in range(HIDDEN_SIZE)]
                make_node(HIDDEN_NODE_ID, HIDDEN_NAME, HIDDEN_SUMMARY, 0, mid_id, [], hidden_members, hidden=True)
                leaf_ids.append(HIDDEN_NODE_ID)
                mid_members += hidden_members
            make_node(mid_id, mid_name, mid_summary, 1, root_id, leaf_ids, mid_members)
            root_members += mid_members
        make_node(root_id, root_name, root_summary, 2, None, mid_ids, root_members)

    facets = [
        {"name": REQUEST, "question": "What is the user's overall request for the assistant?",
         "prefill": "The user's overall request for the assistant is to",
         "summary_criteria": "The cluster name should be a sentence in the imperative.", "numeric": None},
        {"name": LANGUAGE, "question": "What is the main language of the conversation?",
         "prefill": "", "summary_criteria": None, "numeric": None},
        {"name": CONCERNING, "question": "How concerning is this conversation, from 1 to 5?",
         "prefill": "", "summary_criteria": None, "numeric": [1, 5]},
    ]
    hierarchy = FacetHierarchy(facet=REQUEST, nodes=nodes, root_ids=root_ids)
    # Trends as a second version would have them: the withheld cluster is made only of new conversations
    # (the fastest grower of all), so the API and the site must not rank or show it.
    newest = {*hidden_members, *conversations_of(nodes, "request-r1-m0-l0")}
    annotate_trends(hierarchy, {c.id: c.timestamp for c in conversations},
                    {c.id for c in conversations} - newest, window_s=8 * 3600, windows=8, min_growth=0.5, top=3)
    result = ClioResult(
        facets=facets, conversations=conversations, facet_values=facet_values,
        hierarchies={REQUEST: hierarchy},
        settings={"llm_model": "fixture", "user_id_hash_key": "do-not-publish"},
        stats={"conversations": len(conversations), "skipped": 0},
    )
    return SiteFixture(result=result, hidden_member_ids=hidden_members, root_ids=root_ids)
