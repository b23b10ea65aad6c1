"""The ``clio-stream`` parser and dispatch; each command group's subcommands live in their own module.

Subcommands stay thin: parse arguments, build settings, call the library.
"""

from __future__ import annotations

import argparse
import logging
import os

from clio_stream.cli import admin, config, dlq, living, run, stream
from clio_stream.cli.options import HelpFormatter, SubParser, settings_from_args
from clio_stream.ops.logs import FORMAT_VAR, setup_logging

log = logging.getLogger("clio_stream")

DESCRIPTION = """The ``clio-stream`` command line.

Subcommands stay thin: parse arguments, build settings, call the library.
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clio-stream")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clio-stream", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-json", action="store_true",
                   help="one JSON object per log line (also for the processes `up` starts; env CLIO_LOG_FORMAT=json)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=SubParser)
    # In the order ``--help`` lists them: batch first, then the stack, the services, the operator's tools.
    run.add_parsers(sub)
    stream.add_up_parser(sub)
    run.add_demo_parser(sub)
    stream.add_parsers(sub)
    admin.add_api_parser(sub)
    living.add_parsers(sub)
    config.add_parsers(sub)
    admin.add_delete_user_parser(sub)
    dlq.add_parsers(sub)
    return p


def _hub_default(args: argparse.Namespace) -> None:
    """Offline unless the command names a hub model (``devstack.hub``); set before anything imports transformers."""
    from clio_stream.devstack.hub import OFFLINE_VAR, apply_hub_default

    try:
        settings = settings_from_args(args)
    except Exception:  # noqa: BLE001 - the command itself reports bad settings; stay offline meanwhile
        os.environ.setdefault(OFFLINE_VAR, "1")
        return
    apply_hub_default(settings, local_llm=settings.llm_backend != "openai" or not settings.llm_base_url)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.log_json:
        os.environ[FORMAT_VAR] = "json"  # inherited by the children of `up`
    setup_logging(verbose=args.verbose)
    _hub_default(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
