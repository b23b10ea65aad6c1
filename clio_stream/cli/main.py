"""The ``clio-stream`` parser and dispatch; each command group's subcommands live in their own module.

Subcommands stay thin: parse arguments, build settings, call the library.
"""

from __future__ import annotations

import argparse
import logging
import os

from clio_stream.cli import admin, config, living, run, stream
from clio_stream.cli.options import HelpFormatter, SubParser

log = logging.getLogger("clio_stream")

DESCRIPTION = """The ``clio-stream`` command line.

Subcommands stay thin: parse arguments, build settings, call the library.
"""


def setup_logging(verbose: bool) -> None:
    level = os.environ.get("CLIO_LOG_LEVEL", "DEBUG" if verbose else "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
    # vLLM and httpx are chatty at INFO; keep their warnings.
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "vllm", "urllib3", "kafka", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clio-stream")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clio-stream", description=DESCRIPTION, formatter_class=HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
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
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
