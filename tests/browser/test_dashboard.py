"""The dashboard served by the API (uvicorn in a thread) in headless Chromium.

Proves: the one-time ``?key=`` login becomes a cookie and leaves the URL, the
tree and the live status panel load, a newly published version replaces the
page's data by itself while the URL hash (open nodes) stays, the search box
finds visible clusters only, and the page runs under its Content-Security-Policy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from clio_stream.storage.published import PublishedVersions
from clio_stream.devstack.processes import free_port
from clio_stream.settings import ClioSettings
from clio_stream.storage.store import QdrantStore
from tests.fixtures_site import HIDDEN_NAME, REQUEST, make_site_fixture

from tests.chromium import CHROMIUM, launch
VIEWER_KEY = "dash-viewer-" + "v" * 20

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")
uvicorn = pytest.importorskip("uvicorn")
expect = sync_api.expect


@dataclass
class Served:
    url: str
    settings: ClioSettings
    store: QdrantStore


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = ClioSettings(
        publish_dir=tmp_path_factory.mktemp("published"), site_chunk_size=4, api_dashboard_poll_s=0.5,
        api_keys=f"viewer:{VIEWER_KEY},admin:dash-admin-{'d' * 20}", api_status_cache_s=0,
    )
    PublishedVersions.at(settings.publish_dir).publish(make_site_fixture().result, "v1", settings=settings)
    store = QdrantStore(":memory:")
    store.ensure_collections(4)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store=store), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="dashboard-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(url=f"http://127.0.0.1:{port}", settings=settings, store=store)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = launch(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    p.set_default_timeout(15_000)
    yield p
    context.close()
    assert not errors, f"JavaScript or CSP errors: {errors}"


def _tid(testid: str) -> str:
    return f'[data-testid="{testid}"]'


def _login(page: Any, served: Served) -> None:
    page.goto(f"{served.url}/?key={VIEWER_KEY}")
    page.wait_for_selector("body[data-state=ready]")
    assert "key=" not in page.url


def test_key_login_tree_live_panel_and_self_refresh(served: Served, page: Any) -> None:
    _login(page, served)
    expect(page.locator("#tree > li.node")).to_have_count(3)
    expect(page.locator(_tid("live-status"))).to_be_visible()
    expect(page.locator(_tid("live-version"))).to_have_text("v1")
    expect(page.locator(_tid("live-status"))).to_contain_text("store ok")

    page.click(_tid("node-toggle-request-r0"))
    page.click(_tid("node-toggle-request-r0-m0"))
    expect(page.locator(_tid("node-request-r0-m0-l0"))).to_be_visible()
    hash_before = page.evaluate("location.hash")
    assert "open=" in hash_before
    renders_before = page.evaluate("window.clioSite.renders")

    changed = make_site_fixture().result.model_copy(deep=True)
    changed.hierarchies[REQUEST].nodes["request-r0"].name = "Software engineering"
    changed.hierarchies[REQUEST].nodes["request-r0-m0-l0"].name = "Resolving Python import errors"
    PublishedVersions.at(served.settings.publish_dir).publish(changed, "v2", settings=served.settings)

    # No reload by the test: the page's own polling notices the new version.
    expect(page.locator(_tid("node-name-request-r0"))).to_have_text("Software engineering")
    expect(page.locator(_tid("node-name-request-r0-m0-l0"))).to_have_text("Resolving Python import errors")
    expect(page.locator(_tid("live-version"))).to_have_text("v2")
    assert page.evaluate("location.hash") == hash_before
    assert page.evaluate("window.clioSite.renders") > renders_before
    for nid in ("request-r0", "request-r0-m0"):
        expect(page.locator(_tid(f"node-{nid}"))).to_have_attribute("aria-expanded", "true")
    assert "key=" not in page.url


def test_search_finds_visible_clusters_only(served: Served, page: Any) -> None:
    _login(page, served)
    page.fill(_tid("cluster-search"), "pandas")
    hit = page.locator(_tid("search-result-request-r0-m0-l1"))
    expect(hit).to_have_text("Debugging pandas dataframes")
    hit.click()
    node = page.locator(_tid("node-request-r0-m0-l1"))
    expect(node).to_be_visible()
    expect(page.locator(_tid("node-request-r0-m0"))).to_have_attribute("aria-expanded", "true")
    assert "request-r0-m0" in page.evaluate("window.clioSite.state.open")
    page.fill(_tid("cluster-search"), HIDDEN_NAME.split()[0])
    expect(page.locator(_tid("search-empty"))).to_be_visible()
    page.fill(_tid("cluster-search"), "travel")
    expect(page.locator(".search-hit")).to_have_count(1)  # "Travel planning"; its withheld leaf is nowhere


def test_dashboard_needs_a_key(served: Served, page: Any) -> None:
    response = page.goto(f"{served.url}/")
    assert response is not None and response.status == 401
    expect(page.locator("h1")).to_have_text("Key required")
    response = page.goto(f"{served.url}/?key=wrong-key-wrong-key")
    assert response is not None and response.status == 401
    assert page.evaluate("document.cookie") == ""  # HttpOnly: never visible to scripts
    data = page.request.get(f"{served.url}/data/version.json")
    assert data.status == 401


def test_a_viewer_sees_why_member_lists_are_not_shown(served: Served, page: Any) -> None:
    """Member pages are analyst data (403 to a viewer): the page says so instead of failing to load."""
    _login(page, served)
    for nid in ("request-r0", "request-r0-m0", "request-r0-m0-l0"):
        page.click(_tid(f"node-toggle-{nid}"))
    expect(page.locator(_tid("members-forbidden-request-r0-m0-l0"))).to_contain_text("analyst key")
    expect(page.locator("body")).to_have_attribute("data-state", "ready")
    expect(page.locator(".member")).to_have_count(0)
    page.evaluate("location.hash = location.hash + '&c=conv-0001'")
    expect(page.locator(_tid("conversation-forbidden"))).to_contain_text("analyst key")


def test_the_live_line_shows_a_running_reclustering_and_restarted_parts(served: Served, page: Any) -> None:
    """What ``GET /v1/status`` knows of a running job and of ``up``'s supervised parts reaches the page."""
    from clio_stream.storage.documents import (CLUSTERING_LOCK, RECLUSTER_PROGRESS, UP_CHILDREN, ChildStatus,
                                               ReclusterProgress, UpChildren)

    now = time.time()
    states = served.store.states
    token = served.store.locks.acquire(CLUSTERING_LOCK, "test-job", 60)
    assert token is not None
    try:
        states.write(RECLUSTER_PROGRESS, ReclusterProgress(version=3, stage="cluster and name", facet="Request",
                                                           facet_index=1, facets=2, points=100, fraction=0.4,
                                                           started_at=now - 60, updated_at=now, eta_s=150))
        states.write(UP_CHILDREN, UpChildren(updated_at=now, children=[
            ChildStatus(name="api", alive=True), ChildStatus(name="consumer-1", alive=False, restarts=2,
                                                             last_exit_code=137, last_exit_at=now)]))
        _login(page, served)
        expect(page.locator(_tid("live-recluster"))).to_have_text("re-clustering v3 40 %, about 2 min left")
        expect(page.locator(_tid("live-parts"))).to_have_text("consumer-1 down (2 restarts, last exit 137)")
        expect(page.locator(_tid("live-status"))).to_have_attribute("data-state", "degraded")
    finally:
        served.store.locks.release(CLUSTERING_LOCK, token)
        states.write(UP_CHILDREN, UpChildren(updated_at=0.0, children=[]))  # stale: no `up` any more
