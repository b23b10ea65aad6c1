"""Alert rules evaluated at each publish: which visible clusters cross a rule for the first time.

Each (rule, facet, cluster) fires once for the life of the deployment (``AlertLog.fired``), however many
re-clusterings follow: cluster ids survive re-clustering, and a successor through the lineage of a cluster
published before is not "new". The first evaluation only records what exists (no "new cluster" storm on the
first version). Only visible clusters and their public fields are ever looked at or sent.

Order at a publish (``publish_alerts``): evaluate, record the fired alerts under the version's fence, deliver
them (``views.webhooks``), record the delivery. A crash between delivery and its record re-delivers the same
alert id at the next publish: delivery is at least once, firing exactly once, and receivers dedupe on the id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from clio_stream.domain.alerts import Alert, AlertRule, alert_id
from clio_stream.domain.clusters import ClioResult, ClusterNode
from clio_stream.privacy.visibility import FacetVisibility, result_visibility
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import ALERT_LOG, AlertLog
from clio_stream.storage.store import QdrantStore
from clio_stream.views.webhooks import deliver

log = logging.getLogger(__name__)

KEEP_ALERTS = 500  # alerts kept in the log for GET /v1/alerts


def _value(rule: AlertRule, node: ClusterNode) -> float | None:
    """What the rule compares with its threshold, or None when the node does not have it."""
    trend = node.trend
    if rule.kind == "growth":
        return None if trend is None else trend.growth
    if rule.kind == "mean_above":
        stats = node.numeric.get(rule.numeric_facet or "")
        return None if stats is None else stats.mean
    if rule.kind == "members_in_window":
        return None if trend is None or not trend.counts else float(sum(trend.counts[-rule.windows:]))
    return None


def _fires(rule: AlertRule, node: ClusterNode, is_new: bool) -> tuple[bool, float | None]:
    if rule.kind == "new_cluster":
        return is_new, None
    if rule.kind == "emerging":
        return bool(node.trend and node.trend.emerging), None if node.trend is None else node.trend.growth
    value = _value(rule, node)
    return (value is not None and rule.threshold is not None and value >= rule.threshold), value


def _path(fv: FacetVisibility, node: ClusterNode) -> list[str]:
    out, parent = [], node.parent_id
    while parent is not None and parent in fv.hierarchy.nodes:
        out.append(fv.hierarchy.nodes[parent].name)
        parent = fv.hierarchy.nodes[parent].parent_id
    return out[::-1]


def evaluate(rules: Sequence[AlertRule], result: ClioResult, version: str, lineage: Mapping[str, str],
             previous: AlertLog) -> tuple[list[Alert], AlertLog]:
    """The alerts ``result`` fires for the first time, and the log with them (and its clusters) recorded."""
    first = previous.version is None
    fired = set(previous.fired)
    known = {f: set(ids) for f, ids in previous.known.items()}
    predecessors: dict[str, set[str]] = {}
    for old, new in lineage.items():
        predecessors.setdefault(new, set()).add(old)
    now = time.time()
    new_alerts: list[Alert] = []
    for facet, fv in result_visibility(result).facets.items():
        seen = known.setdefault(facet, set())
        for nid in sorted(fv.visible):
            node = fv.public[nid]
            is_new = not first and nid not in seen and not (predecessors.get(nid, set()) & seen)
            for rule in rules:
                if (rule.facet is not None and rule.facet != facet) or (rule.level is not None and node.level != rule.level):
                    continue
                hit, value = _fires(rule, node, is_new)
                aid = alert_id(rule.name, facet, nid)
                if not hit or aid in fired:
                    continue
                fired.add(aid)
                new_alerts.append(Alert(id=aid, rule=rule.name, kind=rule.kind, facet=facet, cluster_id=nid,
                                        cluster_name=node.name, cluster_summary=node.summary, path=_path(fv, node),
                                        size=node.size, distinct_users=node.distinct_users, value=value,
                                        threshold=rule.threshold, version=version, fired_at=now))
        seen.update(fv.visible)
    logged = AlertLog(fired=sorted(fired), known={f: sorted(ids) for f, ids in known.items()},
                      alerts=(previous.alerts + new_alerts)[-KEEP_ALERTS:], version=version, updated_at=now)
    return new_alerts, logged


def publish_alerts(store: QdrantStore, settings: ClioSettings, result: ClioResult, version: str,
                   lineage: Mapping[str, str], fence: int) -> list[Alert]:
    """Evaluate ``settings.alert_rules`` on a just-published version, record and deliver; the new alerts.

    ``fence``: the version number, so a late job's record is refused.
    """
    if not settings.alert_rules:
        return []
    previous = store.states.read(ALERT_LOG) or AlertLog()
    if previous.version == version:
        return []  # evaluated already (a recovered job)
    new, logged = evaluate(settings.alert_rules, result, version, lineage, previous)
    if not store.states.put_fenced(ALERT_LOG.key, logged, fence=fence):
        log.warning("alerts of version %s not recorded: a newer version evaluated them", version)
        return []
    pending = [a for a in logged.alerts if not a.delivered]
    if pending and settings.alert_webhooks:
        deliver(pending, settings)
        store.states.put_fenced(ALERT_LOG.key, logged, fence=fence)
    if new:
        log.info("version %s fired %d alert(s): %s", version, len(new), ", ".join(f"{a.rule}:{a.cluster_id}" for a in new))
    return new
