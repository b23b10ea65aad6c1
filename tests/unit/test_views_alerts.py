"""Alerts across real re-clusterings: each (rule, facet, cluster) reaches a local webhook exactly once, signed.

The job runs as in production (``recluster_once`` over an in-memory store with a scripted LLM), with real
privacy minimums; the receiver is a real HTTP server on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from typing import Any

import pytest

from clio_stream.domain.facets import main_facets
from clio_stream.living.job import recluster_once
from clio_stream.settings import ClioSettings
from clio_stream.privacy.visibility import visible_node_ids
from clio_stream.storage.documents import ALERT_LOG
from clio_stream.storage.published import PublishedVersions
from clio_stream.storage.store import QdrantStore
from clio_stream.views.webhooks import signature
from tests.loopback_http import Recorder
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script
from tests.unit.test_recluster import fill

SECRET = "webhook-secret-for-tests"


class Receiver(Recorder):
    """A webhook on loopback: records every POST (answering 500 to the first ``fail_first`` ones)."""

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__("/hook", fail_first=fail_first, status=204)

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [{"headers": r.headers, "body": r.body} for r in self.requests]

    def delivered(self) -> list[dict[str, Any]]:
        """Alerts answered 2xx."""
        return [json.loads(c["body"])["alert"] for i, c in enumerate(self.calls) if i >= self.fail_first]


@pytest.fixture
def receiver() -> Any:
    r = Receiver(fail_first=1)  # the first call fails: the retry must deliver it, once
    yield r
    r.close()


def test_alerts_fire_once_per_cluster_and_condition_across_reclusterings(tmp_path: Any, receiver: Receiver) -> None:
    emb = HashEmbedder()
    store = QdrantStore(":memory:")
    store.ensure_collections(emb.dim)
    settings = ClioSettings(show_progress=False, n_name_description_samples_per_cluster=1, n_rename_samples=1,
                            n_categorize_samples=1, llm_max_retries=0, min_top_level_size=2,
                            min_cluster_users=3, min_cluster_conversations=3,
                            alert_rules=[{"name": "new", "kind": "new_cluster"},
                                         {"name": "growing", "kind": "growth", "threshold": 0.5},
                                         {"name": "big", "kind": "members_in_window", "threshold": 20, "level": None}],
                            alert_webhooks=[receiver.url], alert_webhook_secret=SECRET, alert_retries=2)
    llm = ScriptedLLM(sensible_script)
    pub = tmp_path / "published"

    fill(store, emb, n=60)
    assert recluster_once(store, llm, emb, main_facets, settings, publish_dir=pub).version == 1
    first = [a["rule"] for a in receiver.delivered()]
    assert "new" not in first  # the first version is the baseline: nothing is "new" in it

    fill(store, emb, n=30, start=60, variety=9)  # new wordings: new clusters, and growth
    assert recluster_once(store, llm, emb, main_facets, settings, publish_dir=pub).version == 2
    after_two = receiver.delivered()
    assert any(a["rule"] == "new" for a in after_two), [a["rule"] for a in after_two]
    for _ in range(2):  # re-clusterings over the same data: nothing fires again
        recluster_once(store, llm, emb, main_facets, settings, publish_dir=pub)
    delivered = receiver.delivered()
    assert len(delivered) == len(after_two)
    ids = Counter(a["id"] for a in delivered)
    assert ids and max(ids.values()) == 1, ids
    assert len(receiver.calls) == len(delivered) + 1  # the one failed call was retried, not repeated later

    for call in receiver.calls:
        h = {k.lower(): v for k, v in call["headers"].items()}
        assert h["x-clio-signature"] == signature(SECRET, h["x-clio-timestamp"], call["body"])
        assert h["x-clio-alert-id"] == json.loads(call["body"])["alert"]["id"]
        expected = "sha256=" + hmac.new(SECRET.encode(), h["x-clio-timestamp"].encode() + b"." + call["body"],
                                        hashlib.sha256).hexdigest()
        assert h["x-clio-signature"] == expected
    log = store.states.read(ALERT_LOG)
    assert log is not None and log.version == "4" and all(a.delivered for a in log.alerts)
    for a in delivered:  # only clusters visible in the version that fired them
        version = PublishedVersions.at(pub).load(a["version"])
        assert a["cluster_id"] in visible_node_ids(version.result.hierarchies[a["facet"]])
