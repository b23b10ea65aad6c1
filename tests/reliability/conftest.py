"""The fault and abuse suite: every test here is marked ``reliability`` and reports its figures.

Run it alone with ``pytest -m reliability`` (short form) or ``pytest tests/reliability --long`` (full form).
Each test records what it measured through ``reliability_report``; at the end of the session the figures are
merged into ``benchmarks/results/reliability-<short|long>.json`` (by test name, each with the time it was
recorded) and printed as a table, so the closing note can quote a full run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

log = logging.getLogger(__name__)

RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def reliability_report(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``reliability_report(**figures)`` records figures under the current test's name."""

    def record(**figures: Any) -> None:
        _FIGURES.setdefault(request.node.name, {}).update(figures)

    return record


@pytest.fixture(scope="session", autouse=True)
def _write_reliability_report(long_run: bool) -> Iterator[None]:
    yield
    if not _FIGURES:
        return
    mode = "long" if long_run else "short"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"reliability-{mode}.json"
    # Merge: a session that ran only some tests updates theirs and keeps the other tests' last figures.
    try:
        previous = json.loads(out.read_text()).get("tests", {}) if out.exists() else {}
    except (OSError, ValueError):
        previous = {}
    finished = time.time()
    runs = {name: {**figures, "recorded_at": round(finished)} for name, figures in _FIGURES.items()}
    out.write_text(json.dumps({"mode": mode, "updated_at": round(finished), "tests": {**previous, **runs}},
                              indent=2, sort_keys=True))
    lines = [f"reliability figures ({mode}) -> {out}"]
    for test, figures in sorted(_FIGURES.items()):
        lines.append(f"  {test}")
        lines.extend(f"    {k:<40} {v}" for k, v in sorted(figures.items()))
    log.warning("\n".join(lines))
