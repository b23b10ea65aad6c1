"""The settings as an operator looks them up: a generated reference, and the effective values with their source.

``docs/configuration.md`` is ``reference_markdown()`` written out (``clio-stream config reference``); a unit test
fails when the file is stale, so the reference cannot drift from ``ClioSettings``. ``effective_values`` is what
``clio-stream config show`` prints: every setting's value in this process and where it came from, secrets masked.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from clio_stream.cli.options import SubParser, add_model_args, model_overrides, settings_from_args
from clio_stream.secret_settings import SECRET_SETTINGS
from clio_stream.settings import SEED_ALIASES, ClioSettings, toml_path

ENV_PREFIX = "CLIO_"


class Source(str, enum.Enum):
    """Where a setting's effective value came from, highest priority first."""

    OVERRIDE = "override"
    ENV = "env"
    TOML = "toml"
    DEFAULT = "default"


@dataclass(frozen=True)
class SettingValue:
    """One row of ``config show``."""

    name: str
    value: str
    source: Source


def env_name(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _show(value: Any) -> str:
    """A value as a reader types it: callables by import path, containers as JSON."""
    if callable(value) and not isinstance(value, type):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
    if hasattr(value, "get_secret_value"):
        return "****"
    if isinstance(value, (dict, list, tuple)):  # typed items (custom facets, alert rules) as their JSON
        return json.dumps(value, default=lambda v: v.model_dump(mode="json") if hasattr(v, "model_dump") else str(v))
    if isinstance(value, Path):
        return str(value)
    return repr(value) if isinstance(value, str) else str(value)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        made = info.default_factory()  # type: ignore[call-arg]
        if isinstance(made, Path):  # a path under the user's home differs per machine: show the rule
            return "`~/.cache/clio-stream` (or `$CLIO_CACHE_DIR`)"
        return f"`{_show(made)}`"
    if info.default is PydanticUndefined:
        return "(required)"
    return f"`{_show(info.default)}`"


def _type(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace("pathlib.", "").replace("pydantic.types.", "")


def reference_markdown() -> str:
    """The whole reference: one table row per setting, in declaration order (the order groups them)."""
    seed_names: dict[str, list[str]] = {}
    for camel, snake in SEED_ALIASES.items():
        seed_names.setdefault(snake, []).append(camel)
    rows = ["| setting | environment | type | default | seed name | what it does |", "|---|---|---|---|---|---|"]
    for name, info in ClioSettings.model_fields.items():
        desc = (info.description or "").replace("|", "\\|").replace("\n", " ")
        seed = ", ".join(f"`{c}`" for c in seed_names.get(name, []))
        kind = _type(info).replace("|", "\\|")
        default = _default(info).replace("|", "\\|")
        rows.append(f"| `{name}` | `{env_name(name)}` | {kind} | {default} | {seed} | {desc} |")
    head = [
        "# Configuration reference",
        "",
        "Generated from `clio_stream.settings.ClioSettings` by `clio-stream config reference > docs/configuration.md`;",
        "a unit test fails when this file is stale. Values come from, highest priority first: keyword arguments",
        "(or command-line flags), environment variables `CLIO_<NAME>` (nested keys with `__`), a TOML file",
        "(`$CLIO_CONFIG` or `./clio-stream.toml`), then the defaults below. `clio-stream config show` prints the",
        "effective value of each setting in the current environment and where it came from (secrets masked);",
        "`clio-stream config check` refuses settings that are unsafe outside a laptop demo.",
        "Callables can be given in the environment or TOML as `package.module.function` import strings.",
        "",
    ]
    return "\n".join(head + rows) + "\n"


def _toml_keys() -> set[str]:
    path = toml_path()
    if path is None or not path.exists():
        return set()
    with path.open("rb") as fh:
        return set(tomllib.load(fh))


def effective_values(settings: ClioSettings, overrides: set[str] = frozenset()) -> list[SettingValue]:
    """Every setting's value in ``settings`` and its source; secrets as ``set`` / ``unset``."""
    in_toml = _toml_keys()
    out: list[SettingValue] = []
    values = dict(settings)  # field name -> value, as the model holds it
    for name in ClioSettings.model_fields:
        value = values[name]
        if name in overrides:
            source = Source.OVERRIDE
        elif env_name(name) in os.environ or any(k.startswith(env_name(name) + "__") for k in os.environ):
            source = Source.ENV
        elif name in in_toml:
            source = Source.TOML
        else:
            source = Source.DEFAULT
        shown = ("set" if value not in (None, "") else "unset") if name in SECRET_SETTINGS else _show(value)
        out.append(SettingValue(name, shown, source))
    return out


def cmd_config_show(args: argparse.Namespace) -> int:
    """Every setting's effective value in this environment and where it came from (secrets masked)."""
    rows = effective_values(settings_from_args(args), overrides=set(model_overrides(args)))
    if args.json:
        doc = {r.name: {"value": r.value, "source": r.source.value} for r in rows}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    width = max(len(r.name) for r in rows)
    for r in rows:
        sys.stdout.write(f"{r.name:<{width}}  {r.source.value:<8}  {r.value}\n")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Exit 1 when a setting is unsafe outside a laptop demo (``settings_check``); warnings fail with --strict."""
    from clio_stream.settings_check import Severity, check_settings

    findings = check_settings(settings_from_args(args))
    for f in findings:
        sys.stdout.write(f"{f.severity.value:<8} {f.setting}: {f.message}\n")
    errors = sum(f.severity == Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    sys.stdout.write(f"{errors} error(s), {warnings} warning(s)\n")
    return 1 if errors or (args.strict and warnings) else 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(reference_markdown())
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("config", help="look up the settings: effective values, or the generated reference")
    sp.set_defaults(func=cmd_config_show, json=False)  # `clio-stream config` alone shows the values
    config = sp.add_subparsers(dest="config_command", parser_class=SubParser)
    cp = config.add_parser("show", help="every setting's effective value and its source (secrets masked)")
    cp.add_argument("--json", action="store_true", help="as JSON ({name: {value, source}})")
    add_model_args(cp)
    cp.set_defaults(func=cmd_config_show)
    cp = config.add_parser("check", help="refuse settings that are unsafe outside a laptop demo (exit 1)")
    cp.add_argument("--strict", action="store_true", help="warnings fail too")
    add_model_args(cp)
    cp.set_defaults(func=cmd_config_check)
    cp = config.add_parser("reference", help="the Markdown reference of every setting (docs/configuration.md)")
    cp.set_defaults(func=cmd_config_reference)
