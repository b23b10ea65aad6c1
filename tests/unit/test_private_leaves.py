"""A withheld base cluster's name never reaches the name or summary of any cluster above it."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest

from clio_stream.domain.facets import REQUEST
from clio_stream.stages.hierarchy import build_hierarchy
from clio_stream.privacy.audit import mark_below_minimums
from clio_stream.settings import ClioSettings
from clio_stream.domain.clusters import ClusterNode
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

SECRET = "Zorblax"  # stands for one person's details in a small cluster's name


def leaky_script(name: str, values: Mapping[str, str], rng: random.Random) -> str | None:
    """A model that copies everything it is shown into the names it writes (the worst case)."""
    if name == "propose_parents":
        lines = [ln.split(". ", 1)[-1].split(":")[0] for ln in values["clusters"].splitlines()]
        return " " + "\n".join(f"{i + 1}. Group of {n}" for i, n in enumerate(lines[: int(values["n"])])) + "\n</answer>"
    if name in ("parent_name", "parent_summary"):
        names = [ln.lstrip("- ").split(":")[0] for ln in values["children"].splitlines()]
        text = "; ".join(names)
        return f"Requests about {text}.</summary>" if name.endswith("summary") else f"Help with {text}"
    return sensible_script(name, values, rng)


def _leaves() -> tuple[list[ClusterNode], dict[str, str]]:
    topics = ["cooking pasta", "fixing bikes", "tax returns", "python loops", "garden roses", "chess openings",
              "knitting socks", f"{SECRET} family medical history"]
    leaves, users = [], {}
    for i, topic in enumerate(topics):
        members = [f"c{i}-{j}" for j in range(4)]
        for j, cid in enumerate(members):  # the secret cluster is one user's; the others have four users
            users[cid] = "lonely-user" if SECRET in topic else f"user-{j}"
        leaves.append(ClusterNode(id=f"request-l0-{i}", facet="Request", name=f"Help with {topic}",
                                  summary=f"Users ask about {topic}.", level=0, conversation_ids=members))
    return leaves, users


@pytest.mark.parametrize("withhold_first", [True, False])
def test_withheld_leaf_names_never_feed_parent_names(withhold_first: bool) -> None:
    settings = ClioSettings(min_top_level_size=2, min_cluster_users=2, min_cluster_conversations=3,
                            show_progress=False)
    leaves, users = _leaves()
    if withhold_first:
        assert mark_below_minimums(leaves, users, min_conversations=3, min_users=2) == 1
    h = build_hierarchy(REQUEST, leaves, ScriptedLLM(leaky_script), HashEmbedder(), settings=settings)
    above = " | ".join(f"{n.name} {n.summary}" for n in h.nodes.values() if n.level > 0)
    assert h.depth() >= 2
    if withhold_first:
        assert SECRET not in above
    else:  # the control: without the rule this model does leak, so the assertion above can fail
        assert SECRET in above
