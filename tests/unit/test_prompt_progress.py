"""Per-prompt progress of the server back-end: a log line at each further tenth, rate-limited, and quiet for
small calls."""

from __future__ import annotations

import logging

import pytest

from clio_stream.llm.progress import PromptProgress


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "clio_stream.llm.progress"]


def test_a_line_per_tenth_with_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    now = [0.0]
    p = PromptProgress(100, "name Request clusters", bar=False, log_every_s=0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += 1.0  # one prompt a second
        p.one_done()
    lines = _lines(caplog)
    assert len(lines) == 10 and lines[0].startswith("name Request clusters: 10/100 prompts")
    assert "1.0/s, about 90 s left" in lines[0] and lines[-1].startswith("name Request clusters: 100/100")


def test_rate_limited_and_quiet_for_small_calls(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    p = PromptProgress(100, "extract", bar=False, log_every_s=3600, clock=lambda: 0.0)
    for _ in range(100):
        p.one_done()
    assert len(_lines(caplog)) == 1  # only the last one, at 100 %
    small = PromptProgress(5, "tiny", bar=False, log_every_s=0, clock=lambda: 0.0)
    for _ in range(5):
        small.one_done()
    assert len(_lines(caplog)) == 1
