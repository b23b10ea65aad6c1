"""Log lines: ISO dates in text, one parseable JSON object per line with --log-json / CLIO_LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import re

import pytest

from clio_stream.ops.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _fresh_setup(**kwargs: object) -> None:
    """Set-up is a no-op under existing handlers (pytest's, an embedding application's): start from none."""
    logging.getLogger().handlers[:] = []
    setup_logging(**kwargs)  # type: ignore[arg-type]


def test_json_lines_parse_and_carry_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    _fresh_setup(json_lines=True)
    log = logging.getLogger("clio_stream.test")
    log.info("stored %d points", 3)
    try:
        raise RuntimeError("qdrant down")
    except RuntimeError:
        log.exception("batch failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [d["message"] for d in lines] == ["stored 3 points", "batch failed"]
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "clio_stream.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", lines[0]["time"])
    assert "RuntimeError: qdrant down" in lines[1]["exception"]


def test_text_lines_carry_the_date(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIO_LOG_FORMAT", raising=False)
    _fresh_setup()
    logging.getLogger("clio_stream.test").warning("hello")
    line = capsys.readouterr().err.strip()
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} WARNING clio_stream.test: hello$", line)


def test_the_environment_selects_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIO_LOG_FORMAT", "json")
    _fresh_setup()
    logging.getLogger("x").info("child of up")
    assert json.loads(capsys.readouterr().err)["message"] == "child of up"
