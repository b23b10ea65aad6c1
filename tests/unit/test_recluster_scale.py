"""Re-clustering bounded by a sample (embedded Qdrant, scripted LLM): the window, the id-order sample, the capped k,
the paged assignment pass (shards, resume by page) and the window's numbers on the published clusters."""

from __future__ import annotations

import hashlib
import time
import uuid

import numpy as np
import pytest

from clio_stream.domain.facets import main_facets
from clio_stream.living.assign_pass import collect, run_pass, run_shard
from clio_stream.living.facet_pass import capped_k
from clio_stream.living.job import recluster_once
from clio_stream.living.window import DAY_S, Window, apply_retention, clustering_window
from clio_stream.ops.faults import InjectedFault, armed
from clio_stream.stages.trends import window_counts, window_grid
from clio_stream.online.kmeans import OnlineKMeans
from clio_stream.storage.documents import AssignPlan, assign_shard_key
from clio_stream.storage.published import POINTER_CHECK_S, PublishedVersions
from clio_stream.storage.store import QdrantStore
from clio_stream.storage.vector_pages import IdRange, read_page
from tests.recluster_harness import job_settings, points
from tests.unit.test_clustering_job import world  # noqa: F401 - the same embedded store, emb, publish dir
from tests.unit.fakes import HashEmbedder, ScriptedLLM, sensible_script

NOW = 1_750_000_000.0


def fill(store: QdrantStore, emb: HashEmbedder, n: int, *, start: int = 0, t0: float | None = NOW,
         step_s: float = 60.0) -> None:
    """``n`` conversations over the harness's topics, one minute apart ending at ``t0`` (None: untimed)."""
    store.points.upsert_facets(points(emb, start, n, time_of=None if t0 is None else
                                      lambda i: t0 - (start + n - 1 - i) * step_s))


def _published(pub):
    return PublishedVersions.at(pub).load_current().result


# --------------------------------------------------------------------------- ids, pages, the sample


def test_shards_tile_the_id_space_and_pages_partition_the_points(world):
    store, emb, _ = world
    fill(store, emb, 90)
    shards = [IdRange.shard(i, 4) for i in range(4)]
    assert shards[0].start is None and shards[-1].stop is None
    assert all(a.stop == b.start for a, b in zip(shards, shards[1:]))
    seen: list[str] = []
    for r in shards:
        cursor = None
        while True:
            page = read_page(store, Window(None, None).facet_filter("Request"), cursor, r, 7, ("value",), emb.dim)
            assert all(r.start is None or p >= r.start for p in page.ids) and all(r.before_stop(p) for p in page.ids)
            seen += page.ids
            if page.next is None:
                break
            cursor = page.next
    assert len(seen) == len(set(seen)) == 90  # every point once: no gap, no overlap between shards and pages
    assert seen == sorted(seen, key=lambda p: uuid.UUID(p).int)


def test_the_sample_is_the_first_points_in_id_order_and_stays_put_as_the_window_grows(world, tmp_path):
    store, emb, pub = world
    fill(store, emb, 60)
    settings = job_settings(recluster_sample_size=20)
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    first = {c for n in _published(pub).hierarchies["Request"].leaves() for c in n.conversation_ids}
    all_ids = sorted((p for p in _request_points(store)), key=lambda p: uuid.UUID(p[0]).int)
    assert first == {cid for _, cid in all_ids[:20]}  # the id-order prefix, not a random draw
    fill(store, emb, 6, start=60, t0=NOW + 3600)
    assert recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    second = {c for n in _published(pub).hierarchies["Request"].leaves() for c in n.conversation_ids}
    assert len(second) == 20 and len(first & second) >= 14  # the same sample, but for new points hashing low


def _request_points(store: QdrantStore) -> list[tuple[str, str]]:
    out = []
    for ids, _, payloads in store.points.scroll_vectors("Request"):
        out += [(pid, p["conversation_id"]) for pid, p in zip(ids, payloads)]
    return out


# --------------------------------------------------------------------------- k and the window's numbers


def test_k_follows_the_rule_over_the_window_and_stops_at_the_cap():
    settings = job_settings(recluster_max_base_clusters=40)
    assert capped_k(settings, 200, 200) == 20  # the seed's n // 10 below the cap
    assert capped_k(settings, 2_000_000, 50_000) == capped_k(settings, 100_000, 50_000) == 40


def test_sizes_users_numeric_stats_and_trends_count_the_whole_window_not_the_sample(world):
    store, emb, pub = world
    fill(store, emb, 120)
    settings = job_settings(recluster_sample_size=30, trend_window_s=1800.0, trend_windows=4)
    report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    assert report.points == {"Request": 120, "Task": 120} and report.facets["Request"]["sample"] == 30
    h = _published(pub).hierarchies["Request"]
    leaves = h.leaves()
    assert sum(len(n.conversation_ids) for n in leaves) == 30  # named from the sample...
    assert sum(n.size for n in leaves) == 120  # ...counted over the window
    assert sum(n.numeric["Concerning"].count for n in leaves) == 120
    assert sum(sum(n.numeric["Concerning"].histogram) for n in leaves) == 120
    roots = [h.nodes[r] for r in h.root_ids]
    assert sum(r.size for r in roots) == 120
    times = [NOW - i * 60.0 for i in range(120)]
    start = window_grid(times, 1800.0, 4)
    assert [sum(n.trend.counts[i] for n in leaves) for i in range(4)] == window_counts(times, start, 1800.0, 4)
    # distinct users are counted over every point of a leaf (exactly), not over its sampled members
    for leaf in leaves:
        page, _ = store.points.cluster_members("Request", _published(pub).store_links["Request"].clusters[leaf.id],
                                               limit=1000, version=report.version)
        assert leaf.size == len(page) and leaf.distinct_users == len({p["user_hash"] for p in page})
    assert store.points.count(facet="Request", version=report.version) == 120


def test_growth_counts_conversations_newer_than_the_previous_version(world):
    store, emb, pub = world
    fill(store, emb, 60)
    settings = job_settings(recluster_sample_size=30)
    recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    assert all(n.trend.growth is None for n in _published(pub).hierarchies["Request"].nodes.values())
    fill(store, emb, 12, start=60, t0=NOW + 3600)
    recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    leaves = _published(pub).hierarchies["Request"].leaves()
    assert sum(n.trend.new_members for n in leaves) == 12


def test_the_window_excludes_old_conversations_but_keeps_untimed_ones(world):
    store, emb, pub = world
    fill(store, emb, 30, t0=NOW - 40 * DAY_S)  # too old for a 30-day window
    fill(store, emb, 30, start=30, t0=NOW)
    fill(store, emb, 6, start=60, t0=None)
    settings = job_settings(cluster_window_days=30.0)
    window = clustering_window(store, settings)
    assert window.newest == NOW and window.start == NOW - 30 * DAY_S
    report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    assert report.points["Request"] == 36
    members = {c for n in _published(pub).hierarchies["Request"].leaves() for c in n.conversation_ids}
    assert members == {f"c{i}" for i in range(30, 66)}
    assert store.points.count(facet="Request", version=report.version) == 36  # nothing older got a label


def test_retention_deletes_old_conversations_before_the_sample(world):
    store, emb, pub = world
    fill(store, emb, 30, t0=NOW - 100 * DAY_S)
    fill(store, emb, 30, start=30, t0=NOW)
    settings = job_settings(retention_days=60.0)
    assert apply_retention(store, settings, now=NOW) == 30 * len(main_facets)
    assert store.points.count(facet="Request") == 30 and store.points.count(facet="Task") == 30
    with pytest.raises(ValueError, match="shorter than cluster_window_days"):
        job_settings(retention_days=7.0, cluster_window_days=30.0)


# --------------------------------------------------------------------------- the pass: shards and resume


def _plan(store, emb, k: int, shards: int, page: int) -> tuple[AssignPlan, OnlineKMeans]:
    rng = np.random.default_rng(0)
    model = OnlineKMeans(rng.standard_normal((k, emb.dim)).astype(np.float32), version=7, facet="Request")
    store.versions.put_centroids("Request", 7, model.to_state())
    plan = AssignPlan(version=7, facet="Request", k=k, shards=shards, page_size=page, trend_window_s=3600.0,
                      trend_windows=4, trend_start=NOW - 3 * 3600.0, numeric={"Concerning": [1, 5]})
    return plan, model


def test_a_pass_split_in_shards_labels_every_point_once_and_adds_up(world):
    store, emb, _ = world
    fill(store, emb, 100)
    plan, model = _plan(store, emb, 5, shards=3, page=16)
    result = run_pass(store, plan, model, "me", 30.0, check=lambda: None)
    assert result.points == 100 and int(result.totals.counts.sum()) == 100
    assert store.points.count(facet="Request", version=7) == 100
    assert int(result.totals.numeric["Concerning"].sum()) == 100 and result.pages >= 100 // 16
    one = run_pass(store, plan.model_copy(update={"version": 8, "shards": 1}), model, "me", 30.0, lambda: None)
    assert np.array_equal(one.totals.counts, result.totals.counts)  # shards change nothing but who does the work


def test_a_shard_that_dies_mid_pass_is_resumed_after_its_last_page(world):
    store, emb, _ = world
    fill(store, emb, 100)
    plan, model = _plan(store, emb, 5, shards=1, page=16)
    reached = []

    def die_at_third_page(step: str) -> None:
        if step == "assign_page":
            reached.append(step)
            if len(reached) == 3:
                raise InjectedFault("killed at page 3")

    with armed(die_at_third_page), pytest.raises(InjectedFault):
        run_shard(store, plan, model, 0, "first", 30.0)
    left = store.states.read(assign_shard_key(7, "Request", 0))
    assert left is not None and left.pages == 2 and left.points == 32 and not left.done
    pages_read = []
    with armed(lambda step: pages_read.append(step) if step == "assign_page" else None):
        done = run_shard(store, plan, model, 0, "second", 30.0)
    assert done is not None and done.done and done.owner == "second"
    assert len(pages_read) == 5  # 7 pages of 16: resumed at page 3, not at page 1
    assert done.points == 100 and int(collect(store, plan).totals.counts.sum()) == 100  # nothing counted twice


def test_the_user_sketch_estimates_large_counts_and_merges_like_a_union():
    from clio_stream.living.user_sketch import M, add_users, estimate, user_keys

    hexed = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(3)]  # what workers store
    keys = user_keys([f"user-{i}" for i in range(60_000)] + hexed)
    registers = np.zeros((3, M), np.uint8)
    labels = np.arange(len(keys)) % 3
    add_users(registers, labels, keys)
    add_users(registers, labels, keys)  # the same users again (a replayed page) change nothing
    one = np.zeros((1, M), np.uint8)
    add_users(one, np.zeros(len(keys), np.int64), keys)
    assert np.array_equal(registers.max(axis=0), one[0])  # merged rows are exactly the union's sketch
    assert abs(estimate(registers[0]) / 20_001 - 1) < 0.15 and abs(estimate(registers) / 60_003 - 1) < 0.15
    small = np.zeros((1, M), np.uint8)
    add_users(small, np.zeros(25, np.int64), user_keys([f"u{i}" for i in range(25)]))
    assert round(estimate(small)) == 25


def test_small_clusters_count_users_exactly_and_large_ones_by_the_sketch(world, monkeypatch):
    import clio_stream.living.facet_pass as facet_pass

    store, emb, pub = world
    fill(store, emb, 60)
    asked = []
    real = store.labels.distinct_users
    monkeypatch.setattr(store.labels, "distinct_users", lambda *a, **kw: asked.append(kw["most"]) or real(*a, **kw))
    recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, job_settings(), publish_dir=pub)
    assert asked  # every node here has few users: Qdrant counts them exactly
    exact = {n.id: n.distinct_users for n in _published(pub).hierarchies["Request"].nodes.values()}
    asked.clear()
    monkeypatch.setattr(facet_pass, "EXACT_USERS", 3)  # now every node with more than 4 users is "large"
    recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, job_settings(), publish_dir=pub)
    assert not asked  # no query grows with the store
    nodes = _published(pub).hierarchies["Request"].nodes.values()
    roots = [n for n in nodes if n.parent_id is None]
    assert sum(r.size for r in roots) == 60
    large = [n for n in nodes if n.id in exact and exact[n.id] > 4]
    assert large and all(abs(n.distinct_users - exact[n.id]) <= 2 for n in large)


def test_a_deleted_users_sampled_conversations_come_off_the_window_counts(world):
    from clio_stream.privacy.scrub import UserMatch, scrub_result

    store, emb, pub = world
    fill(store, emb, 120)
    settings = job_settings(recluster_sample_size=30)
    recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    result = _published(pub)
    h = result.hierarchies["Request"]
    victim = max(h.leaves(), key=lambda n: len(n.conversation_ids)).conversation_ids[0]
    owner = next(c.user_id for c in result.conversations if c.id == victim)
    mine = {c.id for c in result.conversations if c.user_id == owner}
    before = {n.id: (n.size, n.distinct_users, len(mine & set(n.conversation_ids))) for n in h.nodes.values()}
    removed, _ = scrub_result(result, UserMatch(settings.user_id_hash_key, frozenset(), frozenset(), frozenset(mine)),
                              min_conversations=1, min_users=1)
    assert removed == len(mine)
    for node in h.nodes.values():
        size, users, sampled = before[node.id]
        assert node.size == size - sampled and node.numeric["Concerning"].count == node.size
        assert node.distinct_users == users - 1  # the user may be anywhere in the window: one less everywhere
        assert not mine & set(node.conversation_ids)
    assert sum(n.size for n in h.leaves()) == 120 - sum(before[n.id][2] for n in h.leaves()) < 120


def test_members_withheld_through_another_facet_stay_hidden_beyond_the_sample(world):
    """A conversation in a withheld cluster of one facet is withheld as a whole: the API's member pages of the
    other facets skip it even when it is not in the version's sample (the published lists know only that)."""
    import json
    import os

    store, emb, pub = world
    fill(store, emb, 120)
    settings = job_settings(recluster_sample_size=30)
    report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets, settings, publish_dir=pub)
    versions = PublishedVersions.at(pub)
    current = versions.load_current()
    path = versions.folder(current.version) / "result.json"
    doc = json.loads(path.read_text())
    victim = next(nid for nid, n in doc["hierarchies"]["Task"]["nodes"].items() if n["level"] == 0)
    doc["hierarchies"]["Task"]["nodes"][victim].update(hidden=True, hidden_reason="privacy audit score 1")
    path.write_text(json.dumps(doc))  # as if the auditor had withheld it
    pointer = versions.root / "current"
    (versions.root / "current.tmp").write_text(pointer.read_text())
    os.replace(versions.root / "current.tmp", pointer)  # readers reload a version when its pointer is rewritten
    time.sleep(POINTER_CHECK_S)  # ... which another process's readers notice within this long
    assert versions.load_current().result.hierarchies["Task"].nodes[victim].hidden
    cluster = current.result.store_links["Task"].clusters[victim]
    withheld = {p["conversation_id"] for p in
                store.points.cluster_members("Task", cluster, limit=1000, version=report.version)[0]}
    sampled = {c for n in current.result.hierarchies["Task"].leaves() for c in n.conversation_ids}
    assert withheld - sampled  # members outside the sample, or this proves nothing
    seen = _api_members(store, pub, settings, "Request")
    assert seen and not seen & withheld and seen | withheld == {f"c{i}" for i in range(120)}


def _api_members(store: QdrantStore, pub, settings, facet: str) -> set[str]:
    """Every conversation the API's member pages list under the facet's leaves (as an analyst)."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.recluster_harness import ANALYST_KEY

    seen: set[str] = set()
    app = create_app(settings.with_overrides(publish_dir=pub, api_max_page_size=1000), store=store)
    with TestClient(app) as client:
        for leaf in _published(pub).hierarchies[facet].leaves():
            r = client.get(f"/v1/facets/{facet}/clusters/{leaf.id}/conversations", params={"limit": 1000},
                           headers={"Authorization": f"Bearer {ANALYST_KEY}"})
            assert r.status_code == 200 and r.json()["next_cursor"] is None, r.text
            seen |= {item["conversation_id"] for item in r.json()["items"]}
    return seen


def test_the_label_field_is_indexed_once_after_every_facets_pass_and_before_users_are_counted(world, monkeypatch):
    """Indexed after each facet's pass, the next facet's pass would write into an indexed field (~10x slower);
    the exact distinct-user counts filter on the field, so they come after the index."""
    import clio_stream.living.facet_pass as facet_pass

    store, emb, pub = world
    fill(store, emb, 80)
    events: list[tuple[str, object]] = []
    run_pass_, index_, users_ = facet_pass.run_pass, store.labels.index, store.labels.distinct_users

    def spy_pass(st, plan, *args, **kwargs):
        events.append(("pass", plan.facet))
        return run_pass_(st, plan, *args, **kwargs)

    def spy_index(version):
        events.append(("index", version))
        return index_(version)

    def spy_users(*args, **kwargs):
        events.append(("users", None))
        return users_(*args, **kwargs)

    monkeypatch.setattr(facet_pass, "run_pass", spy_pass)
    monkeypatch.setattr(store.labels, "index", spy_index)
    monkeypatch.setattr(store.labels, "distinct_users", spy_users)
    report = recluster_once(store, ScriptedLLM(sensible_script), emb, main_facets,
                            job_settings(recluster_sample_size=40), publish_dir=pub)
    assert report is not None
    kinds = [kind for kind, _ in events]
    passes = [facet for kind, facet in events if kind == "pass"]
    assert len(passes) >= 2 and len(set(passes)) == len(passes)  # more than one hierarchy facet, one pass each
    first_index = kinds.index("index")
    assert kinds[:first_index] == ["pass"] * len(passes)  # every pass before the (first) index
    assert "users" in kinds and kinds.index("users") > first_index
