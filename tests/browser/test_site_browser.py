"""Drive the generated site in headless Chromium: tree, conversation view, URL state, sorting, reload."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clio_stream.site import start_site_server_in_thread, write_site
from tests.fixtures_site import CONCERNING, HIDDEN_NAME, LANGUAGE, REQUEST, SECRET_TOKEN, make_site_fixture

from tests.chromium import CHROMIUM, launch
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright python package is not installed")
expect = sync_api.expect
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def site_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    site = write_site(make_site_fixture().result, tmp_path_factory.mktemp("site") / "site", chunk_size=4,
                      title="clio-stream fixture")
    server, url = start_site_server_in_thread(site, "127.0.0.1", 0)
    try:
        yield site, url
    finally:
        server.shutdown()
        server.server_close()


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
    p.set_default_timeout(15_000)
    yield p
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def _tid(testid: str) -> str:
    return f'[data-testid="{testid}"]'


def _open(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]")


def _wait_ready(page: Any) -> None:
    page.wait_for_function("document.body.dataset.state === 'ready' && !document.getElementById('tree').hasAttribute('aria-busy')")


def _root_order(page: Any) -> list[str]:
    return page.eval_on_selector_all("#tree > li.node[data-node-id]", "els => els.map(e => e.dataset.nodeId)")


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_tree_conversation_and_url_roundtrip(site_url: tuple[Path, str], page: Any, browser: Any) -> None:
    _, url = site_url
    _open(page, url)
    expect(page.locator("#tree > li.node")).to_have_count(3)
    expect(page.locator(_tid("facet-select"))).to_have_value(REQUEST)
    expect(page.locator(_tid("node-request-r0"))).to_contain_text("Software development")
    expect(page.locator(_tid("node-request-r0")).locator(".pct").first).to_have_text("37%")  # 22 of 60
    _shot(page, "01-roots")

    # Expand two levels, then the leaf to list its conversations.
    page.click(_tid("node-toggle-request-r0"))
    expect(page.locator(_tid("node-request-r0-m0"))).to_be_visible()
    page.click(_tid("node-toggle-request-r0-m0"))
    expect(page.locator(_tid("node-request-r0-m0-l0"))).to_be_visible()
    page.click(_tid("node-toggle-request-r0-m0-l0"))
    members = page.locator(f'{_tid("members-request-r0-m0-l0")} [data-conversation-id]')
    expect(members).to_have_count(4)  # one page of chunk_size
    page.click(_tid("more-request-r0-m0-l0"))
    expect(members).to_have_count(6)
    expect(page.locator(_tid("more-request-r0-m0-l0"))).to_have_count(0)

    page.click(_tid("conversation-conv-0002"))
    view = page.locator(_tid("conversation-view"))
    expect(view).to_have_attribute("data-conversation-id", "conv-0002")
    expect(view.locator(_tid(f"facet-value-{REQUEST}"))).to_contain_text("fixing python import errors")
    expect(view.locator(_tid(f"facet-value-{LANGUAGE}"))).to_contain_text("French")
    expect(view.locator(_tid(f"facet-value-{CONCERNING}"))).to_have_text(__import__("re").compile(r"^[1-5]$"))
    expect(view.locator(_tid("message-0"))).to_contain_text("Can you help me with fixing python import errors")
    # The injected HTML is shown as text, never parsed.
    expect(view).to_contain_text('<img src=x onerror="window.__clioXss=1">')
    assert view.locator("img").count() == 0
    assert page.evaluate("window.__clioXss") is None
    _wait_ready(page)
    _shot(page, "02-expanded-conversation")

    # The URL alone reopens the same view in a fresh page.
    shared = page.url
    assert "#" in shared
    state = page.evaluate("window.clioSite.state")
    assert state["conversation"] == "conv-0002"
    assert set(state["open"]) == {"request-r0", "request-r0-m0", "request-r0-m0-l0"}
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        fresh = context.new_page()
        _open(fresh, shared)
        for nid in ["request-r0", "request-r0-m0", "request-r0-m0-l0"]:
            expect(fresh.locator(_tid(f"node-{nid}"))).to_have_attribute("aria-expanded", "true")
        expect(fresh.locator(_tid("node-request-r1"))).to_have_attribute("aria-expanded", "false")
        expect(fresh.locator(f'{_tid("members-request-r0-m0-l0")} [data-conversation-id]')).to_have_count(6)
        fresh_view = fresh.locator(_tid("conversation-view"))
        expect(fresh_view).to_have_attribute("data-conversation-id", "conv-0002")
        expect(fresh_view.locator(_tid(f"facet-value-{REQUEST}"))).to_contain_text("fixing python import errors")
        assert fresh.evaluate("window.clioSite.state") == state
        _shot(fresh, "03-reopened-from-url")
    finally:
        context.close()

    # Collapsing updates the hash; closing the conversation hides the view.
    page.click(_tid("node-toggle-request-r0"))
    expect(page.locator(_tid("node-request-r0"))).to_have_attribute("aria-expanded", "false")
    assert "request-r0-m0" in page.evaluate("window.clioSite.state.open")  # inner state kept for re-expanding
    page.click(_tid("conversation-close"))
    expect(page.locator(_tid("conversation-view"))).to_have_count(0)


def test_withheld_cluster_is_shown_only_as_other(site_url: tuple[Path, str], page: Any) -> None:
    _, url = site_url
    _open(page, url + "#open=request-r2,request-r2-m1")
    expect(page.locator(_tid("node-request-r2-m1-l0"))).to_be_visible()
    other = page.locator(_tid("other-request-r2-m1"))
    expect(other).to_contain_text("Other (withheld)")
    expect(other.locator(".size")).to_have_text("3")
    content = page.content()
    assert HIDDEN_NAME not in content and SECRET_TOKEN not in content
    _shot(page, "04-withheld-other")


def test_sort_by_numeric_mean(site_url: tuple[Path, str], page: Any) -> None:
    _, url = site_url
    _open(page, url)
    assert _root_order(page) == ["request-r0", "request-r2", "request-r1"]  # by size: 22, 20, 18
    page.select_option(_tid("sort-select"), f"mean:{CONCERNING}")
    page.wait_for_function("window.clioSite.state && window.clioSite.state.sort === 'mean:Concerning'")
    _wait_ready(page)
    order = _root_order(page)
    means = [float(page.text_content(_tid(f"mean-{nid}-{CONCERNING}"))) for nid in order]
    assert means == sorted(means, reverse=True)
    assert order == ["request-r2", "request-r1", "request-r0"]
    assert "sort=mean%3AConcerning" in page.url

    # Sorting applies within expanded subtrees too, and survives a reload.
    page.click(_tid("node-toggle-request-r2"))
    page.click(_tid("node-toggle-request-r2-m1"))
    expect(page.locator(_tid("node-request-r2-m1-l0"))).to_be_visible()
    page.reload()
    page.wait_for_selector("body[data-state=ready]")
    expect(page.locator(_tid("sort-select"))).to_have_value(f"mean:{CONCERNING}")
    assert _root_order(page) == ["request-r2", "request-r1", "request-r0"]
    kids = page.eval_on_selector_all(f'{_tid("children-request-r2")} > li.node[data-node-id]',
                                     "els => els.map(e => e.dataset.nodeId)")
    kid_means = [float(page.text_content(_tid(f"mean-{nid}-{CONCERNING}"))) for nid in kids]
    assert kid_means == sorted(kid_means, reverse=True)
    _shot(page, "05-sorted-by-mean")

    page.select_option(_tid("sort-select"), "name")
    page.wait_for_function("window.clioSite.state.sort === 'name'")
    _wait_ready(page)
    assert _root_order(page) == ["request-r2", "request-r0", "request-r1"]  # Everyday, Software, Writing


def test_reload_after_republish_keeps_view_state(site_url: tuple[Path, str], page: Any) -> None:
    site, url = site_url
    _open(page, url + "#open=request-r0&c=conv-0003")
    expect(page.locator(_tid("conversation-view"))).to_have_attribute("data-conversation-id", "conv-0003")
    old_version = page.evaluate("window.clioSite.version")
    changed = make_site_fixture().result
    changed.hierarchies[REQUEST].nodes["request-r0-m0"].name = "Debugging Python code (v2)"
    write_site(changed, site, chunk_size=4, title="clio-stream fixture")
    new_version = page.evaluate("window.clioSite.reload()")
    assert new_version != old_version
    expect(page.locator(_tid("node-name-request-r0-m0"))).to_have_text("Debugging Python code (v2)")
    expect(page.locator(_tid("node-request-r0"))).to_have_attribute("aria-expanded", "true")
    expect(page.locator(_tid("conversation-view"))).to_have_attribute("data-conversation-id", "conv-0003")
    assert page.evaluate("window.clioSite.checkForUpdate()") is False


def test_show_conversations_false_and_html_root(tmp_path: Path, page: Any) -> None:
    site = write_site(make_site_fixture().result, tmp_path / "site", chunk_size=10, html_root="/clio/usage",
                      show_conversations=False)
    server, url = start_site_server_in_thread(site, "127.0.0.1", 0, html_root="/clio/usage")
    try:
        assert url.endswith("/clio/usage/")
        _open(page, url + "#open=request-r1,request-r1-m1,request-r1-m1-l1&c=conv-0038")
        view = page.locator(_tid("conversation-view"))
        expect(view.locator(_tid(f"facet-value-{LANGUAGE}"))).not_to_be_empty()
        expect(view.locator(_tid("messages-not-published"))).to_be_visible()
        assert view.locator(".msg").count() == 0
        # The injected summary is escaped in the tree too.
        expect(page.locator(_tid("node-summary-request-r1-m1-l1"))).to_contain_text("<img src=x")
        assert page.locator("#tree img").count() == 0
        _shot(page, "06-no-messages-subpath")
    finally:
        server.shutdown()
        server.server_close()


def test_cluster_link_in_conversation_opens_its_path(site_url: tuple[Path, str], page: Any) -> None:
    _, url = site_url
    _open(page, url + "#c=conv-0042")
    link = page.locator(_tid(f"cluster-link-{REQUEST}"))
    expect(link).to_have_text("Vegetarian dinner recipes")
    link.click()
    expect(page.locator(_tid("conversation-conv-0042"))).to_have_class(__import__("re").compile("selected"))
    assert page.evaluate("window.clioSite.state.open") == ["request-r2", "request-r2-m0", "request-r2-m0-l0"]


def test_trends_sparkline_emerging_badge_and_growth_sort(site_url: tuple[Path, str], page: Any) -> None:
    """The fixture's leaf request-r1-m0-l0 is all new since the previous version: flagged, and r1 sorts first."""
    _, url = site_url
    _open(page, url + "#open=request-r1,request-r1-m0")
    badge = page.locator(_tid("emerging-request-r1-m0-l0"))
    expect(badge).to_be_visible()
    expect(badge).to_contain_text("emerging +500%")
    expect(page.locator(_tid("emerging-request-r0"))).to_have_count(0)
    spark = page.locator(f'{_tid("trend-request-r1")} .spark > span')
    assert spark.count() == 8  # one bar per window
    expect(page.locator(_tid("trend-request-r1"))).to_contain_text("+5 new since last version")
    page.select_option(_tid("sort-select"), "growth")
    page.wait_for_function("window.clioSite.state.sort === 'growth'")
    _wait_ready(page)
    # Growth 0.38, 0, 0 (ties by size: 22, 20). r2's only new members are its withheld leaf's: they count nowhere.
    assert _root_order(page) == ["request-r1", "request-r0", "request-r2"]
    assert "sort=growth" in page.url
    _shot(page, "07-trends-emerging")


def test_weak_name_mark_and_keywords(tmp_path: Path, page: Any) -> None:
    """The name check's result as a reader sees it: keywords under a checked name, a mark on a weak one."""
    result = make_site_fixture().result
    nodes = result.hierarchies["Request"].nodes
    weak, checked = nodes["request-r1-m0-l0"], nodes["request-r0-m0-l0"]
    weak.keywords, weak.weak_name, weak.llm_name = "visa passport renewal", True, "Help the user"
    weak.name = "Visa, passport, renewal"
    checked.keywords = "recipe dinner quick"
    site = write_site(result, tmp_path / "site", chunk_size=4)
    server, url = start_site_server_in_thread(site, "127.0.0.1", 0)
    try:
        _open(page, url + "#open=request-r0,request-r0-m0,request-r1,request-r1-m0")
        expect(page.locator(_tid("weak-name-request-r1-m0-l0"))).to_have_text("weak name")
        expect(page.locator(_tid("node-name-request-r1-m0-l0"))).to_have_text("Visa, passport, renewal")
        expect(page.locator(_tid("node-keywords-request-r1-m0-l0"))).to_have_count(0)  # already the name
        expect(page.locator(_tid("node-keywords-request-r0-m0-l0"))).to_have_text("Keywords: recipe dinner quick")
        expect(page.locator(_tid("weak-name-request-r0-m0-l0"))).to_have_count(0)
        assert "Help the user" not in page.content()  # the unaudited LLM name is never published
        _shot(page, "08-weak-name-keywords")
    finally:
        server.shutdown()
        server.server_close()
