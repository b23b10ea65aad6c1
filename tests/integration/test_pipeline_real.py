"""run_clio end to end on the real vLLM engine and a real embedding model, then the site in Chromium."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from clio_stream.batch_input import load_shared_dataset

from clio_stream.stages.prepare import prepare_conversations
from clio_stream.domain.facets import main_facets
from clio_stream.pipeline import run_clio
from clio_stream.settings import ClioSettings
from tests.chromium import CHROMIUM, launch

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def four_base_clusters(n: int) -> int:
    return max(2, n // 4)


@pytest.fixture(scope="module")
def real_run(vllm_engine, minilm, tmp_path_factory):
    records = load_shared_dataset("mt_bench", DATA)
    convs, _ = prepare_conversations(records)
    data = [{"id": c.id, "user_id": f"u{i % 7}", "conversation": [m.model_dump() for m in c.messages]}
            for i, c in enumerate(convs[:24])]
    out = tmp_path_factory.mktemp("real-run")
    settings = ClioSettings(show_progress=False, n_base_clusters=four_base_clusters, min_top_level_size=2,
                            n_name_description_samples_per_cluster=2, n_rename_samples=2, n_categorize_samples=2,
                            min_cluster_conversations=2, min_cluster_users=2, audit_cluster_names=True,
                            audit_min_score=1)
    result = run_clio(main_facets, vllm_engine, minilm, data, output_dir=out, settings=settings)
    return result, out, settings, data


def test_facets_hierarchy_and_stats(real_run):
    result, out, _, data = real_run
    assert len(result.conversations) == 24
    assert set(result.hierarchies) == {"Request", "Task"}
    for name, h in result.hierarchies.items():
        assert h.depth() >= 2, f"{name} has a single level"
        assert len(h.root_ids) <= 2
        leaves = h.leaves()
        assert sum(leaf.size for leaf in leaves) == sum(1 for fv in result.facet_values if fv.values[name].value)
        for node in h.nodes.values():
            # Named and summarised; a summary failing the name check is kept (given_summary), not shown.
            assert node.name and node.given_summary
            assert "Concerning" in node.numeric
    unparseable = result.stats.unparseable_facet_values
    # Structured outputs make the numeric facet always parse.
    assert unparseable["Concerning"] == 0
    assert unparseable["Request"] <= 4
    assert (out / "result.json").exists() and (out / "site" / "index.html").exists()
    assert result.stats.audit["Request"], "the auditor rated the clusters"


def test_resume_reuses_every_stage(real_run, vllm_engine, minilm):
    result, out, settings, data = real_run
    again = run_clio(main_facets, vllm_engine, minilm, data, output_dir=out, settings=settings)
    assert {"facets", "embeddings", "base-request", "hierarchy-request"} <= set(again.stats.checkpoint_hits)
    # Only the audit (not checkpointed) calls the LLM again.
    assert set(again.stats.llm.by_template) <= {"audit_cluster"}


def test_site_files_have_concerning_means(real_run):
    _, out, _, _ = real_run
    manifest = json.loads(gzip.decompress((out / "site" / "data" / "manifest.json.gz").read_bytes()))
    request = next(f for f in manifest["facets"] if f["name"] == "Request")
    assert request["roots"] and all("Concerning" in r["numeric"] for r in request["roots"])
    assert all(1 <= r["numeric"]["Concerning"]["mean"] <= 5 for r in request["roots"])


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is missing")
def test_real_site_in_chromium(real_run):
    sync_api = pytest.importorskip("playwright.sync_api")
    from clio_stream.site import start_site_server_in_thread

    _, out, _, _ = real_run
    server, url = start_site_server_in_thread(out / "site", "127.0.0.1", 0)
    shots = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # Every data file arrives late, as on a loaded machine or a slow link: the walk below must wait for
            # what each click loads (CI once failed when a render came after the walk had looked).
            page.route("**/data/**", lambda route: (time.sleep(0.5), route.continue_()))
            page.goto(url)
            page.wait_for_selector("body[data-state=ready]")
            roots = page.locator("#tree > li.node[data-node-id]")
            assert roots.count() >= 1
            root_id = roots.first.get_attribute("data-node-id")
            page.click(f'[data-testid="node-toggle-{root_id}"]')
            page.wait_for_selector(f'[data-testid="node-{root_id}"][aria-expanded="true"]')
            # Walk down to a leaf and open its first conversation. Each step waits for the opened node's
            # children or members to render: the click only starts an asynchronous load and re-render.
            node_id = root_id
            for _ in range(8):
                page.wait_for_selector(f'[data-testid="children-{node_id}"], [data-testid="members-{node_id}"]',
                                       timeout=90_000)  # a loaded 2-core machine can take longer than 30 s
                if page.locator(f'[data-testid="members-{node_id}"]').count():
                    break
                child = page.locator(f'[data-testid="children-{node_id}"] > li.node[data-node-id]'
                                     f':has(> .row > button.toggle:not([disabled]))').first
                node_id = child.get_attribute("data-node-id")
                page.click(f'[data-testid="node-toggle-{node_id}"]')
            conv = page.locator(f'[data-testid="members-{node_id}"] [data-conversation-id]').first
            conv.wait_for()
            conv.click()
            view = page.locator('[data-testid="conversation-view"]')
            view.wait_for()
            assert "Concerning" in view.inner_text()
            page.screenshot(path=str(shots / "real-run.png"), full_page=True)
            shared = page.url
            page2 = browser.new_page()
            page2.goto(shared)
            page2.wait_for_selector('[data-testid="conversation-view"]')
            assert page2.evaluate("window.clioSite.state") == page.evaluate("window.clioSite.state")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
