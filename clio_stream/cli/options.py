"""The flags several subcommands share, and the settings they build from them."""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from clio_stream.domain.facets import Facet
from clio_stream.secret_settings import check_user_hash_key
from clio_stream.settings import ClioSettings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, but not the noise of ``(default: None)`` and ``(default: False)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or action.help is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


class SubParser(argparse.ArgumentParser):
    """A subcommand's parser, with the same help formatting as the top level."""

    def __init__(self, *a: object, **kw: object) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*a, **kw)  # type: ignore[arg-type]


def add_model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--llm-model", help="LLM name or folder (default: settings, SmolLM2-135M-Instruct)")
    sp.add_argument("--llm-base-url", help="use an OpenAI-compatible server instead of the in-process engine")
    sp.add_argument("--embedding-model", help="sentence-transformers model name or folder")


def add_stream_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--kafka-bootstrap", help="Kafka bootstrap servers (default: settings, 127.0.0.1:9092)")
    sp.add_argument("--topic", help="conversation topic (default: settings, clio.conversations)")
    sp.add_argument("--qdrant-url", help="Qdrant URL (default: settings, http://127.0.0.1:6333)")


def add_facets_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--facets", help="comma-separated facet names, main or custom (default: the settings' "
                                     "facets, else all main and custom facets)")


def _given(args: argparse.Namespace, flags: Sequence[tuple[str, str]]) -> dict[str, object]:
    """Settings named by the flags this subcommand has and the user set (subcommands lack some flags)."""
    present = vars(args)
    return {name: present[flag] for flag, name in flags if present.get(flag)}


def model_overrides(args: argparse.Namespace) -> dict[str, object]:
    """Settings given as command-line flags (the model flags that most subcommands share)."""
    overrides = _given(args, (("llm_model", "llm_model"), ("embedding_model", "embedding_model")))
    base_url = vars(args).get("llm_base_url")
    if base_url:
        overrides.update(llm_backend="openai", llm_base_url=base_url)
    return overrides


def settings_from_args(args: argparse.Namespace) -> ClioSettings:
    return ClioSettings(**model_overrides(args))


def streaming_settings(args: argparse.Namespace) -> ClioSettings:
    """Model settings from ``settings_from_args`` plus the streaming flags given."""
    flags = (("kafka_bootstrap", "kafka_bootstrap"), ("topic", "topic"), ("qdrant_url", "qdrant_url"))
    return settings_from_args(args).with_overrides(**_given(args, flags))


def service_settings(args: argparse.Namespace) -> ClioSettings:
    """``streaming_settings`` for a service that stores or matches user hashes: refused with a placeholder key."""
    settings = streaming_settings(args)
    check_user_hash_key(settings)
    return settings


def records_from_args(args: argparse.Namespace) -> list[Any]:
    """The records of the ``file`` argument, the first ``--limit`` of them when given."""
    from clio_stream.batch_input import load_file

    records = load_file(args.file)
    return records[: args.limit] if args.limit else records


def facets_from_names(settings: ClioSettings, names: str | None) -> list[Facet]:
    """The facets named on the command line (main or custom), else the settings' (``configured_facets``)."""
    from clio_stream.domain.facet_specs import configured_facets

    return configured_facets(settings, names or None)
