"""The configuration an operator looks up matches the code: the generated reference and ``config show``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clio_stream.cli.config import reference_markdown
from clio_stream.cli.main import main
from clio_stream.secret_settings import SECRET_SETTINGS
from clio_stream.settings import ClioSettings

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_reference_in_docs_is_current() -> None:
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `clio-stream config reference > docs/configuration.md`")


def test_every_setting_is_described_in_the_reference() -> None:
    undescribed = [n for n, f in ClioSettings.model_fields.items() if not (f.description or "").strip()]
    assert undescribed == []
    text = reference_markdown()
    assert all(f"| `{name}` |" in text for name in ClioSettings.model_fields)


def test_config_show_says_where_each_value_came_from_and_masks_secrets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CLIO_LLM_API_KEY", "sk-very-secret-value")
    monkeypatch.setenv("CLIO_MAX_POLL_RECORDS", "7")
    assert main(["config", "show", "--json", "--llm-model", "some-model"]) == 0
    out = capsys.readouterr().out
    assert "sk-very-secret-value" not in out
    doc = json.loads(out)
    assert doc["llm_api_key"] == {"value": "set", "source": "env"}
    assert doc["max_poll_records"] == {"value": "7", "source": "env"}
    assert doc["llm_model"] == {"value": "'some-model'", "source": "override"}
    assert doc["seed"]["source"] == "default"
    assert set(doc) == set(ClioSettings.model_fields) and SECRET_SETTINGS <= set(doc)


def test_version_and_defaults_in_help(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("clio-stream ")
    with pytest.raises(SystemExit):
        main(["batch", "--help"])
    assert "(default: 0)" in capsys.readouterr().out  # --limit


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="llm_backend"):
        ClioSettings(llm_backend="vlm")
