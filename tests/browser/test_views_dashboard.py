"""The dashboard's views in headless Chromium, served by the API: the map, a breakdown, filters, "where would
this go" search, "what changed", and the live page before the first version. Each test keeps a screenshot
under artifacts/screenshots/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app
from clio_stream.devstack.processes import free_port
from clio_stream.settings import ClioSettings
from clio_stream.storage.documents import WORKER_METRICS, WorkerMetricsDoc
from clio_stream.storage.store import QdrantStore
from tests.browser.test_dashboard import browser  # noqa: F401 - module fixture: one Chromium per module
from tests.chromium import CHROMIUM
from tests.fixtures_site import HIDDEN_NODE_ID
from tests.fixtures_views import publish_two_versions, store_with_centroids, views_result, views_settings
from tests.integration.conftest import minilm  # noqa: F401 - session fixture

VIEWER_KEY = "views-viewer-" + "v" * 20
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

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


def _serve(settings: ClioSettings, store: QdrantStore, embedder: Any) -> tuple[Any, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, store=store, embedder=embedder), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="views-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, minilm: Any) -> Iterator[Served]:  # noqa: F811
    settings = views_settings(tmp_path_factory.mktemp("published"), api_keys=f"viewer:{VIEWER_KEY}",
                              api_dashboard_poll_s=0.5, api_status_cache_s=0)
    publish_two_versions(settings, minilm)
    store = store_with_centroids(minilm, views_result(minilm))
    server, thread, url = _serve(settings, store, minilm)
    try:
        yield Served(url, settings, store)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 403" not in msg.text
         else None)  # a 403 the page expects (analyst data asked with a viewer key) is not an error
    p.set_default_timeout(15_000)
    yield p
    context.close()
    assert not errors, f"JavaScript or CSP errors: {errors}"


def _tid(testid: str) -> str:
    return f'[data-testid="{testid}"]'


def _open(page: Any, served: Served, hash_: str = "") -> None:
    page.goto(f"{served.url}/?key={VIEWER_KEY}")
    page.wait_for_selector("body[data-state=ready]")
    if hash_:
        page.evaluate(f"location.hash = {hash_!r}")
    page.wait_for_selector("body[data-views=ready]")


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def test_map_renders_opens_the_tree_and_keeps_its_place_in_the_hash(served: Served, page: Any) -> None:
    _open(page, served)
    page.click(_tid("view-map"))
    expect(page.locator(_tid("map-svg"))).to_be_visible()
    circles = page.locator("svg.map circle")
    expect(circles).to_have_count(21)  # every visible node of the fixture, the withheld leaf nowhere
    assert page.locator(_tid(f"map-node-{HIDDEN_NODE_ID}")).count() == 0
    page.select_option(_tid("map-colour"), "mean:Concerning")
    page.wait_for_selector("body[data-views=ready]")
    _shot(page, "map")
    page.check(_tid("map-points"))  # conversation-level: a viewer is told it needs an analyst key
    expect(page.locator(_tid("map-points-note"))).to_contain_text("analyst role")
    assert page.locator("svg.map circle.point").count() == 0
    page.uncheck(_tid("map-points"))

    box = page.locator(_tid("map-svg")).bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -600)
    expect(page).to_have_url(re.compile(r"mz="))
    position = page.evaluate("location.hash.match(/mz=([^&]+)/)[1]")
    assert float(position.split(",")[2]) > 1.5
    _shot(page, "map-zoomed")
    page.reload()
    page.wait_for_selector("body[data-views=ready]")
    transform = page.locator("svg.map > g").get_attribute("transform")
    x, y, k = position.split(",")
    assert f"scale({float(k)})" in transform.replace(f"scale({k})", f"scale({float(k)})")

    page.locator(_tid("map-node-request-r0-m0-l1")).dispatch_event("click")
    expect(page.locator(_tid("node-request-r0-m0-l1"))).to_be_visible()
    expect(page.locator(_tid("map-panel"))).to_be_hidden()
    assert set(page.evaluate("window.clioSite.state.open")) >= {"request-r0", "request-r0-m0"}


def test_breakdown_panel_shows_safe_buckets_only(served: Served, page: Any) -> None:
    _open(page, served)
    page.click(_tid("breakdown-request-r0"))
    panel = page.locator(_tid("breakdown-view"))
    expect(panel).to_be_visible()
    expect(page.locator(_tid("breakdown-dim-Language"))).to_contain_text("French")
    expect(page.locator(_tid("breakdown-dim-Concerning"))).to_contain_text("1")
    # Two "pro" users have conversations here: under the three-user minimum, so neither "pro" nor "free" (which
    # would give "pro" away by subtraction) is shown.
    expect(page.locator(_tid("breakdown-withheld-metadata.tier"))).to_be_visible()
    assert "pro" not in page.locator(_tid("breakdown-dim-metadata.tier")).inner_text().split()
    assert page.locator(_tid("breakdown-dim-metadata.source")).count() == 0  # declared for analysts only
    assert "bd=request-r0" in page.evaluate("location.hash")
    _shot(page, "breakdown")
    page.click(_tid("breakdown-close"))
    expect(page.locator(_tid("breakdown-panel"))).to_be_hidden()


def test_filters_recount_the_tree_and_withhold_small_slices(served: Served, page: Any) -> None:
    _open(page, served)
    page.click(_tid("filter-toggle"))
    page.select_option(_tid("filter-field"), "metadata.tier")
    page.fill(_tid("filter-value"), "free")
    page.click(_tid("filter-apply"))
    expect(page.locator(_tid("filtered-total"))).to_contain_text("metadata.tier=free")
    expect(page.locator(_tid("filter-chip"))).to_have_count(1)
    expect(page.locator(_tid("tree"))).to_be_hidden()
    expect(page.locator(".fnode")).not_to_have_count(0)
    _shot(page, "filters")
    page.click(".chip-x")
    page.select_option(_tid("filter-field"), "metadata.tier")
    page.fill(_tid("filter-value"), "pro")
    page.click(_tid("filter-apply"))
    expect(page.locator(_tid("filtered-empty"))).to_be_visible()  # two users: no cluster can be shown
    page.click(_tid("filter-clear"))
    expect(page.locator(_tid("tree"))).to_be_visible()


def test_where_would_this_go(served: Served, page: Any) -> None:
    _open(page, served)
    page.fill(_tid("where-search"), "my pandas dataframe has NaN values after a merge, how do I debug it?")
    page.press(_tid("where-search"), "Enter")
    hit = page.locator(_tid("where-hit-request-r0-m0-l1"))
    expect(hit).to_be_visible()
    assert page.locator(_tid(f"where-hit-{HIDDEN_NODE_ID}")).count() == 0
    _shot(page, "search")
    hit.click()
    expect(page.locator(_tid("node-request-r0-m0-l1"))).to_be_visible()


def test_what_changed_panel(served: Served, page: Any) -> None:
    _open(page, served)
    page.click(_tid("view-changes"))
    expect(page.locator(_tid("changes-sizes"))).to_contain_text("Writing and communication")
    expect(page.locator(_tid("changes-sizes"))).to_contain_text("Fantasy short stories · 4 conv. (-1)")
    expect(page.locator(_tid("changes-renamed"))).to_contain_text("Software engineering · 22 conv., was “Software development”")
    _shot(page, "changes")


def test_live_page_before_the_first_version(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    settings = views_settings(tmp_path / "empty", api_keys=f"viewer:{VIEWER_KEY}", api_dashboard_poll_s=0.5,
                              api_status_cache_s=0)
    store = QdrantStore(":memory:")
    store.ensure_collections(4)
    now = time.time()
    store.states.write(WORKER_METRICS.of("w1"), WorkerMetricsDoc(worker_id="w1", processed=12, dead_lettered=1,
                                                                 health="ok", started_at=now - 60, updated_at=now))
    server, thread, url = _serve(settings, store, None)
    context = browser.new_context(viewport={"width": 1200, "height": 760})
    p = context.new_page()
    try:
        p.goto(f"{url}/?key={VIEWER_KEY}")
        p.wait_for_selector("body[data-state=ready]")
        expect(p.locator(_tid("live-processed"))).to_have_text("12")
        expect(p.locator(_tid("live-dlq"))).to_have_text("1")
        expect(p.locator(_tid("live-next"))).to_have_text("18")  # 30 values needed for the first clustering
        expect(p.locator(_tid("live-workers"))).to_contain_text("w1")
        _shot(p, "live-empty")
    finally:
        context.close()
        server.should_exit = True
        thread.join(timeout=10)
        store.close()
