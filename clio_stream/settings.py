"""One typed settings object for the whole system.

Values come from (highest priority first): keyword arguments, environment
variables ``CLIO_*`` (nested with ``__``), a TOML file (``CLIO_CONFIG`` or
``./clio-stream.toml``), then the defaults (``clio_stream.settings_groups``: one module per group of
fields; this class composes them). Every knob of the seed's
``OpenClioConfig`` is here under a snake_case name with the seed's meaning;
the seed's camelCase names (``clio_stream.seed_names``) are accepted as keyword
arguments, attributes and TOML keys, for callers porting code.

Callables (dedup key, conversation getter, cluster-count functions, filters)
may be given as Python objects or, in env/TOML, as ``"package.module.function"``
import strings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from clio_stream.secret_settings import SECRET_SETTINGS
from clio_stream.seed_names import SEED_ALIASES, translate
from clio_stream.settings_groups import (
    ApiFields,
    BaseClusterFields,
    EmbeddingFields,
    FacetFields,
    GeneralFields,
    HierarchyFields,
    InputFields,
    LivingClusterFields,
    LLMFields,
    PrivacyFields,
    QdrantFields,
    RuntimeFields,
    SiteFields,
    StreamingFields,
    ViewFields,
)


def toml_path() -> Path | None:
    """The TOML settings file in use: ``$CLIO_CONFIG``, else ``./clio-stream.toml`` if it exists."""
    path = os.environ.get("CLIO_CONFIG")
    if path:
        return Path(path)
    local = Path("clio-stream.toml")
    return local if local.exists() else None


# pydantic lists the fields of a model's bases in reverse MRO order (the last base's first), so the groups are
# given last to first: ``model_fields`` (and so docs/configuration.md, ``config show``) keep the order of GROUPS.
class ClioSettings(
    BaseSettings,
    QdrantFields,
    StreamingFields,
    ApiFields,
    RuntimeFields,
    SiteFields,
    ViewFields,
    FacetFields,
    PrivacyFields,
    LivingClusterFields,
    EmbeddingFields,
    LLMFields,
    HierarchyFields,
    BaseClusterFields,
    InputFields,
    GeneralFields,
):
    """Every setting of clio-stream. See docs/configuration.md for a tour."""

    model_config = SettingsConfigDict(
        env_prefix="CLIO_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
        arbitrary_types_allowed=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml = toml_path()
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)

    def __init__(self, **values: Any) -> None:
        # Seed names among the keywords become settings names before the sources merge, so a keyword beats the
        # environment whichever way either is named.
        super().__init__(**translate(values, type(self).model_fields))

    @model_validator(mode="before")
    @classmethod
    def _seed_names(cls, data: Any) -> Any:
        """Seed camelCase names in the TOML file as settings names (a settings name from a higher source wins)."""
        return translate(data, cls.model_fields, settings_name_wins=True) if isinstance(data, dict) else data

    def __getattr__(self, name: str) -> Any:
        alias = SEED_ALIASES.get(name)
        if alias is not None and alias != name:
            return getattr(self, alias)
        return super().__getattr__(name)  # type: ignore[misc]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(SEED_ALIASES.get(name, name) if name not in type(self).model_fields else name, value)

    def with_overrides(self, **overrides: Any) -> "ClioSettings":
        """A validated copy with ``overrides`` applied on top (seed camelCase names accepted).

        The seed silently dropped overrides when a config object was passed too; here
        both apply, and an unknown name is an error rather than a silent no-op.
        """
        if not overrides:
            return self
        translated = translate(overrides, type(self).model_fields)
        unknown = sorted(k for k in translated if k not in type(self).model_fields)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        data = {k: getattr(self, k) for k in type(self).model_fields}
        data.update(translated)
        return type(self).model_validate(data)

    def fingerprint(self, *names: str) -> dict[str, Any]:
        """The named settings as a JSON-safe dict, for checkpoint keys."""
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            if callable(value):
                value = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', repr(value))}"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = _plain(value)
        return out

    def to_env(self, *, exclude: set[str] = frozenset({"api_keys"})) -> dict[str, str]:
        """``CLIO_*`` variables that recreate these settings in a child process.

        Plain values only (callables and unset values are left to the child's own
        defaults); dicts and lists as JSON, which pydantic-settings parses back.
        """
        import json

        out: dict[str, str] = {}
        for name in type(self).model_fields:
            if name in exclude:
                continue
            value = getattr(self, name)
            if value is None or callable(value):
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (dict, list)):
                text = json.dumps(_plain(value))
            else:
                text = str(value)
            out[f"CLIO_{name.upper()}"] = text
        return out

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to publish with results (no secrets, callables by name)."""
        return self.fingerprint(*(n for n in type(self).model_fields if n not in SECRET_SETTINGS))


def _plain(value: Any) -> Any:
    """Typed list items (custom facets, declared metadata keys, alert rules) as plain JSON-safe dicts."""
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return value


# The seed's config class name, for code that constructs it directly.
OpenClioConfig = ClioSettings
